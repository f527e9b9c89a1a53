"""The gRPC service in process: a real grpc.aio server on 127.0.0.1 whose RPCs are the replica's
own methods (no Ray), called by tritonclient.grpc unchanged and by its generated stub for the
messages its high-level API cannot build. Each bad input class of the HTTP tests gets its gRPC
code and HTTP's message, and is accounted by its HTTP status; auth by metadata; every RPC of
Triton's service answered or UNIMPLEMENTED by design; the repository extension audited."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from load_tests.inprocess import server_app, tokens_for
from load_tests.inprocess_grpc import grpc_served
from serving.grpc_service import SCOPES, UNIMPLEMENTED_BY_DESIGN
from serving.admin import Admin
from tests.graphs import SLOW_MODEL, gather_graph, identity_graph
from tests.unit.test_admin import InProcessBoard
from vigil.adapters.alias_board import BoardLink, _Board, board_key
from vigil.core import audit, model_ops
from vigil.core.repository import publish
from vigil.core.tensors import TensorSpec

tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ROW = [0.5] * 30


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    """The two examples, ident/1 and ident/2 (FP32 identities), gather/1 and slow/1."""
    root = tmp_path / "models"
    for name in ("breast_cancer", "mlp"):
        shutil.copytree(example_root / name, root / name)
    for version in ("1", "2"):
        publish(root, "ident", version,
                identity_graph([("x", "FP32", (-1, 2))]).SerializeToString(),
                (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("x_out", "FP32", (-1, 2)),))
    publish(root, "gather", "1", gather_graph([10, 20, 30]).SerializeToString(),
            (TensorSpec("idx", "INT64", (-1,)),), (TensorSpec("out", "INT64", (-1,)),))
    builder, inputs, outputs = SLOW_MODEL
    publish(root, "slow", "1", builder().SerializeToString(), inputs, outputs)
    return root


@pytest.fixture
def tokens(repo: Path) -> dict[str, str]:
    return tokens_for(repo, user="infer", operator="infer,admin")


def _meta(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _with_board(server):
    """The replica's admin on the alias board's own code, called in process (as
    tests/unit/test_admin.py does): changes are made, audited and spread to this one replica."""
    board = _Board(alive=lambda replica: True)
    board.register(board_key(server.models.root), "replica-1")
    server.admin = Admin(server.models, BoardLink(board_key(server.models.root),
                                                  InProcessBoard(board)), 0.2)
    return server


def _facts(server) -> dict[str, list[int]]:
    """The status of every request the replica accounted, by model/version."""
    return {f"{b.model}/{b.version}": b.status.tolist() for b in server.samples.drain()}


def _request(model: str = "breast_cancer", **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, **fields)


def _fp32(shape, values=None, name="input", datatype="FP32", **fields):
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape,
                                                   **fields)
    if values is not None:
        tensor.contents.fp32_contents.extend(values)
    return tensor


def _raw(array: np.ndarray) -> bytes:
    return array.astype("<f4").tobytes()


# ------------------------------------------------------------------ metadata and inference


@pytest.mark.parametrize("model", ["breast_cancer", "mlp"])
def test_tritonclient_typed_and_raw_match_onnxruntime(repo, tokens, model):
    server, _ = server_app(repo)
    session = ort.InferenceSession(str(repo / model / "1" / "model.onnx"))
    width = session.get_inputs()[0].shape[1]
    x = np.random.default_rng(3).normal(size=(5, width)).astype(np.float32)
    names = [o.name for o in session.get_outputs()]
    expected = session.run(names, {"input": x})
    headers = dict(_meta(tokens["user"]))
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        assert client.is_server_live() and client.is_server_ready()  # open, as HTTP health
        server_meta = client.get_server_metadata(as_json=True)
        assert server_meta["name"] == "vigil" and "binary_tensor_data" in server_meta["extensions"]
        assert client.is_model_ready(model, headers=headers)
        meta = client.get_model_metadata(model, headers=headers, as_json=True)
        assert meta["name"] == model and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1",
                                                                                str(width)]}]
        typed = client.infer(model, [_typed_input(x)], request_id="t-1", headers=headers)
        raw_input = tg.InferInput("input", list(x.shape), "FP32")
        raw_input.set_data_from_numpy(x)
        raw = client.infer(model, [raw_input], outputs=[tg.InferRequestedOutput(names[-1])],
                           headers=headers)
        client.close()
    assert typed.get_response().id == "t-1" and typed.get_response().model_version == "1"
    for name, want in zip(names, expected):
        np.testing.assert_array_equal(typed.as_numpy(name), want)
    assert [o.name for o in raw.get_response().outputs] == [names[-1]]
    np.testing.assert_array_equal(raw.as_numpy(names[-1]), expected[-1])
    assert _facts(server) == {f"{model}/1": [200, 200]}


def _typed_input(x: np.ndarray):
    """An InferInput whose data travels in contents.fp32_contents (tritonclient sends raw
    bytes from set_data_from_numpy; typed contents are what other clients send)."""
    tensor = tg.InferInput("input", list(x.shape), "FP32")
    tensor._get_tensor().contents.fp32_contents.extend(x.ravel().tolist())
    return tensor


def test_a_canary_split_and_a_sticky_key_from_metadata(repo, tokens):
    """ident/2 as a 50% canary keyed by the `x-user` metadata: both versions answer, and one
    key always gets the same version."""
    model_ops.apply(repo, "ident", "canary", actor="t", version="2", weight=0.5,
                    sticky_header="X-User", force=True, reason="unvalidated test model")
    server, _ = server_app(repo)
    x = tg.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        seen = {u: {client.infer("ident", [x], headers={**dict(_meta(tokens["user"])),
                                                        "x-user": f"u{u}"}
                                 ).get_response().model_version for _ in range(3)}
                for u in range(16)}
        client.close()
    assert all(len(versions) == 1 for versions in seen.values())
    assert {v for versions in seen.values() for v in versions} == {"1", "2"}


def test_a_shadow_gets_a_copy_of_a_grpc_call_after_the_answer(repo, tokens):
    """ident/2 as ident's shadow: the caller is answered by production (1), and the shadow's
    run is accounted for 2 as well, as HTTP's shadow copies are."""
    model_ops.apply(repo, "ident", "shadow", actor="t", version="2", force=True,
                    reason="unvalidated test model")
    server, _ = server_app(repo)
    x = tg.InferInput("x", [1, 2], "FP32")
    x.set_data_from_numpy(np.ones((1, 2), np.float32))
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        answer = client.infer("ident", [x], headers=dict(_meta(tokens["user"])))
        deadline = time.monotonic() + 30
        facts: dict[str, list[int]] = {}
        while "ident/2" not in facts and time.monotonic() < deadline:
            time.sleep(0.05)
            for key, statuses in _facts(server).items():
                facts.setdefault(key, []).extend(statuses)
        client.close()
    assert answer.get_response().model_version == "1"
    np.testing.assert_array_equal(answer.as_numpy("x_out"), np.ones((1, 2), np.float32))
    assert facts == {"ident/1": [200], "ident/2": [200]}


