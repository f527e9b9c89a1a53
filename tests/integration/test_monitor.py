"""The Monitor application on the session's real Ray: intake by handle, metrics and drift by HTTP."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray.serve.schema import ServeDeploySchema

from monitoring.settings import MonitorAppSettings, MonitorSettings
from vigil.core.messages import SampleMessage
from vigil.core.repository import read_manifest
from tests.integration.conftest import SERVE_CONFIG, wait_for

SHIFTED = ["mean radius", "mean texture", "worst area"]  # moved by 3 reference std each
ROWS = 200


def _monitor_app(config: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in config["applications"] if a["name"] == "monitor")


def _with_monitor_config(config: dict[str, Any], **user_config: Any) -> dict[str, Any]:
    config = copy.deepcopy(config)
    deployment = _monitor_app(config)["deployments"][0]
    deployment["user_config"] = {**deployment["user_config"], **user_config}
    return config


def _get(vigil, path: str, **params: Any) -> httpx.Response:
    return vigil.get(f"/monitor{path}", params=params, timeout=60)


def _metrics(vigil) -> dict[tuple[str, frozenset], float]:
    text = _get(vigil, "/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


def _named(metrics: dict, name: str, **labels: str) -> dict[str, float]:
    """feature/output label -> value for one metric of one model version."""
    out = {}
    for (n, lab), value in metrics.items():
        d = dict(lab)
        if n == name and all(d.get(k) == v for k, v in labels.items()):
            out[d.get("feature") or d.get("output")] = value
    return out


@pytest.fixture(scope="module")
def monitor(vigil):
    """The monitor with 200-row windows (rows only: nothing closes on time during the checks)."""
    from ray import serve

    version_dir = vigil.models_dir / "breast_cancer" / "1"
    features = read_manifest(version_dir).metadata["feature_names"]
    frame = pd.read_parquet(version_dir / "reference.parquet")
    session = ort.InferenceSession(str(version_dir / "model.onnx"))
    wait_for(lambda: _get(vigil, "/v1/status").status_code == 200, 180, "monitor up", 1.0)
    _wait_until_no_samples_arrive(vigil)  # earlier tests' traffic, flushed by the replicas
    vigil.deploy(_with_monitor_config(vigil.config, window={"rows": ROWS, "seconds": None}))
    wait_for(
        lambda: _get(vigil, "/v1/status").json()["settings"]["window"]["rows"] == ROWS,
        180, "monitor running with 200-row windows", 1.0,
    )
    handle = serve.get_deployment_handle("Monitor", app_name="monitor")

    def ingest(batches: list[SampleMessage]) -> None:
        handle.ingest.remote(batches).result(timeout_s=60)

    def cancer_batch(x: np.ndarray) -> SampleMessage:
        label, proba = session.run(None, {"input": x})
        return _batch("breast_cancer", {"input": x}, {"label": label, "probabilities": proba})

    try:
        yield SimpleNamespace(
            ingest=ingest, cancer_batch=cancer_batch, features=features,
            x=frame[features].to_numpy(np.float32)[:ROWS],
            std=frame[features].std().to_numpy(),
        )
    finally:
        vigil.deploy(vigil.config)


def _wait_until_no_samples_arrive(vigil, quiet_s: float = 2.5) -> None:
    """Rows that replicas flush from earlier traffic must land before the windows are reset."""
    def received() -> float:
        return sum(v for (n, _), v in _metrics(vigil).items()
                   if n == "vigil_sample_requests_received_total")

    last, since = None, time.monotonic()
    deadline = since + 60
    while time.monotonic() < deadline:
        now = received()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def _batch(model: str, inputs: dict, outputs: dict, latency=None, status=None,
           **extra) -> SampleMessage:
    n = len(next(iter(inputs.values()))) if inputs else 0
    requests = max(n // 10, 1)
    return SampleMessage(
        model=model, version="1", inputs=inputs, outputs=outputs,
        latency_s=np.full(requests, 0.01) if latency is None else np.asarray(latency, np.float64),
        status=np.full(requests, 200, np.int16) if status is None else np.asarray(status, np.int16),
        **extra,
    )


def test_serve_yaml_monitor_application_is_valid():
    doc = yaml.safe_load(SERVE_CONFIG.read_text())
    ServeDeploySchema.model_validate(doc)
    app = _monitor_app(doc)
    assert app["route_prefix"] == "/monitor"
    assert app["import_path"] == "monitoring.app:build_monitor_app"
    MonitorAppSettings(**app["args"])
    (deployment,) = app["deployments"]
    assert deployment["name"] == "Monitor" and deployment["num_replicas"] == 1
    MonitorSettings(**deployment["user_config"])


def test_example_models_have_profiles_and_the_monitor_loads_them(vigil, monitor):
    assert (vigil.models_dir / "breast_cancer" / "1" / "profile.json").exists()
    assert not (vigil.models_dir / "mlp" / "1" / "profile.json").exists()
    versions = _get(vigil, "/v1/status").json()["versions"]
    status = {(v["model"], v["version"]): v["profile"] for v in versions}
    assert (status[("breast_cancer", "1")], status[("mlp", "1")]) == ("loaded", "no profile")
    # Other tests publish versions of their own (some with profiles): whatever the order,
    # each version's state follows whether its files carry a profile.
    for (model, version), state in status.items():
        on_disk = (vigil.models_dir / model / str(version) / "profile.json").exists()
        assert (state != "no profile") == on_disk, (model, version, state)
    metrics = _metrics(vigil)
    assert _value(metrics, "vigil_profile_loaded", model="breast_cancer", version="1") == 1
    assert _value(metrics, "vigil_profile_loaded", model="mlp", version="1") == 0


def test_drift_moves_from_none_to_exactly_the_shifted_features(vigil, monitor):
    before = _get(vigil, "/v1/models/breast_cancer/drift").json()["windows_evaluated"]
    monitor.ingest([monitor.cancer_batch(monitor.x)])
    doc = _get(vigil, "/v1/models/breast_cancer/drift", windows=5).json()
    assert doc["windows_evaluated"] == before + 1
    latest = doc["latest"]
    assert (latest["rows"], latest["reason"]) == (ROWS, "rows")
    assert latest["drift"]["drifted_features"] == [] and latest["drift"]["share_drifted"] == 0.0
    assert latest["drift"]["prediction_drift"] is False
    metrics = _metrics(vigil)
    assert _value(metrics, "vigil_drift_share_ratio", model="breast_cancer", version="1") == 0.0
    drifted = _named(metrics, "vigil_feature_drifted", model="breast_cancer")
    assert len(drifted) == 30 and set(drifted.values()) == {0.0}

    shifted = monitor.x.copy()
    for name in SHIFTED:
        i = monitor.features.index(name)
        shifted[:, i] += 3 * monitor.std[i]
    monitor.ingest([monitor.cancer_batch(shifted)])
    doc = _get(vigil, "/v1/models/breast_cancer/drift").json()
    latest = doc["latest"]
    assert latest["index"] == doc["windows"][-1]["index"] == before + 2
    assert latest["drift"]["drifted_features"] == SHIFTED
    assert latest["drift"]["share_drifted"] == pytest.approx(3 / 30)
    assert latest["drift"]["dataset_drift"] is False
    by_name = {c["name"]: c for c in latest["drift"]["features"]}
    assert all(by_name[n]["method"] == "ks" and by_name[n]["score"] < 1e-6 for n in SHIFTED)
    metrics = _metrics(vigil)
    drifted = _named(metrics, "vigil_feature_drifted", model="breast_cancer")
    assert sorted(k for k, v in drifted.items() if v == 1.0) == sorted(SHIFTED)
    assert _value(metrics, "vigil_drift_share_ratio", model="breast_cancer", version="1") == (
        pytest.approx(0.1)
    )
    assert set(_named(metrics, "vigil_prediction_drift_score", model="breast_cancer")) == {
        "label", "probabilities_0", "probabilities_1"
    }
    assert _value(metrics, "vigil_window_rows", model="breast_cancer", version="1") == ROWS


def test_batches_that_do_not_fit_are_dropped_and_counted(vigil, monitor):
    def drops(model: str, version: str, kind: str = "schema") -> tuple[float, float]:
        m = _metrics(vigil)
        labels = {"model": model, "version": version, "kind": kind}
        return (_value(m, "vigil_sample_rows_dropped_total", **labels) or 0.0,
                _value(m, "vigil_sample_requests_dropped_total", **labels) or 0.0)

    unknown, cancer = drops("_unknown", "", "unknown_version"), drops("breast_cancer", "1")
    malformed = drops("_unknown", "", "malformed")
    monitor.ingest([
        _batch("nope", {"input": monitor.x[:5]}, {}, latency=[0.1, 0.2], status=[200, 200]),
        _batch("breast_cancer", {"input": monitor.x[:7, :29]}, {}, dropped_rows=3),
        _batch("breast_cancer", {"input": monitor.x[:4]}, {}, latency=[0.1], status=[200, 200]),
    ])
    assert drops("_unknown", "", "unknown_version") == (unknown[0] + 5, unknown[1] + 2)
    assert drops("_unknown", "", "malformed") == (malformed[0] + 4, malformed[1] + 1)
    messages = _value(_metrics(vigil), "vigil_sample_messages_dropped_total", model="_unknown",
                      version="", kind="malformed")
    assert messages is not None and messages >= 1
    # rows of the wrong width are dropped; the requests' latency still counts
    assert drops("breast_cancer", "1") == (cancer[0] + 7, cancer[1])
    m = _metrics(vigil)
    labels = {"model": "breast_cancer", "version": "1", "kind": "replica"}
    assert _value(m, "vigil_sample_rows_dropped_total", **labels) >= 3


def test_a_model_without_profile_still_gets_latency_and_errors(vigil, monitor):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(ROWS, 256)).astype(np.float32)
    latency = np.linspace(0.001, 0.100, 20)
    status = [200] * 18 + [500, 404]
    outputs = {"logits": x[:, :10], "probabilities": x[:, :10]}
    monitor.ingest([_batch("mlp", {"input": x}, outputs, latency=latency, status=status)])
    m = _metrics(vigil)
    mv = {"model": "mlp", "version": "1"}
    for q in ("0.5", "0.95", "0.99"):
        want = float(np.quantile(latency, float(q)))
        assert _value(m, "vigil_window_latency_seconds", quantile=q, **mv) == pytest.approx(want)
    assert _value(m, "vigil_window_error_ratio", kind="server", **mv) == pytest.approx(0.05)
    assert _value(m, "vigil_window_error_ratio", kind="client", **mv) == pytest.approx(0.05)
    assert _value(m, "vigil_window_rows", **mv) == ROWS
    assert _named(m, "vigil_feature_drift_score", model="mlp") == {}
    doc = _get(vigil, "/v1/models/mlp/drift").json()
    assert doc["profile"] == "no profile" and doc["latest"]["drift"] is None
    assert _get(vigil, "/v1/models/mlp/report").status_code == 409


def test_http_errors_are_json(vigil, monitor):
    for path, status in (
        ("/v1/models/nope/drift", 404),
        ("/v1/models/breast_cancer/drift?version=9", 404),
        ("/v1/models/breast_cancer/drift?windows=x", 400),
        ("/v1/models/breast_cancer/drift?windows=%C2%B2", 400),  # "²".isdigit() is True
        ("/v1/models/breast_cancer/drift?windows=0", 400),
        ("/v1/models/breast_cancer/drift?windows=1&windows=2", 400),
        ("/v1/models/breast_cancer/drift?version=..%2F1", 400),
        ("/v1/models/breast_cancer/report?version=1%0A", 400),
        ("/v1/nothing", 404),
    ):
        response = vigil.get(f"/monitor{path}", timeout=30)
        assert response.status_code == status, path
        assert "error" in response.json()
    for path, takes in (("drift", "version, windows"), ("report", "version")):
        response = _get(vigil, f"/v1/models/breast_cancer/{path}", colour="red")
        assert (response.status_code, response.json()) == (400, {
            "error": f"unknown query parameter(s) 'colour': this route takes {takes}"
        })
    response = vigil.get("/monitor/v1/models/breast_cancer/drift?windows=%C2%B2", timeout=30)
    assert response.json()["error"] == (
        "windows must be a whole number from 1 to 100000 (ASCII digits), got '²'"
    )


@pytest.mark.slow
def test_report_describes_the_last_closed_window_and_is_built_once(vigil, monitor):
    windows = _get(vigil, "/v1/models/breast_cancer/drift").json()["windows"]
    index = [w for w in windows if w["rows"]][-1]["index"]
    monitor.ingest([monitor.cancer_batch(monitor.x[:10])])  # rows of the open window: not used
    path = "/monitor/v1/models/breast_cancer/report"
    first = vigil.get(path, timeout=180)  # httpx asks for gzip and decodes it
    assert first.status_code == 200, first.text[:500]
    assert first.headers["x-vigil-window"] == str(index)
    assert first.headers["content-encoding"] == "gzip"
    assert int(first.headers["content-length"]) < len(first.content) / 2
    assert "mean radius" in first.text
    plain = vigil.get(path, headers={"Accept-Encoding": "identity"}, timeout=180)
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.headers["x-vigil-window"] == str(index)
    # Evidently's page differs on every run (random widget ids): equal bytes, one build.
    assert plain.content == first.content


@pytest.mark.slow
def test_report_cli_writes_evidently_html(vigil, monitor, tmp_path: Path, monkeypatch):
    from vigil.tools.cli import main

    monkeypatch.setenv("VIGIL_TOKEN", vigil.token)  # what the CLI sends as its bearer token
    out = tmp_path / "report.html"
    args = ["report", "--model", "breast_cancer", "--out", str(out), "--monitor-url", vigil.base_url]
    assert main(args) == 0
    html = out.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html[:500].lower()
    assert "mean radius" in html


def test_serve_deploy_changes_the_window_live(vigil, monitor):
    replica = _get(vigil, "/v1/status").json()["replica"]
    vigil.deploy(_with_monitor_config(vigil.config, window={"rows": 50, "seconds": 1.0}))
    status = wait_for(
        lambda: (s := _get(vigil, "/v1/status").json())["settings"]["window"]["rows"] == 50 and s,
        60, "new window settings on the monitor",
    )
    assert status["replica"] == replica, "reconfigure replaced the monitor replica"
    before = _get(vigil, "/v1/models/breast_cancer/drift").json()["windows_evaluated"]
    monitor.ingest([monitor.cancer_batch(monitor.x[:50])])
    doc = _get(vigil, "/v1/models/breast_cancer/drift").json()
    assert doc["settings"]["window"] == {"rows": 50, "seconds": 1.0}
    rows_window = next(w for w in doc["windows"] if w["index"] == before + 1)
    assert (rows_window["rows"], rows_window["reason"]) == (50, "rows")
    # No traffic now: the time bound still closes (empty) windows.
    later = wait_for(
        lambda: (d := _get(vigil, "/v1/models/breast_cancer/drift").json())["windows_evaluated"]
        >= before + 3 and d,
        30, "time windows closing without traffic",
    )
    empty = later["latest"]
    assert (empty["reason"], empty["rows"], empty["requests"]) == ("time", 0, 0)
    assert empty["drift"]["tested"] == 0 and empty["drift"]["dataset_drift"] is False
