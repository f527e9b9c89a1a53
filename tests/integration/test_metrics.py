"""Replica metrics reach Ray's metrics endpoint after real traffic."""

from __future__ import annotations

import re

import httpx
import numpy as np
import orjson

from tests.integration.conftest import wait_for

ROW = [0.25] * 30


def _scrape(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_request_and_batch_metrics_after_traffic(vigil, client):
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    for _ in range(20):
        assert client.post("/v2/models/breast_cancer/infer", json=body).status_code == 200
    for _ in range(3):
        assert client.post("/v2/models/breast_cancer/infer", content=b"{").status_code == 400
    assert client.post("/v2/models/nope/infer", json=body).status_code == 404

    def ready() -> str | None:
        text = _scrape(vigil.metrics_port)
        # Each replica reports on its own schedule: wait until every count has caught up.
        caught_up = (
            _value(text, "ray_vigil_requests_total", model="breast_cancer", code="200") >= 20
            and _value(text, "ray_vigil_requests_total", model="breast_cancer", code="400") >= 3
            # 20 sequential 1-row requests: 20 batches. (Ray derives a histogram's _sum from
            # bucket midpoints, so _count is the exact figure to pin.)
            and _value(text, "ray_vigil_batch_rows_count", model="breast_cancer") >= 20
            and _value(text, "ray_vigil_queue_wait_seconds_count", model="breast_cancer") >= 20
            and _value(text, "ray_vigil_requests_total", model="_unknown", code="404") >= 1
        )
        return text if caught_up else None

    text = wait_for(ready, 60, "vigil metrics exported", interval=1.0)
    assert _value(
        text, "ray_vigil_request_duration_seconds_count", model="breast_cancer", version="1",
        protocol="json", code="200",
    ) >= 20
    # Unknown model names share one label value, so clients cannot blow up the cardinality.
    assert _value(text, "ray_vigil_requests_total", model="_unknown", code="404") >= 1
    assert _value(text, "ray_vigil_inference_duration_seconds_count", model="breast_cancer") >= 1
    assert _value(text, "ray_vigil_queue_wait_seconds_count", model="breast_cancer") >= 20
    # Latency is a histogram with buckets, not only a counter.
    assert re.search(r'ray_vigil_request_duration_seconds_bucket\{.*le="0\.1"', text)
    # Each request's reason: the caller's (client) apart from the model's and the server's.
    assert _value(text, "ray_vigil_requests_total", model="breast_cancer", code="200",
                  reason="ok") >= 20
    assert _value(text, "ray_vigil_requests_total", model="breast_cancer", code="400",
                  reason="client") >= 3
    # Every replica says how many versions of each model it holds loaded.
    assert _value(text, "ray_vigil_loaded_versions", model="breast_cancer") >= 1


def test_rows_are_sampled_only_for_versions_with_a_profile(vigil, client):
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    mlp = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": [0.1] * 256}]}
    for _ in range(10):
        assert client.post("/v2/models/breast_cancer/infer", json=body).status_code == 200
        assert client.post("/v2/models/mlp/infer", json=mlp).status_code == 200

    def sent() -> str | None:
        text = _scrape(vigil.metrics_port)
        ok = _value(text, "ray_vigil_samples_sent_rows_total", model="breast_cancer") >= 10
        return text if ok else None

    text = wait_for(sent, 60, "sampled rows sent to the monitor", interval=1.0)
    # mlp has no profile: its latency and status go to the monitor, its rows do not.
    assert _value(text, "ray_vigil_samples_sent_rows_total", model="mlp") == 0


def test_a_models_fault_is_a_server_error_with_its_own_reason(vigil, client):
    """mlp answers NaN for a NaN input it allows; as JSON that is the model's fault on an
    accepted request: 502 with reason model_output, which error ratios (code 5xx) count."""
    x = np.zeros((1, 256), "<f4")
    x[0, 0] = np.nan
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]})
    headers = {"Inference-Header-Content-Length": str(len(head))}
    before = _value(_scrape(vigil.metrics_port), "ray_vigil_requests_total", model="mlp",
                    code="502", reason="model_output")
    for _ in range(3):
        answer = client.post("/v2/models/mlp/infer", content=head + x.tobytes(), headers=headers)
        assert answer.status_code == 502 and "holds NaN or Inf" in answer.json()["error"]
    wait_for(lambda: _value(_scrape(vigil.metrics_port), "ray_vigil_requests_total", model="mlp",
                            code="502", reason="model_output") >= before + 3,
             60, "502s counted with reason model_output", interval=1.0)