# ------------------------------------------------------------------ bad input

BAD_INPUTS = [
    ("no inputs", _request(), "INVALID_ARGUMENT", "non-empty list", 400),
    ("unknown input", _request(inputs=[_fp32([1, 30], ROW, name="x")]), "INVALID_ARGUMENT",
     "'x'", 400),
    ("misnamed input", _request(inputs=[_fp32([1], [1.0], name="other")]), "INVALID_ARGUMENT",
     "it takes ['input']", 400),
    ("unsafe datatype (INT64 for FP32)",
     _request(inputs=[pb.ModelInferRequest.InferInputTensor(
         name="input", datatype="INT64", shape=[1, 30],
         contents=pb.InferTensorContents(int64_contents=[1] * 30))]),
     "INVALID_ARGUMENT", "takes FP32", 400),
    ("unknown datatype", _request(inputs=[_fp32([1, 30], ROW, datatype="FP8")]),
     "INVALID_ARGUMENT", "unknown datatype 'FP8'", 400),
    ("wrong shape", _request(inputs=[_fp32([1, 29], ROW[:29])]), "INVALID_ARGUMENT", "shape",
     400),
    ("negative dimension", _request(inputs=[_fp32([-1, 30], ROW)]), "INVALID_ARGUMENT",
     "non-negative", 400),
    ("data count disagrees with shape", _request(inputs=[_fp32([2, 30], ROW)]),
     "INVALID_ARGUMENT", "needs 60", 400),
    ("another datatype's contents field",
     _request(inputs=[_fp32([1, 30], contents=pb.InferTensorContents(int_contents=[1] * 30))]),
     "INVALID_ARGUMENT", "takes fp32_contents, not ['int_contents']", 400),
    ("no data", _request(inputs=[_fp32([1, 30])]), "INVALID_ARGUMENT",
     "neither 'contents' nor raw_input_contents", 400),
    ("both contents and raw", _request(inputs=[_fp32([1, 30], ROW)],
                                       raw_input_contents=[_raw(np.zeros(30))]),
     "INVALID_ARGUMENT", "both 'contents' and raw_input_contents", 400),
    ("raw size disagrees with shape x datatype",
     _request(inputs=[_fp32([1, 30])], raw_input_contents=[b"\0" * 116]), "INVALID_ARGUMENT",
     "does not match", 400),
    ("raw entries disagree with inputs",
     _request(inputs=[_fp32([1, 30])], raw_input_contents=[_raw(np.zeros(30))] * 2),
     "INVALID_ARGUMENT", "2 entries for 1 inputs", 400),
    ("duplicate input", _request(inputs=[_fp32([1, 30], ROW), _fp32([1, 30], ROW)]),
     "INVALID_ARGUMENT", "more than once", 400),
    ("NaN where the model forbids it",
     _request(inputs=[_fp32([1, 30])],
              raw_input_contents=[_raw(np.array([np.nan] + [0.0] * 29))]),
     "INVALID_ARGUMENT", "NaN or Inf", 400),
    ("BYTES strings for a float model",
     _request(inputs=[pb.ModelInferRequest.InferInputTensor(
         name="input", datatype="BYTES", shape=[1, 30],
         contents=pb.InferTensorContents(bytes_contents=[b"a"] * 30))]),
     "INVALID_ARGUMENT", "BYTES", 400),
    ("unknown output",
     _request(inputs=[_fp32([1, 30], ROW)],
              outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")]),
     "INVALID_ARGUMENT", "has no outputs ['nope']", 400),
    ("duplicate output",
     _request(inputs=[_fp32([1, 30], ROW)],
              outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="label")] * 2),
     "INVALID_ARGUMENT", "requested more than once", 400),
    ("unknown model", _request("nope", inputs=[_fp32([1, 30], ROW)]), "NOT_FOUND",
     "model 'nope' is not served here", None),  # no version to sample it under (as HTTP)
    ("unknown version", _request(model_version="9", inputs=[_fp32([1, 30], ROW)]), "NOT_FOUND",
     "no version '9'", None),
    ("an index outside gather's table (the model fails)",
     _request("gather", inputs=[pb.ModelInferRequest.InferInputTensor(
         name="idx", datatype="INT64", shape=[1],
         contents=pb.InferTensorContents(int64_contents=[7]))]),
     "INTERNAL", "failed", 502),
]


