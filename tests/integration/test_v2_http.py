"""The Open Inference Protocol over real HTTP on a real Ray Serve deployment."""

from __future__ import annotations

import struct

import numpy as np
import onnxruntime as ort
import orjson
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def sessions(vigil):
    return {
        name: ort.InferenceSession(str(vigil.models_dir / name / "1" / "model.onnx"))
        for name in ("breast_cancer", "mlp")
    }


@pytest.fixture(scope="module")
def reference_rows(vigil) -> np.ndarray:
    frame = pd.read_parquet(vigil.models_dir / "breast_cancer" / "1" / "reference.parquet")
    return frame.drop(columns="target").to_numpy(np.float32)


def test_server_metadata_and_health(client):
    meta = client.get("/v2").json()
    assert meta["name"] == "vigil"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata(client):
    """Scope infer shows what a V2 client needs; the lineage and free-form metadata (paths,
    publisher, training data) are the admin route's (GET /v2/repository/models/{m}/versions/{v})."""
    meta = client.get("/v2/models/breast_cancer").json()
    assert meta["versions"] == ["1"]
    assert set(meta["parameters"]) == {"sha256", "created", "max_batch_rows", "aliases"}
    record = client.get("/v2/repository/models/breast_cancer/versions/1").json()
    assert record["parameters"] == {**meta["parameters"], "lineage": record["parameters"]["lineage"],
                                    "metadata": record["parameters"]["metadata"]}
    assert record["parameters"]["metadata"]["task"] == "binary classification"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "probabilities"]
    assert client.get("/v2/models/mlp/versions/1").json()["outputs"][0]["shape"] == [-1, 10]
    assert client.get("/v2/models/mlp/versions/1/ready").json()["ready"] is True


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/nope", 404),
        ("/v2/models/nope/ready", 404),
        ("/v2/models/mlp/versions/7", 404),
        ("/v2/models/mlp/versions/7/ready", 404),
        ("/v2/nothing/here", 404),
    ],
)
def test_unknown_paths_get_404_with_error_body(client, path, status):
    response = client.get(path)
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_json_infer_matches_onnxruntime(client, sessions, reference_rows):
    x = reference_rows[:5]
    body = {
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [5, 30], "datatype": "FP32", "data": x.tolist()}],
    }
    response = client.post("/v2/models/breast_cancer/infer", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["id"] == "req-1"
    assert (doc["model_name"], doc["model_version"]) == ("breast_cancer", "1")
    label, proba = sessions["breast_cancer"].run(None, {"input": x})
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["label"]["datatype"] == "INT64" and out["label"]["shape"] == [5]
    assert out["label"]["data"] == label.tolist()
    got = np.asarray(out["probabilities"]["data"], dtype=np.float32).reshape(5, 2)
    np.testing.assert_array_equal(got, proba)


def test_requested_outputs_are_honoured(client, reference_rows):
    body = {
        "inputs": [
            {"name": "input", "shape": [1, 30], "datatype": "FP32", "data": reference_rows[0].tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }
    doc = client.post("/v2/models/breast_cancer/versions/1/infer", json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("model", ["breast_cancer", "mlp"])
def test_tritonclient_matches_onnxruntime(vigil, sessions, reference_rows, model, binary):
    import tritonclient.http as triton

    rows = 7
    if model == "breast_cancer":
        x = reference_rows[:rows]
    else:
        x = np.random.default_rng(1).normal(size=(rows, 256)).astype(np.float32)
    client = triton.InferenceServerClient(vigil.base_url.removeprefix("http://"))
    assert client.is_server_live()  # health: open to probes
    assert client.is_model_ready(model, headers=vigil.auth)
    metadata = client.get_model_metadata(model, headers=vigil.auth)
    assert metadata["inputs"][0]["name"] == "input"
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    names = [o.name for o in sessions[model].get_outputs()]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client.infer(model, [tensor], outputs=outputs, request_id="t-1", headers=vigil.auth)
    assert result.get_response()["id"] == "t-1"
    expected = sessions[model].run(names, {"input": x})
    for name, want in zip(names, expected):
        np.testing.assert_array_equal(result.as_numpy(name), want)
    client.close()


# ------------------------------------------------------------------ bad input


def _binary_body(header: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), {"Inference-Header-Content-Length": str(len(head))}


def _fp32_input(shape, data=None, **extra):
    doc = {"name": "input", "shape": shape, "datatype": "FP32", **extra}
    if data is not None:
        doc["data"] = data
    return doc


ROW = [0.5] * 30


@pytest.mark.parametrize(
    ("what", "body", "headers", "status", "says"),
    [
        ("malformed JSON", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("JSON that is not an object", b"[1, 2]", {}, 400, "JSON object"),
        ("no inputs", orjson.dumps({"inputs": []}), {}, 400, "non-empty list"),
        (
            "unknown input",
            orjson.dumps({"inputs": [{**_fp32_input([1, 30], ROW), "name": "x"}]}),
            {},
            400,
            "'x'",
        ),
        (
            "misnamed input",
            orjson.dumps({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            {},
            400,
            "it takes ['input']",
        ),
        (
            "unsafe datatype (INT64 for FP32)",
            orjson.dumps({"inputs": [{**_fp32_input([1, 30], [1] * 30), "datatype": "INT64"}]}),
            {},
            400,
            "takes FP32",
        ),
        ("wrong shape", orjson.dumps({"inputs": [_fp32_input([1, 29], ROW[:29])]}), {}, 400, "shape"),
        (
            "data count disagrees with shape",
            orjson.dumps({"inputs": [_fp32_input([2, 30], ROW)]}),
            {},
            400,
            "needs 60",
        ),
        ("non-numeric data", orjson.dumps({"inputs": [_fp32_input([1, 30], ["a"] * 30)]}), {}, 400, "non-numeric"),
        (
            "header length that is not a number",
            orjson.dumps({"inputs": [_fp32_input([1, 30], ROW)]}),
            {"Inference-Header-Content-Length": "abc"},
            400,
            "not a decimal integer",
        ),
        (
            "header length beyond the body",
            orjson.dumps({"inputs": [_fp32_input([1, 30], ROW)]}),
            {"Inference-Header-Content-Length": "999999"},
            400,
            "outside the body",
        ),
        (
            "binary_data_size disagrees with shape x datatype",
            *_binary_body(
                {"inputs": [_fp32_input([1, 30], parameters={"binary_data_size": 116})]},
                b"\0" * 116,
            ),
            400,
            "does not match",
        ),
        (
            "trailing binary bytes",
            *_binary_body(
                {"inputs": [_fp32_input([1, 30], parameters={"binary_data_size": 120})]},
                b"\0" * 124,
            ),
            400,
            "no input claims",
        ),
        (
            "NaN where the model forbids it",
            *_binary_body(
                {"inputs": [_fp32_input([1, 30], parameters={"binary_data_size": 120})]},
                np.array([np.nan] + [0.0] * 29, dtype="<f4").tobytes(),
            ),
            400,
            "NaN or Inf",
        ),
    ],
)
def test_bad_input_gets_a_clear_error(client, what, body, headers, status, says):
    response = client.post("/v2/models/breast_cancer/infer", content=body, headers=headers)
    assert response.status_code == status, (what, response.text)
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"} and says in doc["error"], (what, doc)


def test_unknown_model_and_version_get_404(client):
    body = {"inputs": [_fp32_input([1, 30], ROW)]}
    assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    response = client.post("/v2/models/breast_cancer/versions/9/infer", json=body)
    assert response.status_code == 404 and "no version '9'" in response.json()["error"]


def test_wrong_method_gets_405(client):
    response = client.get("/v2/models/breast_cancer/infer")
    assert response.status_code == 405 and "error" in response.json()


def test_body_over_the_limit_gets_413(client, vigil):
    limit = vigil.config["applications"][0]["args"]["max_body_bytes"]
    declared = client.post(
        "/v2/models/mlp/infer", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and "exceeds the limit" in declared.json()["error"]

    def chunked():  # no Content-Length: the limit is enforced while reading
        for _ in range(limit // (1 << 20) + 1):
            yield b"x" * (1 << 20)

    streamed = client.post("/v2/models/mlp/infer", content=chunked())
    assert streamed.status_code == 413


def test_nan_is_accepted_where_the_model_allows_it_and_comes_back_as_binary_only(client):
    x = np.zeros((1, 256), dtype="<f4")
    x[0, 0] = np.nan
    header = {"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}]}
    # Its outputs are NaN: JSON cannot carry them (they would become null). The request was
    # accepted and the model answered this: 502 (the model's answer, not the client's input),
    # with a message that says how to get them.
    body, headers = _binary_body(header, x.tobytes())
    refused = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert refused.status_code == 502
    assert refused.json()["error"].startswith("output 'logits' holds NaN or Inf, which JSON "
                                              "cannot carry; ask for it as binary data")
    body, headers = _binary_body({**header, "parameters": {"binary_data_output": True}},
                                 x.tobytes())
    answered = client.post("/v2/models/mlp/infer", content=body, headers=headers)
    assert answered.status_code == 200
    length = int(answered.headers["inference-header-content-length"])
    doc = orjson.loads(answered.content[:length])
    size = doc["outputs"][0]["parameters"]["binary_data_size"]
    logits = np.frombuffer(answered.content[length : length + size], "<f4")
    assert np.isnan(logits).all()


def test_bytes_strings_for_a_float_model_get_400(client):
    raw = b"".join(struct.pack("<I", 1) + b"a" for _ in range(30))
    body, headers = _binary_body(
        {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "BYTES",
                     "parameters": {"binary_data_size": len(raw)}}]},
        raw,
    )
    response = client.post("/v2/models/breast_cancer/infer", content=body, headers=headers)
    assert response.status_code == 400 and "BYTES" in response.json()["error"]


def test_replica_keeps_serving_after_bad_input(client, reference_rows):
    for _ in range(5):
        client.post("/v2/models/breast_cancer/infer", content=b"{oops")
    good = {"inputs": [_fp32_input([1, 30], reference_rows[0].tolist())]}
    assert client.post("/v2/models/breast_cancer/infer", json=good).status_code == 200
