"""A real Prometheus against the session's Vigil: every recording rule, every alert expression
and every panel of the Grafana dashboard parses and returns data.

Prometheus runs on 127.0.0.1 (free port, scratch storage, SCRAPE_S scrapes, 1 s evaluation) with
configs/prometheus/prometheus.yml changed only where the session differs from `make serve`:
Ray's service-discovery file of this session, the monitor's address, a token file holding a
`monitor`-scope token made by `vigil tokens create`, and absolute rule-file paths.

What "returns data" means, per expression:
- recording rule: its expression returns series, and so does the recorded name (Prometheus
  evaluated it);
- alert: its comparisons are turned into `bool` comparisons (tests.prometheus_tools.bool_form),
  one top-level `or` operand at a time, so instead of only the breaching series (none, in a
  healthy run) it returns a 0/1 for every series the alert watches; `and on (...)` joins still
  filter, so a join whose labels never match is caught;
- panel: its query, Grafana variables substituted ($model/$version as the regex .*,
  $__rate_interval as 1m), returns series;
- and for all of them, every vector selector alone returns series.
An empty result is allowed only where every empty selector is listed, with why, in
tests.prometheus_tools.EXPECTED_ABSENT. To make the rest exist, the monitor runs with 200-row
windows (rows only) and a webhook target (delivery metrics exist per configured target); the
traffic is reference rows of breast_cancer (one closed window with drift verdicts, rules
judged), mlp, bad requests (400), an unknown model (404), a request Ray's timeout cancels
(499), no token (401) and a token without the `infer` scope (403); a model of the test's own
with a corrupt aliases.json gives the repository fault gauge a series. The session's original
config is restored, and that model's file mended, at the end.
"""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from load_tests.procs import free_port
from tests.integration.conftest import create_token, publish_copies, repository_rows, wait_for
from tests.prometheus_tools import (
    CONFIG,
    RULE_FILES,
    Expression,
    PrometheusServer,
    bool_form,
    dashboard_expressions,
    expected_absence,
    rule_expressions,
    selectors,
    split_top_level_or,
)
from vigil.core import aliases
from vigil.core.repository import read_manifest

pytestmark = pytest.mark.slow

WINDOW_ROWS = 200
# Ray's metrics page holds every route x method x status x replica seen in the session (its agent
# never drops a counter or histogram, a dead replica's included): 5.7 MB, 13,000 lines and
# 0.5-1.7 s to render by this test in full local runs. A 1 s scrape timeout lost every
# ray_vigil_* series in two CI runs ("context deadline exceeded").
SCRAPE_S = 5
FAULTY = "prom_faulty"  # breast_cancer's graph, published by this test with a corrupt aliases.json
TOKEN_NAME = "prometheus-test"
SECRET_ENV = "VIGIL_TEST_WEBHOOK_SECRET"  # in the environment of Ray's workers (tests/conftest)


def _monitor_config(config: dict, **user_config) -> dict:
    config = copy.deepcopy(config)
    app = next(a for a in config["applications"] if a["name"] == "monitor")
    deployment = app["deployments"][0]
    deployment["user_config"] = {**deployment["user_config"], **user_config}
    return config


def _window_rows(vigil) -> int | None:
    r = vigil.get("/monitor/v1/status", timeout=10)
    return r.json()["settings"]["window"]["rows"] if r.status_code == 200 else None


def _prometheus_config(vigil, tmp_path: Path, token: str) -> Path:
    """The committed config, pointed at this session."""
    import ray

    sd_file = Path(ray._private.worker._global_node.get_session_dir_path()) / \
        "prom_metrics_service_discovery.json"
    wait_for(sd_file.exists, 30, "Ray's service-discovery file")
    token_file = tmp_path / "prometheus.token"
    token_file.write_text(token + "\n")
    doc = yaml.safe_load(CONFIG.read_text())
    doc["global"] = {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                     "evaluation_interval": "1s"}
    doc["rule_files"] = [str(p) for p in RULE_FILES]
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    jobs["ray"]["file_sd_configs"] = [{"files": [str(sd_file)]}]
    monitor = jobs["vigil-monitor"]
    monitor["static_configs"] = [{"targets": [urlparse(vigil.base_url).netloc]}]
    monitor["authorization"]["credentials_file"] = str(token_file)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _traffic(vigil, monitor_token: str) -> None:
    version_dir = vigil.models_dir / "breast_cancer" / "1"
    features = read_manifest(version_dir).metadata["feature_names"]
    x = pd.read_parquet(version_dir / "reference.parquet")[features].to_numpy(np.float32)

    def body(rows: np.ndarray) -> dict:
        return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}

    mlp = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32",
                       "data": [0.1] * 256}]}
    with httpx.Client(base_url=vigil.base_url, headers=vigil.auth, timeout=30) as c:
        infer = "/v2/models/breast_cancer/infer"
        # 60 one-row requests, then 200 rows in two: the first 200-row window closes with more
        # than the 50 requests the default latency and error rules want for a verdict.
        for i in range(60):
            assert c.post(infer, json=body(x[i:i + 1])).status_code == 200
        for start in (100, 200):
            assert c.post(infer, json=body(x[start:start + 100])).status_code == 200
        for _ in range(5):
            assert c.post("/v2/models/mlp/infer", json=mlp).status_code == 200
        for _ in range(3):
            assert c.post(infer, content=b"{").status_code == 400
        assert c.post("/v2/models/nope/infer", json=body(x[:1])).status_code == 404
        # Cancelled (499 in the metrics): Ray's per-request timeout runs out (Ray answers 408)
        # while the slow test model still runs (about a second of work here).
        slow = {"inputs": [
            {"name": "x", "shape": [4, 512], "datatype": "FP32", "data": [0.1] * 2048},
            {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [30_000]},
        ]}
        assert c.post("/v2/models/slow/infer", json=slow,
                      headers={"x-request-timeout-seconds": "0.2"}).status_code == 408
    assert httpx.post(f"{vigil.base_url}{infer}", json=body(x[:1]), timeout=30).status_code == 401
    assert httpx.post(f"{vigil.base_url}{infer}", json=body(x[:1]), timeout=30,
                      headers={"Authorization": f"Bearer {monitor_token}"}).status_code == 403