def test_every_bad_input_class_gets_its_code_and_https_message(repo, tokens):
    server, _ = server_app(repo)
    with grpc_served(server) as url, grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for what, request, code, says, status in BAD_INPUTS:
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, metadata=_meta(tokens["user"]), timeout=30)
            assert refused.value.code().name == code, (what, refused.value.details())
            assert says in refused.value.details(), (what, refused.value.details())
            # Accounted once each, by its HTTP status, as HTTP accounts it.
            facts = _facts(server)
            statuses = [s for accounted in facts.values() for s in accounted]
            assert statuses == ([] if status is None else [status]), what
        good = stub.ModelInfer(_request(inputs=[_fp32([1, 30], ROW)]),
                               metadata=_meta(tokens["user"]))
    assert [o.name for o in good.outputs] == ["label", "probabilities"]  # still serving


def test_size_limits_are_https_with_resource_exhausted(repo, tokens):
    """Typed contents within max_json_body_bytes, raw within max_body_bytes and the gRPC
    server's max_receive_message_length: each RESOURCE_EXHAUSTED (HTTP's 413) with HTTP's
    message (max_bytes_elements: tests/unit/test_grpc_codec.py)."""
    server, _ = server_app(repo, max_json_body_bytes=4096, max_body_bytes=100_000)
    rows = 40  # 40 x 30 floats: 4,800 bytes typed, 4,800 raw
    typed = _request(inputs=[_fp32([rows, 30], ROW * rows)])
    raw = _request(inputs=[_fp32([rows, 30])], raw_input_contents=[_raw(np.zeros((rows, 30)))])
    huge = _request(inputs=[_fp32([1000, 30])], raw_input_contents=[_raw(np.zeros((1000, 30)))])
    with grpc_served(server, max_message_bytes=110_000) as url, \
            grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def refusal(request):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, metadata=_meta(tokens["user"]), timeout=30)
            return refused.value.code().name, refused.value.details()

        code, says = refusal(typed)
        assert code == "RESOURCE_EXHAUSTED" and "exceeds the limit of 4096" in says, says
        assert "send large tensors as raw_input_contents" in says
        assert stub.ModelInfer(raw, metadata=_meta(tokens["user"])).outputs  # raw: within
        code, says = refusal(huge)  # 120,000 bytes: refused by grpc before it is read
        assert code == "RESOURCE_EXHAUSTED" and "larger than max" in says
    assert _facts(server) == {"breast_cancer/1": [413, 200]}


