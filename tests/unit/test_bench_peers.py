"""load_tests.bench_peers' pure helpers: the unsaturated row, the strict answer check, the
ratios and table, server selection, the idle rule, the pins and the MLServer settings (no
network, no server)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from load_tests import machine_idle, peer_envs, peer_report
from load_tests.bench_peers import SERVERS, select
from load_tests.onnx_models import BareModel
from load_tests.peer_payloads import (
    ABS_TOLERANCE,
    NoRowFound,
    PeerPayload,
    build_payload,
    check_answer,
    pick_row,
    unsaturated,
)
from load_tests.peer_servers import BATCH_SIZE, BATCH_WAIT_S, MLServerPeer
from load_tests.peers.onnx_v2 import BadInput, Model, decode, encode

# ---------------------------------------------------------------- the row


def test_unsaturated_wants_an_open_top_and_a_real_runner_up():
    assert unsaturated(np.array([0.5, 0.5]))
    assert unsaturated(np.array([0.9, 0.1]))
    assert not unsaturated(np.array([0.98, 0.02]))
    assert not unsaturated(np.array([1.0, 0.0]))
    assert unsaturated(np.array([0.40, 0.34, 0.26]))
    assert not unsaturated(np.array([0.96, 0.03, 0.01]))
    assert unsaturated(np.array([0.02, 0.60, 0.38]))  # any order


def _logistic(weight: float):
    def probabilities(rows: np.ndarray) -> np.ndarray:
        z = np.clip(weight * rows.astype(np.float64).sum(axis=1), -500, 500)
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], axis=1)

    return probabilities


def test_pick_row_takes_the_first_unsaturated_candidate():
    row = pick_row(_logistic(0.01), features=4, seed=3)
    first = np.random.default_rng(3).standard_normal((256, 4), dtype=np.float32)[:1]
    assert row.dtype == np.float32 and row.shape == (1, 4)
    np.testing.assert_array_equal(row, first)


def test_pick_row_bisects_between_classes_when_every_candidate_saturates():
    probabilities = _logistic(1e4)
    rows = np.random.default_rng(0).standard_normal((256, 4), dtype=np.float32)
    assert not any(unsaturated(p) for p in probabilities(rows))
    row = pick_row(probabilities, features=4, seed=0)
    assert row.shape == (1, 4) and row.dtype == np.float32
    assert unsaturated(probabilities(row)[0])


def test_pick_row_gives_up_when_all_candidates_share_a_class():
    def always_first(rows: np.ndarray) -> np.ndarray:
        return np.tile([1.0, 0.0], (len(rows), 1))

    with pytest.raises(NoRowFound):
        pick_row(always_first, features=2)


def _tiny_model(tmp_path) -> BareModel:
    """input [N, 3] -> probabilities = softmax(100 * X W), label = argmax (saturating)."""
    weights = numpy_helper.from_array(
        np.array([[1, -1], [2, -2], [-1, 1]], dtype=np.float32) * 100, "W"
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["input", "W"], ["z"]),
            helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        [weights],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return BareModel("tiny", "1", session, "input", (("label", "INT64"), ("probabilities", "FP32")))


def test_build_payload_writes_a_v2_body_for_an_unsaturated_row(tmp_path):
    payload = build_payload(_tiny_model(tmp_path), tmp_path / "bodies")
    doc = orjson.loads(payload.body())
    tensor = doc["inputs"][0]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("input", "FP32", [1, 3])
    np.testing.assert_array_equal(np.asarray(tensor["data"], dtype=np.float32), payload.row[0])
    datatype, probabilities = payload.expected["probabilities"]
    assert datatype == "FP32" and unsaturated(probabilities[0])
    assert payload.expected["label"][0] == "INT64"
    assert payload.path == "/v2/models/tiny/infer"


# ---------------------------------------------------------------- the answer check


def _payload(tmp_path) -> PeerPayload:
    expected = {
        "label": ("INT64", np.array([0], dtype=np.int64)),
        "probabilities": ("FP32", np.array([[0.75969815, 0.24030185]], dtype=np.float32)),
    }
    return PeerPayload("m", tmp_path / "body.json", np.zeros((1, 3), np.float32), expected)


def _answer(label_shape=(1,), probabilities=(0.75969815, 0.24030185), **extra) -> dict:
    return {
        "model_name": "m",
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": list(label_shape), "data": [0]},
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2],
             "data": [float(np.float32(v)) for v in probabilities]},
        ],
        **extra,
    }  # fmt: skip


def test_check_passes_an_exact_answer_and_reports_extra_keys(tmp_path):
    body = orjson.dumps(_answer(id="x", parameters={}))
    verdict = check_answer(200, body, _payload(tmp_path))
    assert verdict.ok and verdict.exact and verdict.max_abs_diff == 0.0
    assert verdict.extra_keys == ("id", "parameters") and verdict.envelope == ""
    assert verdict.answer_bytes == len(body)


def test_check_accepts_only_a_one_element_list_as_envelope(tmp_path):
    verdict = check_answer(200, orjson.dumps([_answer()]), _payload(tmp_path))
    assert verdict.ok and verdict.envelope == "one-element list"
    assert not check_answer(200, orjson.dumps([_answer(), _answer()]), _payload(tmp_path)).ok


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (_answer(label_shape=(1, 1)), "label: shape [1, 1], expected [1]"),
        (_answer(probabilities=(0.7597, 0.2403)), "probabilities: max |diff|"),
        ({"outputs": _answer()["outputs"][:1]}, "outputs ['label'], expected"),
        ({"outputs": [*_answer()["outputs"], {"name": "x", "datatype": "FP32", "shape": [1],
                                              "data": [1.0]}]}, "outputs ['label', 'probabilities', 'x']"),
        ({"predictions": [0]}, "no V2 'outputs' list"),
    ],
)  # fmt: skip
def test_check_refuses_what_differs(tmp_path, answer, reason):
    verdict = check_answer(200, orjson.dumps(answer), _payload(tmp_path))
    assert not verdict.ok and verdict.reason.startswith(reason)


def test_check_refuses_a_wrong_datatype_and_a_wrong_label(tmp_path):
    wrong_type = _answer()
    wrong_type["outputs"][1]["datatype"] = "FP64"
    assert "datatype FP64" in check_answer(200, orjson.dumps(wrong_type), _payload(tmp_path)).reason
    wrong_label = _answer()
    wrong_label["outputs"][0]["data"] = [1]
    assert not check_answer(200, orjson.dumps(wrong_label), _payload(tmp_path)).ok


def test_check_tolerance_is_a_float32_round_trip_at_most(tmp_path):
    close = (0.75969815 + ABS_TOLERANCE / 2, 0.24030185)
    verdict = check_answer(200, orjson.dumps(_answer(probabilities=close)), _payload(tmp_path))
    assert verdict.ok and not verdict.exact
    assert not check_answer(503, b'{"error": "x"}', _payload(tmp_path)).ok
    assert not check_answer(200, b"<html>", _payload(tmp_path)).ok


# ---------------------------------------------------------------- the report


def _run(server, req_s, model="m", conc=1, **extra):
    return {"server": server, "model": model, "concurrency": conc, "req_s": req_s,
            "p50_ms": 1.0, "p99_ms": 2.0, "non2xx": 0, "socket_errors": 0, **extra}  # fmt: skip


def test_ratios_use_the_reference_mean_and_the_best_clean_peer():
    results = [
        _run("reference", 1000),
        _run("mlserver", 500),
        _run("litserve", 900, non2xx=3),  # not clean: not the best peer
        _run("plain-serve", 400),
        _run("vigil", 1200),
        _run("reference", 1400, rerun=True),
    ]
    peer_report.add_ratios(results)
    vigil = results[4]
    assert vigil["ratio_to_reference"] == pytest.approx(1200 / 1200)
    assert vigil["ratio_to_best_peer"] == pytest.approx(1200 / 500)
    assert vigil["best_peer"] == "mlserver"
    assert results[1]["ratio_to_best_peer"] == pytest.approx(1.0)
    assert peer_report.drift(results) == [
        {"model": "m", "concurrency": 1, "first_req_s": 1000, "last_req_s": 1400,
         "change": pytest.approx(0.4)}
    ]  # fmt: skip


def test_table_and_summary_show_flags_and_the_points():
    results = [
        _run("reference", 1000),
        _run("bentoml-batch", 250, envelope="one-element list",
             idle_before={"idle": False, "loadavg_1m": 1.4, "others_cpu": 0.2}),
        _run("vigil", 800),
        {"server": "litserve", "model": "-", "concurrency": None, "skipped": "install failed"},
    ]  # fmt: skip
    peer_report.add_ratios(results)
    text = peer_report.table(results)
    assert "ENVELOPE(one-element list)" in text and "BUSY(load 1.4, others 20%)" in text
    assert "SKIPPED(install failed)" in text
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["model", "conc", "server", "req/s"]
    (line,) = peer_report.summary(results)
    assert line.startswith("m c=1: reference 1000 req/s; best peer bentoml-batch 250 req/s")
    assert "Vigil 800 req/s (p50 1.00 ms) = 0.80 x reference, 3.20 x best peer" in line


# ---------------------------------------------------------------- selection, idle, pins


def test_select_picks_families_and_keeps_the_run_order():
    assert select(None) == list(SERVERS)
    assert select("vigil,mlserver") == ["mlserver", "mlserver-batch", "vigil"]
    assert select("bentoml-batch,reference") == ["bentoml-batch"]
    with pytest.raises(ValueError, match="unknown servers"):
        select("triton")


def test_idle_rule_and_the_split_of_busy_ticks():
    assert machine_idle.Idleness(0.5, 0.01, 0.3).idle()
    assert not machine_idle.Idleness(1.0, 0.01, 0.0).idle()
    assert not machine_idle.Idleness(0.2, 0.05, 0.0).idle()
    # 2 cores for 100 ticks = 200 ticks of capacity; the server used 60 of the 80 busy ones.
    assert machine_idle.split_busy(80, 60, 100, 2) == (pytest.approx(0.1), pytest.approx(0.3))


def test_every_peer_pins_vigils_onnxruntime_and_its_framework(tmp_path, monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(peer_envs, "CACHE", tmp_path)
    envs = peer_envs.peer_envs()
    assert set(envs) == {"mlserver", "litserve", "bentoml"}
    for env in envs.values():
        reqs = env.requirements()
        assert reqs[0] == f"{env.name}=={env.version}"
        assert f"onnxruntime=={metadata.version('onnxruntime')}" in reqs
        assert env.path == tmp_path / f"{env.name}-{env.version}"
        assert not peer_envs.ready(env)
    assert "uvloop==0.21.0" in envs["mlserver"].requirements()
    env = envs["litserve"]
    (env.path / "bin").mkdir(parents=True)
    (env.path / "bin" / "python").touch()
    (env.path / ".bench-peers-spec.json").write_text(json.dumps({"requirements": ["other"]}))
    assert not peer_envs.ready(env)
    (env.path / ".bench-peers-spec.json").write_text(
        json.dumps({"requirements": env.requirements()})
    )
    assert peer_envs.ready(env)


def test_mlserver_settings_parallel_workers_0_no_debug_and_batching(tmp_path):
    env = peer_envs.peer_envs()["mlserver"]
    plain = MLServerPeer(env, 9001, False, tmp_path / "models", tmp_path)
    batch = MLServerPeer(env, 9002, True, tmp_path / "models", tmp_path)
    settings = plain.server_settings()
    assert settings["parallel_workers"] == 0 and settings["debug"] is False
    assert (settings["host"], settings["http_port"]) == ("127.0.0.1", 9001)
    assert plain.ports() == [9001, 9101, 9201]
    assert "max_batch_size" not in plain.model_settings("m")
    assert batch.label == "mlserver-batch"
    assert batch.model_settings("m")["max_batch_size"] == BATCH_SIZE
    assert batch.model_settings("m")["max_batch_time"] == BATCH_WAIT_S


# ---------------------------------------------------------------- the peers' shared V2 code


def _v2_model() -> Model:
    return Model("m", "1", None, "input", 3, (("label", "INT64"), ("probabilities", "FP32")))  # type: ignore[arg-type]


def test_peer_decode_checks_the_tensor_and_encode_keeps_shapes():
    model = _v2_model()
    rows = decode(model, [{"name": "input", "datatype": "FP32", "shape": [2, 3],
                           "data": [1, 2, 3, 4, 5, 6]}])  # fmt: skip
    assert rows.dtype == np.float32 and rows.shape == (2, 3)
    for bad in (
        [],
        [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}],
        [{"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}],
        [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
        [{"name": "input", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3]}],
    ):
        with pytest.raises(BadInput):
            decode(model, bad)
    doc = encode(model, [np.array([1, 0]), np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)])
    assert doc["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert doc["outputs"][1]["shape"] == [2, 2]
