# Vigil: the commands a newcomer needs. `make serve` and `make test` work from a clean clone
# with only Python 3.11, pip and apt.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

# Ray keeps a single node on 127.0.0.1 only with this set; HAProxy with direct ingress to the
# replicas is Ray Serve's fastest HTTP path (see docs/deploying.md, "Ingress").
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_SERVE_ENABLE_HA_PROXY ?= 1
# Ray's per-request HTTP metrics from HAProxy are a log line per request that HAProxy's Python
# manager parses (14% of a core at 1,100 req/s here); Vigil's replicas count every request
# themselves (vigil_request_duration_seconds) and HAProxy's own exporter (:9101) stays on.
export RAY_SERVE_HAPROXY_METRICS_ENABLED ?= 0
# HAProxy's connection limits (docs/security.md, "Connection and body limits"); Ray 2.60 reads them
# from the environment. A client connection that sends nothing for 10 s is closed (Ray's default
# is an hour: idle connections held every slot). maxconn is sized to this shell's file limit, not
# Ray's 4096: HAProxy wants 2.5 descriptors per connection (client, server, and a splice pipe per
# four) and refuses to start, taking Serve with it, when the limit is short of that.
export RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S ?= 10
export RAY_SERVE_HAPROXY_MAXCONN ?= $(shell n=$$(ulimit -n); [ "$$n" = unlimited ] && n=1048576; echo $$(( (n - 512) * 2 / 5 )))
# HAProxy's buffers, and the largest HTTP/2 frame it takes: 64 KiB (Ray's are 16 KiB). A 1024-row
# gRPC tensor then crosses HAProxy in two HTTP/2 frames instead of eight, level with HTTP's binary
# tensors (docs/performance.md#grpc), at four times the buffer memory of a busy connection.
export RAY_SERVE_HAPROXY_TUNE_BUFSIZE ?= 65536
export RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE ?= $(RAY_SERVE_HAPROXY_TUNE_BUFSIZE)
# A client gets 10 s to send its request's headers (slowloris: a header line every few seconds
# never lets `timeout client` fire). Ray 2.60 reads no setting for HAProxy's `timeout
# http-request`, but runs the executable we name as HAProxy: vigil-haproxy adds the line to the
# config Ray writes, then execs Ray's bundled HAProxy (vigil/tools/haproxy_header_timeout.py).
export RAY_SERVE_HAPROXY_BINARY_PATH ?= $(CURDIR)/$(BIN)/vigil-haproxy
export VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S ?= 10
export RAY_USAGE_STATS_ENABLED := 0
# One auth mode for `ray start`, `serve run` and `serve deploy`: a cluster that `serve run` started
# with token auth otherwise refuses a later `serve deploy`.
export RAY_AUTH_MODE ?= token
# Replicas behind HAProxy drain 30 s before stopping (for remote load balancers); on one local
# node HAProxy learns of it at once, so Ctrl-C on `make serve` need not wait that long.
export RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S ?= 2
# A node's proxy (HAProxy's manager) gets 60 s to start, not Ray's 5 s. Ray runs it at nice 15:
# on busy machines its start took over 15 s (CI) and over a minute (two cores, two busy loops),
# and Serve killed it mid-start, failing `serve run`/`serve deploy` with "killed by `ray.kill`"
# (docs/deploying.md, "A Ray cluster").
export RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S ?= 60
export PYTHONUNBUFFERED := 1
# The Serve config `make serve` and `make deploy` run: `make serve CONFIG=my-serve.yaml`.
CONFIG ?= configs/serve.yaml

.PHONY: demo soak autoscale ingress-env abuse faults fuzz cluster serve test bench bench-stall bench-versions bench-peers deploy stop models lint clean observe dashboards lock-gpu lock sbom install-locked docs docs-serve

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# One stamp per extra set: the cpu flavour of onnxruntime (never together with onnxruntime-gpu).
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,examples]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	touch $@ $(VENV)/.serve-installed

models/breast_cancer/1/model.yaml models/mlp/1/model.yaml: | $(VENV)/.serve-installed
	$(BIN)/vigil examples build

models: models/breast_cancer/1/model.yaml models/mlp/1/model.yaml

## serve: set up and run the service on http://127.0.0.1:8000 (Ctrl-C stops it); CONFIG=... for another config
# vigil.tools.lifecycle runs `serve run` in a session of its own: SIGINT or SIGTERM, to make alone or to
# its process group (Ctrl-C, CI runners), stops it and every process it started (Ray's daemons and
# workers, HAProxy) within 11 s, usually 6 (docs/operations.md, "Stopping").
serve: $(VENV)/.serve-installed models
	exec $(BIN)/python -m vigil.tools.lifecycle -- $(BIN)/serve run $(CONFIG)

## ingress-env: the environment `make serve` gives Ray's HAProxy ingress (its limits among it)
ingress-env:
	@env | grep -E '^(RAY_(SERVE|AUTH_MODE|ENABLE)|VIGIL_HAPROXY_)' | sort

