"""Hardening on the real server (real Ray, HAProxy, HTTP): batching only where a version declares
it, no request that stalls a replica or grows it without bound, values that do not fit their
datatype, and every request accounted for, cancelled ones included."""

from __future__ import annotations

import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import orjson
import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_metrics import _scrape, _value
from tests.integration.test_monitor import _monitor_app, _with_monitor_config

MiB = 1024 * 1024
ROW = [0.5] * 30


def _binary(header: dict, tail: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


def _fp32_body(name: str, x: np.ndarray) -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}


# ---------------------------------------------------------------- batching only where declared


@pytest.mark.parametrize("name", ["reduce_sum", "cumsum", "fixed_pair"])
def test_a_model_that_is_not_row_independent_answers_each_client_alone(vigil, name):
    session = ort.InferenceSession(str(vigil.models_dir / name / "1" / "model.onnx"))
    rng = np.random.default_rng(11)
    rows = [1] * 48 if name == "fixed_pair" else [int(rng.integers(1, 5)) for _ in range(48)]
    requests = [rng.integers(-50, 50, size=(n, 2)).astype(np.float32) for n in rows]

    def call(x: np.ndarray) -> np.ndarray:
        with httpx.Client(base_url=vigil.base_url, timeout=30, headers=vigil.auth) as c:
            response = c.post(f"/v2/models/{name}/infer", json=_fp32_body("x", x))
        assert response.status_code == 200, response.text
        out = response.json()["outputs"][0]
        return np.asarray(out["data"], np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(max_workers=16) as pool:  # concurrent: batching would stack them
        results = list(pool.map(call, requests))
    for x, got in zip(requests, results):
        (want,) = session.run(None, {"x": x})
        np.testing.assert_array_equal(got, want)  # exactly its solo answer, no other client's rows


def test_the_batching_state_shows_each_versions_declaration(vigil):
    models = vigil.get("/v2/vigil/batching").json()["models"]
    caps = {k: (v["declared_max_batch_rows"], v["max_batch_rows"]) for k, v in models.items()}
    for name in ("reduce_sum", "cumsum", "fixed_pair", "slow"):
        assert caps[f"{name}/1"] == (0, 0)
    assert caps["breast_cancer/1"] == (1024, 256) and caps["mlp/1"] == (256, 256)
    assert all(v["queued_rows"] >= 0 for v in models.values())


# ---------------------------------------------------------------- no request stalls a replica


def test_a_large_body_is_refused_by_its_declaration_while_others_are_served(vigil, client):
    # 16 MiB of BYTES elements for breast_cancer, whose input is FP32: refused from the header,
    # before any of the 4M elements is decoded. One-row requests keep being answered meanwhile.
    tail = struct.pack("<I", 0) * (4 * MiB)
    body, headers = _binary(
        {"inputs": [{"name": "input", "shape": [4 * MiB], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(tail)}}]},
        tail,
    )
    stop, answered = threading.Event(), []

    def small_requests() -> None:
        with httpx.Client(base_url=vigil.base_url, timeout=30, headers=vigil.auth) as c:
            while not stop.is_set():
                one = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                   "data": ROW}]}
                answered.append(c.post("/v2/models/breast_cancer/infer", json=one).status_code)

    worker = threading.Thread(target=small_requests)
    worker.start()
    try:
        for _ in range(3):
            response = client.post("/v2/models/breast_cancer/infer", content=body, headers=headers)
            assert response.status_code == 400
            assert response.json() == {
                "error": "input 'input' is BYTES; model 'breast_cancer' takes FP32"
            }
    finally:
        stop.set()
        worker.join()
    assert answered and set(answered) == {200}


def test_json_bodies_have_their_own_limit_and_large_tensors_go_binary(vigil, client):
    limit = 4 * MiB  # max_json_body_bytes, default
    x = np.random.default_rng(2).normal(size=(5000, 256)).astype(np.float32)  # 5 MB as binary
    as_json = orjson.dumps(_fp32_body("input", x))
    assert len(as_json) > limit
    refused = client.post("/v2/models/mlp/infer", content=as_json,
                          headers={"content-type": "application/json"})
    assert refused.status_code == 413
    assert refused.json()["error"] == (
        f"JSON body of {len(as_json)} bytes exceeds the limit of {limit}; send large tensors as "
        "binary data"
    )
    body, headers = _binary(
        {"inputs": [{"name": "input", "shape": [5000, 256], "datatype": "FP32",
                     "parameters": {"binary_data_size": x.nbytes}}],
         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]},
        x.tobytes(),
    )
    answered = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert answered.status_code == 200
    length = int(answered.headers["inference-header-content-length"])
    assert orjson.loads(answered.content[:length])["outputs"][0]["shape"] == [5000, 10]
    # The JSON header of a binary request has the same limit, checked before the body is read.
    too_long = client.post("/v2/models/mlp/infer", content=b"{}",
                           headers={"Inference-Header-Content-Length": str(limit + 1)})
    assert too_long.status_code == 413
    assert "max_json_body_bytes" in too_long.json()["error"]


# ---------------------------------------------------------------- values and protocol