def test_a_cancelled_call_is_accounted_once_as_499(repo, tokens):
    server, _ = server_app(repo)
    x = tg.InferInput("x", [1, 512], "FP32")
    x.set_data_from_numpy(np.zeros((1, 512), np.float32))
    iterations = tg.InferInput("iterations", [1], "INT64")
    iterations.set_data_from_numpy(np.array([100000], np.int64))
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        with pytest.raises(InferenceServerException, match="Deadline"):
            client.infer("slow", [x, iterations], headers=dict(_meta(tokens["user"])),
                         client_timeout=0.2)
        deadline = time.monotonic() + 30
        served = server.models.router.resolve("slow").target
        while served.users and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
    assert _facts(server) == {"slow/1": [499]}


# ------------------------------------------------------------------ auth


def test_auth_by_metadata_with_https_scopes(repo, tokens):
    server, _ = server_app(repo)
    request = _request(inputs=[_fp32([1, 30], ROW)])
    with grpc_served(server) as url, grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        def code(call, request, metadata):
            try:
                call(request, metadata=metadata, timeout=30)
            except grpc.RpcError as exc:
                return exc.code().name, exc.details()
            return "OK", ""

        assert code(stub.ModelInfer, request, [])[0] == "UNAUTHENTICATED"
        assert code(stub.ModelInfer, request, _meta("vgl_wrong"))[0] == "UNAUTHENTICATED"
        assert code(stub.ModelInfer, request, _meta(tokens["user"])) == ("OK", "")
        index = pb.RepositoryIndexRequest()
        denied = code(stub.RepositoryIndex, index, _meta(tokens["user"]))
        assert denied[0] == "PERMISSION_DENIED" and "lacks the 'admin' scope" in denied[1]
        assert code(stub.RepositoryIndex, index, _meta(tokens["operator"])) == ("OK", "")
        assert code(stub.ModelMetadata, pb.ModelMetadataRequest(name="mlp"), [])[0] == \
            "UNAUTHENTICATED"
        for open_rpc, message in ((stub.ServerLive, pb.ServerLiveRequest()),
                                  (stub.ServerReady, pb.ServerReadyRequest()),
                                  (stub.ServerMetadata, pb.ServerMetadataRequest())):
            assert code(open_rpc, message, []) == ("OK", "")