## observe: Prometheus on http://127.0.0.1:9090 scraping `make serve` with configs/prometheus
## (installs the Debian package prometheus if missing; data in .observe/; Ctrl-C stops it)
observe: $(VENV)/.serve-installed
	bash configs/prometheus/observe.sh

## dashboards: regenerate configs/grafana/vigil.json from vigil/tools/dashboards.py (then
## `.venv/bin/python -m tests.helm_chart` copies it and the rules into the chart)
dashboards: $(VENV)/.dev-installed
	$(BIN)/vigil dashboards build

# NO_MKDOCS_2_WARNING: Material prints a banner about its end of life on every build otherwise.
## docs: write docs/reference from the code (python -m vigil.tools.reference_docs), then build the
## documentation site into site/ with `mkdocs build --strict` (a broken link, anchor or snippet fails)
docs: $(VENV)/.dev-installed
	$(BIN)/python -m vigil.tools.reference_docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

## docs-serve: the same site on http://127.0.0.1:8002 (not 8000 or 8001: `make serve`'s HTTP and gRPC), rebuilt as pages change
docs-serve: $(VENV)/.dev-installed
	$(BIN)/python -m vigil.tools.reference_docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8002

## install-locked: .venv with exactly requirements/dev.lock (hash-checked, no resolver), then Vigil
## itself without deps; marks .venv set up, so `make lint` and `make sbom` use it as it is (CI)
install-locked: | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(VENV)/.dev-installed $(VENV)/.serve-installed

## lock: regenerate every lock: requirements/cpu.lock (runtime, cpu extra), requirements/dev.lock
## (cpu, dev, examples, observe, docs: what CI installs) and requirements/gpu.lock (as lock-gpu)
LOCK_FLAGS := --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
lock: lock-gpu
	/tmp/vigil-piptools/bin/pip-compile $(LOCK_FLAGS) --extra cpu -o requirements/cpu.lock pyproject.toml
	/tmp/vigil-piptools/bin/pip-compile $(LOCK_FLAGS) --extra cpu --extra dev --extra examples --extra observe --extra docs -o requirements/dev.lock pyproject.toml
	@# The dev extra names vigil[examples,observe]: pip-compile then pins vigil itself as an
	@# unhashed `vigil @ file:///<this checkout>`, which --require-hashes refuses; Vigil is installed
	@# from the checkout after the lock (make install-locked), so the entry goes.
	$(PYTHON) -c 'import pathlib, re; p = pathlib.Path("requirements/dev.lock"); p.write_text(re.sub(r"(?m)^# WARNING: pip install will require.*\n(?:#.*\n)*vigil @ \S+\n(?:    #.*\n)*", "", p.read_text()))'

## lock-gpu: regenerate requirements/gpu.lock (the Dockerfile.gpu image's pins, with hashes)
lock-gpu: | $(BIN)/python
	$(PYTHON) -m venv /tmp/vigil-piptools && /tmp/vigil-piptools/bin/pip install -q pip-tools
	/tmp/vigil-piptools/bin/pip-compile --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links --extra gpu -o requirements/gpu.lock pyproject.toml requirements/gpu.in

## demo: the loop end to end on a private cluster: drift -> retrain -> rollout -> promote, with a
## timeline, demo/timeline.json and demo/timeline.png; DEMO_BAD=1: a worse candidate, rolled back;
## DEMO_SHORT=1: CI's variant (10-s windows, one rollout step)
demo: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.demo $(if $(filter 1,$(DEMO_BAD)),--bad) $(if $(filter 1,$(DEMO_SHORT)),--short)

## test: set up and run the whole test suite (unit, integration on a real Ray, scenarios)
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest

## bench: the load benchmark (reference, plain Ray Serve, Vigil) on 127.0.0.1, the drift
## evaluation benchmark (Vigil's window evaluation against Evidently's Report), the stall
## benchmark (one-row latency while 16 MiB invalid bodies arrive), the alerting benchmark and
## the model-version benchmarks (bench-versions), and gRPC against HTTP (bench_grpc; its MLServer
## rows run under bench-peers)
bench: $(VENV)/.dev-installed models
	$(BIN)/python -m load_tests.bench
	$(BIN)/python -m load_tests.bench_grpc --no-mlserver
	$(BIN)/python -m load_tests.bench_drift
	$(BIN)/python -m load_tests.bench_stall
	$(BIN)/python -m load_tests.bench_alerts
	$(BIN)/python -m load_tests.bench_rollback
	$(BIN)/python -m load_tests.bench_model_memory
	$(BIN)/python -m load_tests.bench_bounded
	$(BIN)/python -m load_tests.bench_idle

## bench-versions: only the model-version benchmarks (build their own models): promote/rollback
## under load (load_tests/results/rollback.json), replica memory across publish/promote/
## rollback/retire cycles (load_tests/results/model_memory.json), and bounded state over 200
## publish/canary/promote/retire cycles with alerts and webhooks (load_tests/results/bounded.json)
bench-versions: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.bench_rollback
	$(BIN)/python -m load_tests.bench_model_memory
	$(BIN)/python -m load_tests.bench_bounded