@pytest.mark.parametrize(
    ("what", "body", "headers", "message"),
    [
        ("FP32 JSON value past FP32", orjson.dumps({"inputs": [{
            "name": "input", "shape": [1, 30], "datatype": "FP32", "data": [1e39] + ROW[1:]}]}),
         {}, "input 'input': value 1e+39 overflows FP32"),
        ("FP64 binary value past FP32", *_binary(
            {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64",
                         "parameters": {"binary_data_size": 240}}]},
            np.array([0.5] * 29 + [-1e300], "<f8").tobytes()),
         "input 'input': value -1e+300 overflows FP32"),
        ("parameters null", orjson.dumps({"parameters": None, "inputs": [{
            "name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}),
         {}, "'parameters' must be an object"),
        ("empty outputs", orjson.dumps({"outputs": [], "inputs": [{
            "name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}),
         {}, "'outputs' must not be empty"),
        ("duplicate outputs", orjson.dumps({"outputs": [{"name": "label"}, {"name": "label"}],
                                            "inputs": [{"name": "input", "shape": [1, 30],
                                                        "datatype": "FP32", "data": ROW}]}),
         {}, "output 'label' is requested more than once"),
        ("signed header length", *_binary(
            {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]},
            b""), "not a decimal integer"),
    ],
)
def test_values_and_fields_the_protocol_rules_out_get_400(client, what, body, headers, message):
    if what == "signed header length":
        headers = {"Inference-Header-Content-Length": "+" + headers["Inference-Header-Content-Length"]}
    response = client.post("/v2/models/breast_cancer/infer", content=body, headers=headers)
    assert response.status_code == 400, (what, response.text)
    assert message in response.json()["error"], what


# ---------------------------------------------------------------- every request is accounted for


def _slow_body(iterations: int) -> dict:
    x = np.full((16, 512), 0.1, np.float32)
    return {"inputs": [
        {"name": "x", "shape": [16, 512], "datatype": "FP32", "data": x.ravel().tolist()},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]},
    ], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}


@pytest.mark.slow
def test_cancelled_requests_are_counted_with_499_and_their_latency(vigil, client):
    monitor_config = _with_monitor_config(vigil.config, window={"rows": 1000, "seconds": 2.0})
    vigil.deploy(monitor_config)
    wait_for(lambda: vigil.get("/monitor/v1/status").json()["settings"]["window"]["seconds"] == 2.0,
             120, "monitor with 2 s windows", 1.0)
    try:
        text = _scrape(vigil.metrics_port)
        before = _value(text, "ray_vigil_requests_total", model="slow", code="499")
        long_run = _slow_body(60_000)  # seconds of work: still running when it is cancelled
        # 1. Ray's request timeout (per request, x-request-timeout-seconds): Ray answers 408.
        timed_out = client.post("/v2/models/slow/infer", json=long_run,
                                headers={"x-request-timeout-seconds": "0.5"})
        assert timed_out.status_code == 408
        # 2. A client that gives up and closes its connection.
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{vigil.base_url}/v2/models/slow/infer", json=long_run,
                       headers=vigil.auth, timeout=0.5)

        def counted() -> str | None:
            text = _scrape(vigil.metrics_port)
            done = _value(text, "ray_vigil_requests_total", model="slow", code="499") >= before + 2
            return text if done else None

        text = wait_for(counted, 90, "two cancelled requests counted", 1.0)
        assert _value(text, "ray_vigil_request_duration_seconds_count", model="slow",
                      code="499") >= before + 2

        def cancelled_in_windows() -> int:
            doc = vigil.get("/monitor/v1/models/slow/drift").json()
            return sum(w["latency"]["cancelled"] for w in doc["windows"])

        assert wait_for(lambda: cancelled_in_windows() >= 2, 90, "499s in the monitor's windows")
        # The replica still answers the model after its runs were abandoned.
        quick = client.post("/v2/models/slow/infer", json=_slow_body(3))
        assert quick.status_code == 200
    finally:
        vigil.deploy(vigil.config)
        seconds = _monitor_app(vigil.config)["deployments"][0]["user_config"]["window"]["seconds"]
        wait_for(lambda: vigil.get("/monitor/v1/status").json()["settings"]["window"]["seconds"]
                 == seconds, 120, "monitor settings restored", 1.0)


def test_a_body_declared_wrongly_is_refused_before_the_rest_of_it_is_sent(vigil):
    # The client sends the header and the first kilobyte of a 16 MiB body, then waits: the
    # answer comes from the header alone, so the replica never reads (or holds) the rest.
    size = 16 * MiB
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [size // 4], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": size}}]})
    port = int(vigil.base_url.rsplit(":", 1)[1])
    request = (
        f"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {vigil.token}\r\nContent-Type: application/octet-stream\r\n"
        f"Inference-Header-Content-Length: {len(head)}\r\n"
        f"Content-Length: {len(head) + size}\r\n\r\n"
    ).encode() + head + bytes(1024)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"400", answer[:300]
    assert orjson.loads(rest.split(b"\r\n\r\n", 1)[1]) == {
        "error": "input 'input' is BYTES; model 'breast_cancer' takes FP32"
    }
