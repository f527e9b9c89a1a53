"""The peers' server code (MLServer runtime, LitServe API, BentoML service), run in their own
virtual environments by load_tests.bench_peers; each reads the model repository from the
environment (BENCH_MODEL_REPOSITORY) and imports nothing from Vigil."""