## abuse: availability under abuse at the front door (issue 22): probe latency and failures while
## 5,000 idle connections, 5,000 slowloris connections and 1,000 stalled bodies are held, each alone
## for 30 s, on a private server it starts and ends (load_tests/results/abuse.json); ABUSE_ARGS=--before
## runs the same with the limits off
abuse: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.abuse $(ABUSE_ARGS)

## faults: Vigil under steady load (c=16, breast_cancer and mlp, JSON and binary) while one thing
## fails at a time (monitor, webhook receiver, a replica, the alias board, HAProxy), on a private
## cluster it starts and ends: a row and PASS/FAIL per scenario (load_tests/results/faults.json);
## FAULTS_ARGS="--only replica_killed" for one (docs/operations.md, "Fault drills")
faults: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.faults $(FAULTS_ARGS)

## soak: mixed load at 70% of the measured throughput for SOAK_S seconds (default 600; 21600 for
## six hours), every Vigil process's RSS, CPU and fds, the outbox and the window lag recorded every
## SOAK_INTERVAL_S (60); pass/fail, load_tests/results/soak.{csv,png,json} (docs/performance.md, "Soak")
SOAK_S ?= 600
SOAK_INTERVAL_S ?= 60
soak: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.soak --seconds $(SOAK_S) --interval $(SOAK_INTERVAL_S)

## autoscale: configs/serve-autoscaling.yaml under 1 -> 64 -> 1 clients: replicas against time, time to
## scale up and down, failed requests, alias changes and samples on every replica; pass/fail,
## load_tests/results/autoscale.json (docs/performance.md, "Autoscaling")
autoscale: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.autoscale

## fuzz: bad input at scale (issue 25): schemathesis over every route of /v2/openapi.json with a
## valid token, 30 examples per operation and mode (over 1,000 requests), against a real Ray with
## configs/serve.yaml behind HAProxy; passes with no 5xx, every answer as the document declares it
## and no replica restarted. `make fuzz URL=http://127.0.0.1:8000 TOKEN=...` runs it against a
## running server instead; `python -m load_tests.fuzz_api` against the apps in process (no Ray)
FUZZ_EXAMPLES ?= 30
fuzz: $(VENV)/.dev-installed
ifdef URL
	$(BIN)/python -m load_tests.fuzz_api --url $(URL) --token $(TOKEN) --max-examples $(FUZZ_EXAMPLES)
else
	VIGIL_FUZZ_MAX_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -s -p no:cacheprovider tests/integration/test_fuzz_api.py
endif

## cluster: a two-node Ray cluster on this machine (network namespaces, root): replicas on both
## nodes, a proxy per node, drift, promote/rollback and token revocation across nodes, then the
## worker's raylet killed under load (load_tests/results/cluster.json); CLUSTER_ARGS=--basic for
## the round trip only
cluster: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.cluster $(CLUSTER_ARGS)

## bench-stall: only the stall benchmark (builds its own models)
bench-stall: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.bench_stall

## bench-peers: Vigil side by side with MLServer, LitServe and BentoML (with and without batching,
## each in its own venv under ~/.cache/vigil-bench-peers, installed from PyPI on first use), plain
## Ray Serve and the bare reference: one table with ratios to the reference and to the best peer,
## and load_tests/results/peers.json; BENCH_PEERS_ARGS="--quick" or "--only mlserver,vigil";
## then gRPC: Vigil's against its HTTP and MLServer's (load_tests/results/bench_grpc.json)
bench-peers: $(VENV)/.dev-installed
	$(BIN)/python -m load_tests.bench_peers $(BENCH_PEERS_ARGS)
	$(BIN)/python -m load_tests.bench_grpc

## deploy: start a local Ray cluster and `serve deploy` the config onto it
deploy: $(VENV)/.serve-installed models
	$(BIN)/ray get-auth-token --generate >/dev/null
	$(BIN)/ray status >/dev/null 2>&1 || $(BIN)/ray start --head --disable-usage-stats
	$(BIN)/serve deploy $(CONFIG)
	$(BIN)/serve status

## stop: shut down what `make deploy` started
stop:
	-$(BIN)/serve shutdown -y
	-$(BIN)/ray stop

## lint: ruff, mypy (serving/, monitoring/; [tool.mypy]), import-linter's contracts, and bandit
## ([tool.bandit]: the rules skipped and why)
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check serving monitoring vigil tests load_tests examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/bandit -q -c pyproject.toml -r serving monitoring vigil

## sbom: a CycloneDX JSON SBOM of the .venv environment in sbom/vigil.cdx.json
sbom: $(VENV)/.dev-installed
	mkdir -p sbom
	$(BIN)/cyclonedx-py environment --output-reproducible --of JSON -o sbom/vigil.cdx.json $(BIN)/python

clean:
	rm -rf $(VENV) .pytest_cache
