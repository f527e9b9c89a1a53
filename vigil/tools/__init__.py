"""The top floor: the `vigil` command line and what only it runs (publishing, the model gate,
reference profiles, example models, dashboards, process lifecycle). Nothing imports it but itself,
the examples and the tests."""