# ------------------------------------------------------------------ conformance


def test_every_rpc_of_tritons_service_is_served_or_unimplemented_by_design(repo, tokens):
    """Each RPC of tritonclient's service is called: Vigil's answer OK, the others
    UNIMPLEMENTED; the two lists together are the whole service."""
    server = _with_board(server_app(repo)[0])
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    requests = {"ModelInfer": _request(inputs=[_fp32([1, 30], ROW)]),
                "ModelReady": pb.ModelReadyRequest(name="mlp"),
                "ModelMetadata": pb.ModelMetadataRequest(name="mlp"),
                "RepositoryModelLoad": pb.RepositoryModelLoadRequest(model_name="mlp"),
                "RepositoryModelUnload": pb.RepositoryModelUnloadRequest(model_name="ident")}
    answered: dict[str, str] = {}
    with grpc_served(server) as url, grpc.insecure_channel(url) as channel:
        for method in service.methods:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            path = f"/{service.full_name}/{method.name}"
            request = requests.get(method.name, request_type())
            if method.client_streaming:
                call = channel.stream_stream(path, request_serializer=request_type.SerializeToString,
                                             response_deserializer=response_type.FromString)
                try:
                    list(call(iter([request]), metadata=_meta(tokens["operator"]), timeout=30))
                    answered[method.name] = "OK"
                except grpc.RpcError as exc:
                    answered[method.name] = exc.code().name
                continue
            call = channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                                       response_deserializer=response_type.FromString)
            try:
                call(request, metadata=_meta(tokens["operator"]), timeout=30)
                answered[method.name] = "OK"
            except grpc.RpcError as exc:
                answered[method.name] = exc.code().name
    assert {m for m, code in answered.items() if code == "OK"} == set(SCOPES), answered
    assert {m for m, code in answered.items() if code == "UNIMPLEMENTED"} == \
        set(UNIMPLEMENTED_BY_DESIGN)


def test_repository_load_and_unload_are_audited_under_the_callers_token(repo, tokens):
    server = _with_board(server_app(repo)[0])
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        operator = dict(_meta(tokens["operator"]))
        client.unload_model("ident", headers=operator)
        server.models.refresh()  # what the replica's alias follower does when told (Ray's)
        index = client.get_model_repository_index(headers=operator, as_json=True)
        ident = [m for m in index["models"] if m["name"] == "ident"]
        assert ident and all(m["state"] == "UNAVAILABLE" and m["reason"] == "model unloaded"
                             for m in ident)
        client.load_model("ident", headers=operator)
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.load_model("nope", headers=operator)
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            client.unload_model("ident", headers=dict(_meta(tokens["user"])))
        client.close()
    entries, _ = audit.tail(repo, "ident", 10)
    assert [(e["action"], e["actor"]) for e in entries][-2:] == [("unload", "operator"),
                                                                 ("load", "operator")]


def test_calls_run_concurrently_on_one_replica(repo, tokens):
    """Many clients at once: every answer right (the core's batching path under gRPC)."""
    server, _ = server_app(repo)
    x = np.random.default_rng(0).normal(size=(1, 30)).astype(np.float32)
    errors: list[BaseException] = []
    with grpc_served(server) as url:
        client = tg.InferenceServerClient(url)
        tensor = tg.InferInput("input", [1, 30], "FP32")
        tensor.set_data_from_numpy(x)
        want = client.infer("breast_cancer", [tensor], headers=dict(_meta(tokens["user"])))

        def one() -> None:
            try:
                got = client.infer("breast_cancer", [tensor],
                                   headers=dict(_meta(tokens["user"])))
                np.testing.assert_array_equal(got.as_numpy("probabilities"),
                                              want.as_numpy("probabilities"))
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        client.close()
    assert not errors


