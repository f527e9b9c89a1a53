"""The Open Inference Protocol over gRPC on the session's real Ray Serve deployment (HAProxy in
front of the replicas' own gRPC servers), with tritonclient.grpc unchanged: metadata, typed and
raw inference equal to onnxruntime for both examples, every bad-input class with its code, auth
by metadata, the repository extension spreading to every replica, and a canary split.

With two applications deployed (the model server and the monitor), Ray Serve routes a gRPC call
by its `application` metadata; Vigil's HAProxy wrapper sends a call without it to the model
server, so a stock client needs nothing Ray-specific (test_a_stock_client_needs_no_ray_metadata).
The other calls here send it, as a client of several applications would."""

from __future__ import annotations

import time
import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from tests.integration.conftest import wait_for
from tests.unit.test_grpc_service import BAD_INPUTS
from vigil.core.repository import publish, scan

tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

APP = {"application": "vigil"}
MODEL = "gv"


@pytest.fixture(scope="module")
def client(vigil):
    client = tg.InferenceServerClient(vigil.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(vigil):
    with grpc.insecure_channel(vigil.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _headers(vigil, token: str | None = None) -> dict[str, str]:
    return {**APP, "authorization": f"Bearer {token or vigil.token}"}


def test_health_and_metadata(vigil, client):
    assert client.is_server_live(headers=APP) and client.is_server_ready(headers=APP)
    meta = client.get_server_metadata(headers=APP, as_json=True)
    assert meta["name"] == "vigil" and "model_repository_versions" in meta["extensions"]
    model = client.get_model_metadata("breast_cancer", headers=_headers(vigil), as_json=True)
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "30"]}]
    assert [o["name"] for o in model["outputs"]] == ["label", "probabilities"]
    assert client.is_model_ready("mlp", headers=_headers(vigil))


def test_a_stock_client_needs_no_ray_metadata(vigil, client):
    """tritonclient.grpc as a Triton user calls it: no `application` metadata, only the token."""
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata(as_json=True)["name"] == "vigil"
    auth = {"authorization": f"Bearer {vigil.token}"}
    x = np.zeros((2, 30), np.float32)
    tensor = tg.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = client.infer("breast_cancer", [tensor], request_id="g-plain", headers=auth)
    assert result.get_response().id == "g-plain" and result.as_numpy("label").shape == (2,)
    with pytest.raises(InferenceServerException) as refused:  # the token is still needed
        client.infer("breast_cancer", [tensor])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    # a named application that does not exist is still Ray's NOT_FOUND, not the model server
    with pytest.raises(InferenceServerException) as unknown:
        client.is_server_live(headers={"application": "no-such-app"})
    assert unknown.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("model", ["breast_cancer", "mlp"])
def test_tritonclient_matches_onnxruntime(vigil, client, model, typed):
    session = ort.InferenceSession(str(vigil.models_dir / model / "1" / "model.onnx"))
    if model == "breast_cancer":
        frame = pd.read_parquet(vigil.models_dir / model / "1" / "reference.parquet")
        x = frame.drop(columns="target").to_numpy(np.float32)[:7]
    else:
        x = np.random.default_rng(1).normal(size=(7, 256)).astype(np.float32)
    tensor = tg.InferInput("input", list(x.shape), "FP32")
    if typed:
        tensor._get_tensor().contents.fp32_contents.extend(x.ravel().tolist())
    else:
        tensor.set_data_from_numpy(x)
    result = client.infer(model, [tensor], request_id="g-1", headers=_headers(vigil))
    assert result.get_response().id == "g-1"
    names = [o.name for o in session.get_outputs()]
    for name, want in zip(names, session.run(names, {"input": x})):
        np.testing.assert_array_equal(result.as_numpy(name), want)


def test_every_bad_input_class_gets_its_code(vigil, stub):
    metadata = list(_headers(vigil).items())
    for what, request, code, says, _ in BAD_INPUTS:
        if request.model_name == "gather":
            continue  # a test model of the unit tests only
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=metadata, timeout=30)
        assert refused.value.code().name == code, (what, refused.value.details())
        assert says in refused.value.details(), (what, refused.value.details())


def test_a_message_over_the_body_limit_is_refused_before_it_is_read(vigil, stub):
    limit = vigil.config["applications"][0]["args"]["max_body_bytes"]
    rows = limit // 120 + 600  # past the limit and past its 64 KiB allowance
    request = pb.ModelInferRequest(model_name="breast_cancer", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[rows, 30])],
        raw_input_contents=[bytes(rows * 120)])
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, metadata=list(_headers(vigil).items()), timeout=60)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_auth_with_no_a_wrong_a_scoped_and_an_admin_token(vigil, client, tmp_path_factory):
    from tests.integration.conftest import create_token

    user = create_token("grpc-user", "infer", vigil.models_dir)
    x = tg.InferInput("input", [1, 30], "FP32")
    x.set_data_from_numpy(np.zeros((1, 30), np.float32))
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("breast_cancer", [x], headers=APP)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("breast_cancer", [x], headers=_headers(vigil, "vigil_" + "w" * 43))

    def accepted() -> bool:
        try:
            return client.infer("breast_cancer", [x], headers=_headers(vigil, user)).as_numpy(
                "label") is not None
        except InferenceServerException as exc:
            assert "UNAUTHENTICATED" in str(exc)  # not yet re-read; anything else is a failure
            return False

    # Each replica re-reads the tokens file within a second of its change (no restart).
    wait_for(accepted, 30, "the new token accepted over gRPC", 0.25)
    time.sleep(1.5)  # every replica has re-read it by now
    assert accepted()
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        client.get_model_repository_index(headers=_headers(vigil, user))
    index = client.get_model_repository_index(headers=_headers(vigil), as_json=True)
    assert {"name": "mlp", "version": "1", "state": "READY"} in index["models"]


def test_load_spreads_to_every_replica_and_a_canary_splits_grpc_traffic(vigil, client):
    """gv/1 and gv/2 (breast_cancer's graph) loaded by RepositoryModelLoad on one replica and
    served by both; a forced 50% canary of 2 keyed by `x-user`: both versions answer, each key
    always the same one."""
    source = scan(vigil.models_dir, ["breast_cancer"])["breast_cancer"][0]
    for version in ("1", "2"):
        publish(vigil.models_dir, MODEL, version, source.model_file.read_bytes(),
                source.manifest.inputs, source.manifest.outputs)
    client.load_model(MODEL, headers=_headers(vigil))
    answer = httpx.post(f"{vigil.base_url}/v2/repository/models/{MODEL}/canary",
                        json={"version": "2", "weight": 0.5, "sticky_header": "X-User",
                              "force": True, "reason": "grpc canary test"},
                        headers=vigil.auth, timeout=60)
    assert answer.status_code == 200 and answer.json()["converged"], answer.text
    x = tg.InferInput("input", [1, 30], "FP32")
    x.set_data_from_numpy(np.zeros((1, 30), np.float32))
    try:
        seen = {user: {client.infer(MODEL, [x], headers={**_headers(vigil), "x-user": user}
                                    ).get_response().model_version for _ in range(3)}
                for user in (f"u{i}" for i in range(24))}
    finally:
        httpx.post(f"{vigil.base_url}/v2/repository/models/{MODEL}/canary", json={},
                   headers=vigil.auth, timeout=60)
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert set().union(*seen.values()) == {"1", "2"}
