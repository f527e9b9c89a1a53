"""The replica's side of feedback: request ids on every answer, the prediction log that travels to
the join store, and the feedback route's checks before anything reaches the monitor (in process:
the real app over httpx's ASGI transport, real onnxruntime sessions, a real tokens file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest

from load_tests.inprocess import server_app, run_client, tokens_for
from serving.feedback import feedback_answer, parse_labels, parse_overwrite
from serving.prediction_log import PredictionLog
from serving.protocol import BadRequest, PayloadTooLarge
from vigil.core.messages import UnreadableMessage
from vigil.core.prediction_messages import PredictionMessage, read_predictions

ROW = [0.1] * 30


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root / "breast_cancer", root / "breast_cancer")
    return root


def _infer(rows: int, request_id: str | None = None) -> bytes:
    doc: dict = {"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32",
                             "data": ROW * rows}]}
    if request_id is not None:
        doc["id"] = request_id
    return orjson.dumps(doc)


def test_every_answer_carries_an_id_and_is_recorded_without_its_inputs(repo: Path) -> None:
    tokens = tokens_for(repo, user="infer")
    server, app = server_app(repo)
    auth = {"Authorization": f"Bearer {tokens['user']}"}

    async def go(client):
        given = await client.post("/v2/models/breast_cancer/infer", content=_infer(1, "req-7"),
                                  headers=auth)
        assigned = await client.post("/v2/models/breast_cancer/infer", content=_infer(3),
                                     headers=auth)
        refused = await client.post("/v2/models/breast_cancer/infer", content=b"{",
                                    headers=auth)
        # a request's own X-Request-Id (Ray Serve sets one on every request) is its id
        traced = await client.post("/v2/models/breast_cancer/infer", content=_infer(1),
                                   headers={**auth, "X-Request-Id": "trace-1"})
        return given, assigned, refused, traced

    given, assigned, refused, traced = run_client(app, go)
    assert given.json()["id"] == "req-7" and "x-request-id" not in given.headers
    new_id = assigned.json()["id"]
    assert len(new_id) == 36 and assigned.headers["x-request-id"] == new_id
    assert refused.status_code == 400 and "x-request-id" not in refused.headers
    # the header came in: Ray Serve's proxy answers it, so the replica does not add a second
    assert traced.json()["id"] == "trace-1" and "x-request-id" not in traced.headers
    assert server.predictions is not None
    (record,) = server.predictions.drain()
    assert (record.model, record.version, record.ids) == ("breast_cancer", "1",
                                                           ("req-7", new_id, "trace-1"))
    assert record.rows.tolist() == [1, 3, 1]
    assert set(record.outputs) == {"label", "probabilities"}
    assert record.outputs["label"].shape == (5,) and read_predictions(record) is record
    # the sampled rows carry the same ids, so that the monitor can find their labels
    assert server.samples is not None
    (sample,) = server.samples.drain()
    assert sample.request_ids == ("req-7", new_id, "trace-1")
    assert sample.request_rows.tolist() == [1, 3, 1]
    assert sample.row_positions.tolist() == [0, 0, 1, 2, 0]


def test_with_feedback_off_no_id_is_assigned_and_nothing_recorded(repo: Path) -> None:
    tokens = tokens_for(repo, user="infer,feedback")
    server, app = server_app(repo, feedback={"enabled": False})
    auth = {"Authorization": f"Bearer {tokens['user']}"}

    async def go(client):
        answer = await client.post("/v2/models/breast_cancer/infer", content=_infer(1),
                                   headers=auth)
        labels = await client.post("/v2/models/breast_cancer/feedback",
                                   content=b'{"id": "a", "label": 1}', headers=auth)
        return answer, labels

    answer, labels = run_client(app, go)
    assert "id" not in answer.json() and "x-request-id" not in answer.headers
    assert server.predictions is None
    (sample,) = server.samples.drain()  # sampled rows without ids
    assert (sample.rows, sample.request_ids, sample.row_positions) == (1, (), None)
    assert labels.status_code == 503 and "feedback is off" in labels.json()["error"]


@pytest.mark.parametrize(("path", "body", "status", "message"), [
    ("/v2/models/breast_cancer/feedback", b"{", 400, "not JSON"),
    ("/v2/models/breast_cancer/feedback", b"[]", 400, "no labels"),
    ("/v2/models/breast_cancer/feedback", b'{"id": "a"}', 400, "exactly the keys"),
    ("/v2/models/breast_cancer/feedback", b'[{"id": 3, "label": 1}]', 400, "id must be"),
    ("/v2/models/breast_cancer/feedback?overwrite=yes", b'{"id": "a", "label": 1}', 400,
     "expected true or false"),
    ("/v2/models/breast_cancer/feedback?force=1", b'{"id": "a", "label": 1}', 400,
     "unknown query parameter"),
    ("/v2/models/nope/feedback", b'{"id": "a", "label": 1}', 404, "not served here"),
    ("/v2/models/breast_cancer/feedback", b'{"id": "' + b"a" * 300 + b'", "label": 1}', 400,
     "1 to 256 characters"),
    ("/v2/models/breast_cancer/feedback", b"[" + b'{"id":"a","label":1},' * 10_000
     + b'{"id":"a","label":1}]', 413, "at most 10000"),
    # no monitor in process: the labels cannot be taken, and the client is told to resend
    ("/v2/models/breast_cancer/feedback", b'{"id": "a", "label": 1}', 503, "not reachable"),
])
def test_the_feedback_route_checks_the_whole_body_first(repo, path, body, status, message):
    tokens = tokens_for(repo, labeller="feedback", user="infer", operator="admin")
    _, app = server_app(repo)

    def post(token: str):
        return run_client(app, lambda c: c.post(path, content=body, headers={
            "Authorization": f"Bearer {tokens[token]}"}))

    answer = post("labeller")
    assert answer.status_code == status and message in answer.json()["error"]
    assert post("operator").status_code == status  # admin grants feedback
    refused = post("user")  # infer does not
    assert refused.status_code == 403 and "'feedback'" in refused.json()["error"]


def test_a_body_larger_than_the_json_limit_is_refused(repo: Path) -> None:
    tokens = tokens_for(repo, labeller="feedback")
    _, app = server_app(repo, max_json_body_bytes=1024)
    body = orjson.dumps([{"id": f"r{i}", "label": 1} for i in range(200)])
    answer = run_client(app, lambda c: c.post("/v2/models/breast_cancer/feedback", content=body,
                                              headers={"Authorization": f"Bearer {tokens['labeller']}"}))
    assert answer.status_code == 413


def test_labels_parse_one_or_many_in_order() -> None:
    assert parse_labels(b'{"id": "a", "label": [1, 0]}') == [("a", [1, 0])]
    assert parse_labels(b'[{"id": "a", "label": 1}, {"id": "b", "label": null}]') == [
        ("a", 1), ("b", None)]
    with pytest.raises(BadRequest, match="label 1: expected an object"):
        parse_labels(b'[{"id": "a", "label": 1}, 3]')
    with pytest.raises(PayloadTooLarge):
        parse_labels(orjson.dumps([{"id": "a", "label": 1}] * 10_001))
    assert parse_overwrite([("overwrite", "true")]) is True
    assert parse_overwrite([]) is False


def test_the_answer_is_409_when_any_label_was_a_second_one() -> None:
    joined = {"id": "a", "outcome": "joined", "version": "1"}
    dup = {"id": "b", "outcome": "duplicate", "version": "1"}
    doc, status = feedback_answer("m", [joined])
    assert status == 200 and doc["counts"] == {"joined": 1} and "error" not in doc
    doc, status = feedback_answer("m", [joined, dup])
    assert status == 409 and doc["labels"] == [joined, dup] and "overwrite=true" in doc["error"]


def test_the_prediction_log_is_bounded_and_counts_what_it_drops() -> None:
    log = PredictionLog(max_requests=3)
    out = {"label": np.array([1, 0]), "probabilities": np.zeros((2, 2), np.float32)}
    for i in range(5):
        assert log.record("m", "1", f"r{i}", float(i), out)
    assert not log.record("m", "1", "x" * 300, 9.0, out)  # an id too long to label
    assert not log.record("m", "1", "bad", 9.0, {"a": np.zeros(2), "b": np.zeros(3)})
    assert not log.record("m", "1", "scalar", 9.0, {"a": np.float32(1.0)})
    assert log.record("m", "2", "other", 9.0, {"label": np.array([1])})
    (one, two) = log.drain()
    # the bound is for all versions together: m/2's record pushed r2 out too
    assert one.ids == ("r3", "r4") and one.dropped == 3 and one.outputs["label"].shape == (4,)
    assert two.ids == ("other",) and two.dropped == 0
    assert log.drain() == [] and len(log) == 0


def test_records_of_another_layout_are_dropped_and_counted() -> None:
    log = PredictionLog(max_requests=10)
    log.record("m", "1", "a", 1.0, {"p": np.zeros((1, 2), np.float32)})
    log.record("m", "1", "b", 2.0, {"p": np.zeros((1, 3), np.float32)})
    (message,) = log.drain()
    assert message.ids == ("a",) and message.dropped == 1


def test_a_prediction_message_that_does_not_add_up_is_unreadable() -> None:
    good = PredictionMessage("m", "1", ("a",), np.array([1.0]), np.array([2]),
                             {"label": np.array([1, 0])})
    assert read_predictions(good) is good
    for bad, reason in [
        ("x", "not_a_message"),
        (PredictionMessage("m", "1", ("a",), np.array([1.0]), np.array([3]),
                           {"label": np.array([1, 0])}), "malformed"),
        (PredictionMessage("m", "1", ("",), np.array([1.0]), np.array([2]),
                           {"label": np.array([1, 0])}), "malformed"),
        (PredictionMessage("m", "", ("a",), np.array([1.0]), np.array([2]),
                           {"label": np.array([1, 0])}), "malformed"),
        (PredictionMessage("m", "1", ("a",), np.array([1]), np.array([2]),
                           {"label": np.array([1, 0])}), "malformed"),
        (PredictionMessage("m", "1", ("a",), np.array([1.0]), np.array([2]),
                           {"label": np.array([1, 0])}, schema_version=0), "schema_version"),
    ]:
        with pytest.raises(UnreadableMessage) as caught:
            read_predictions(bad)
        assert caught.value.reason == reason