def test_every_grpc_answer_carries_an_id_that_labels_join_to(repo, tokens):
    """As HTTP's: the request's own id, else the call's x-request-id metadata, else a new one;
    recorded for the feedback join. With feedback off, no id is made up."""
    server = server_app(repo)[0]
    row = _fp32([1, 30], ROW)
    with grpc_served(server) as url, grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        given = stub.ModelInfer(_request(id="req-7", inputs=[row]), metadata=_meta(tokens["user"]))
        traced = stub.ModelInfer(_request(inputs=[row]),
                                 metadata=[*_meta(tokens["user"]), ("x-request-id", "trace-1")])
        assigned = stub.ModelInfer(_request(inputs=[row]), metadata=_meta(tokens["user"]))
    assert (given.id, traced.id) == ("req-7", "trace-1")
    assert len(assigned.id) == 36
    (record,) = server.predictions.drain()
    assert record.ids == ("req-7", "trace-1", assigned.id)

    quiet = server_app(repo, feedback={"enabled": False})[0]
    with grpc_served(quiet) as url, grpc.insecure_channel(url) as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            _request(inputs=[row]), metadata=_meta(tokens["user"]))
    assert answer.id == "" and quiet.predictions is None


def test_a_client_past_its_cap_gets_resource_exhausted_while_others_are_served(repo, tokens):
    """HTTP's per-client cap (429) over gRPC: the same client (a token's name) past
    front_door.max_in_flight_per_client is refused RESOURCE_EXHAUSTED with HTTP's message;
    another token is served, and the client is served again once its call has ended."""
    server = server_app(repo, front_door={"max_in_flight_per_client": 1})[0]
    slow = _request("slow", inputs=[_fp32([1, 512], [0.0] * 512, name="x")])
    iterations = slow.inputs.add(name="iterations", datatype="INT64", shape=[1])
    iterations.contents.int64_contents.append(100000)
    row = _request(inputs=[_fp32([1, 30], ROW)])
    with grpc_served(server) as url, grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        held = stub.ModelInfer.future(slow, metadata=_meta(tokens["user"]), timeout=20)
        deadline = time.monotonic() + 10
        while server.clients.in_flight("token:user") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(row, metadata=_meta(tokens["user"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_in_flight_per_client" in refused.value.details()
        assert stub.ModelInfer(row, metadata=_meta(tokens["operator"]), timeout=10).outputs
        held.cancel()
        while server.clients.in_flight("token:user") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stub.ModelInfer(row, metadata=_meta(tokens["user"]), timeout=10).outputs
    assert server.clients.in_flight("token:user") == 0
    assert _facts(server) == {"breast_cancer/1": [200, 200], "slow/1": [499]}


def test_a_calls_client_is_its_peer_or_a_trusted_proxys_forwarded_address():
    from serving.clients import ClientCap
    from serving.grpc_service import peer_address

    def name(actor, peer, metadata):
        return cap.name(actor, peer_address(peer), lambda: metadata.get("x-forwarded-for"))

    cap = ClientCap(4, trusted_proxies=["10.0.0.9"])
    assert name("anonymous", "ipv4:127.0.0.1:5100", {}) == "addr:127.0.0.1"
    assert name("anonymous", "ipv6:[::1]:5100", {}) == "addr:::1"
    forwarded = {"x-forwarded-for": "1.2.3.4, 10.1.1.1"}
    assert name("anonymous", "ipv4:10.0.0.9:5100", forwarded) == "addr:10.1.1.1"
    # an untrusted peer's header is ignored; a token names the client wherever it comes from
    assert name("anonymous", "ipv4:10.0.0.8:5100", forwarded) == "addr:10.0.0.8"
    assert name("ci-bot", "ipv4:10.0.0.8:5100", {}) == "token:ci-bot"