def _check(server: PrometheusServer, exprs: list[Expression]) -> tuple[list[str], list[str]]:
    """(problems, excused): what is wrong with each expression, and the expected absences met."""
    problems, excused = [], []
    cache: dict[str, list | str] = {}

    def run(query: str) -> list | str:
        if query not in cache:
            try:
                cache[query] = server.query(query)
            except ValueError as exc:
                cache[query] = str(exc)
        return cache[query]

    for e in exprs:
        where = f"{e.kind} {e.name}: {' '.join(e.expr.split())}"
        full = run(e.expr)
        if isinstance(full, str):
            problems.append(f"{where}\n    does not evaluate: {full}")
            continue
        forms = [bool_form(p) for p in split_top_level_or(e.expr)] if e.kind == "alert" \
            else [e.expr]
        if e.kind == "record":
            forms.append(e.name)
        empty_forms = [f for f in forms if not run(f)]
        empty_selectors = [s for s in selectors(e.expr) if not run(str(s))]
        unexplained = [s for s in empty_selectors if expected_absence(s) is None]
        if unexplained or (empty_forms and not empty_selectors):
            problems.append(
                f"{where}\n    empty: {', '.join(' '.join(f.split()) for f in empty_forms) or '-'}"
                f"\n    selectors without series: {', '.join(map(str, empty_selectors)) or '-'}")
        elif empty_selectors:
            excused.extend(f"{e.kind} {e.name}: {s} ({expected_absence(s).name})"
                           for s in empty_selectors)
    return problems, excused


@pytest.fixture
def repository_fault(vigil):
    """FAULTY published with an unreadable aliases.json: every replica finds it at its next
    quiet re-read (serving.follower.POLL_S) and sets ray_vigil_model_repository_faults, whatever
    ran before this test. Mended afterwards (the file removed: a model without one is served
    its latest version), and the fault seen cleared."""
    publish_copies(vigil.models_dir, [FAULTY], ["1"])
    path = vigil.models_dir / FAULTY / aliases.ALIASES_FILE
    path.write_text('{"model": "' + FAULTY + '", "production": ')
    try:
        yield
    finally:
        path.unlink()
        wait_for(lambda: not any(r["faults"] for r in repository_rows(vigil, FAULTY).values()),
                 60, f"{FAULTY}'s fault cleared", 0.5)


@pytest.fixture
def observed_vigil(vigil, repository_fault):
    """The session's Vigil with 200-row windows and a webhook target nobody listens on (no
    event is sent: the traffic is reference data); the original config back afterwards."""
    target = f"http://127.0.0.1:{free_port()}/events"
    vigil.deploy(_monitor_config(
        vigil.config, window={"rows": WINDOW_ROWS, "seconds": None},
        webhooks=[{"name": "prometheus-test", "url": target, "secret_env": SECRET_ENV}],
    ))
    try:
        wait_for(lambda: _window_rows(vigil) == WINDOW_ROWS, 120, "monitor with 200-row windows",
                 0.5)
        yield vigil
    finally:
        vigil.deploy(vigil.config)
        wait_for(lambda: _window_rows(vigil) != WINDOW_ROWS, 120, "monitor config restored", 0.5)


def test_every_rule_alert_and_panel_returns_data(observed_vigil, prometheus_tools, tmp_path):
    from vigil.core.tokens import revoke_token

    vigil = observed_vigil
    token = create_token(TOKEN_NAME, "monitor", vigil.models_dir)
    exprs = rule_expressions() + dashboard_expressions()
    try:
        config = _prometheus_config(vigil, tmp_path, token)
        with PrometheusServer(prometheus_tools.prometheus, config, free_port(),
                              tmp_path / "data", tmp_path / "prometheus.log") as server:
            _traffic(vigil, token)

            state: dict = {}

            def all_present() -> bool:
                state["result"] = _check(server, exprs)
                return not state["result"][0]

            try:
                wait_for(all_present, 90, "every expression returning data", 2.0)
            except TimeoutError:
                pass
            problems, excused = state["result"]
            targets = [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"],
                        t["lastScrapeDuration"]) for t in server.targets()]
            rule_errors = [r for r in server.rule_health() if r[1] != "ok"]
    finally:
        revoke_token(vigil.tokens_file, TOKEN_NAME)

    # Every target, each with its last error and scrape time: an empty expression is then never
    # a mystery of a target that could not be read.
    assert {t[0] for t in targets} == {"ray", "vigil-monitor"}, targets
    assert all(health == "up" for _, _, health, _, _ in targets), targets
    assert not rule_errors, f"rules that fail to evaluate: {rule_errors}"
    assert not problems, (
        f"{len(problems)} of {len(exprs)} expressions see no data (or do not parse):\n"
        + "\n".join(problems) + "\n\nexpected absences met:\n" + "\n".join(excused))
    print("expected absences met:\n" + "\n".join(excused))
