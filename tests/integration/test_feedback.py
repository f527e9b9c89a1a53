"""Labels joined to live predictions on the session's real Ray: ids on every answer, the feedback
route's outcomes per id, 409 for a second label, and the counters at /monitor/metrics."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import create_token, wait_for

ROW = [14.0, 19.0, 92.0, 650.0, 0.1, 0.1, 0.09, 0.05, 0.18, 0.06, 0.4, 1.2, 2.9, 40.0, 0.007,
       0.025, 0.03, 0.01, 0.02, 0.004, 16.0, 25.0, 107.0, 880.0, 0.13, 0.25, 0.27, 0.11, 0.29,
       0.08]


def _infer(client: httpx.Client, rows: int, request_id: str | None = None) -> httpx.Response:
    doc: dict = {"inputs": [{"name": "input", "shape": [rows, 30], "datatype": "FP32",
                             "data": ROW * rows}]}
    if request_id is not None:
        doc["id"] = request_id
    answer = client.post("/v2/models/breast_cancer/infer", json=doc)
    assert answer.status_code == 200, answer.text
    return answer


def _metric(vigil, name: str, **labels: str) -> float:
    text = vigil.get("/monitor/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_labels_join_the_predictions_they_name(vigil, client) -> None:
    given = f"fb-{uuid.uuid4()}"
    held = _metric(vigil, "vigil_feedback_predictions")
    one = _infer(client, 1, given)
    assert one.json()["id"] == given
    three = _infer(client, 3)
    assigned = three.json()["id"]
    # without an id in the body, Ray Serve's request id is the request's id, in one header
    assert three.headers.get_list("x-request-id") == [assigned] and assigned != given
    # Records reach the monitor with the replicas' samples (flush_interval_s).
    wait_for(lambda: _metric(vigil, "vigil_feedback_predictions") >= held + 2, 30,
             "the two predictions in the join store")
    joined = _metric(vigil, "vigil_feedback_labels_total", model="breast_cancer", version="1",
                     outcome="joined")
    labels = [{"id": given, "label": 1}, {"id": assigned, "label": [0, 1, 7]},
              {"id": "never-served", "label": 1}, {"id": assigned, "label": [0, 1, 1]}]
    answer = client.post("/v2/models/breast_cancer/feedback", json=labels)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert [o["outcome"] for o in doc["labels"]] == ["joined", "invalid", "unknown_id", "joined"]
    assert doc["counts"] == {"invalid": 1, "joined": 2, "unknown_id": 1}
    assert "class index" in doc["labels"][1]["detail"]
    # A second label is refused unless it says it overwrites.
    again = client.post("/v2/models/breast_cancer/feedback", json={"id": given, "label": 0})
    assert again.status_code == 409 and again.json()["labels"][0]["outcome"] == "duplicate"
    forced = client.post("/v2/models/breast_cancer/feedback?overwrite=true",
                         json={"id": given, "label": 0})
    assert forced.status_code == 200 and forced.json()["labels"][0]["outcome"] == "joined"
    wait_for(lambda: _metric(vigil, "vigil_feedback_labels_total", model="breast_cancer",
                             version="1", outcome="joined") == joined + 3, 10, "joined counted")
    assert _metric(vigil, "vigil_feedback_labels_total", model="breast_cancer", version="",
                   outcome="unknown_id") >= 1
    # Quality: close the window (1000 sampled rows) and read it where the labelled rows fell.
    predicted = [*one.json()["outputs"][0]["data"], *three.json()["outputs"][0]["data"]]
    correct = sum(int(p == t) for p, t in zip(predicted, [0, 0, 1, 1], strict=True))
    labelled_at = time.time()
    for _ in range(10):
        _infer(client, 100)

    def windows() -> list[dict] | None:
        doc = vigil.get("/monitor/v1/models/breast_cancer/drift", params={"version": "1"}).json()
        closed = doc["windows"]
        return closed if closed and closed[-1]["closed_at"] > labelled_at else None

    closed = wait_for(windows, 30, "a window closed after the labels")
    labelled = [w["labels"] for w in closed if w["labels"]["labelled_rows"]]
    assert sum(q["labelled_rows"] for q in labelled) == 4
    assert sum(q["metrics"]["accuracy"] * q["labelled_rows"] for q in labelled) == (
        pytest.approx(correct))
    assert all(q["task"] == "classification" and 0 < q["coverage"] <= 1 for q in labelled)
    # Beside each window's realised quality, the quality estimated before labels (CBPE, from
    # every prediction's calibrated probabilities): breast_cancer is calibrated at publish time.
    served = [w["estimated"] for w in closed if w["estimated"]["rows"]]
    assert served and all(e["available"] and 0 <= e["metrics"]["accuracy"] <= 1
                          and e["rows"] == e["served_rows"] for e in served)
    scraped = vigil.get("/monitor/metrics").text
    assert ('vigil_quality_estimated{metric="accuracy",model="breast_cancer",version="1"}'
            in scraped)
    assert 'vigil_quality_labels{model="breast_cancer",version="1"}' in scraped
    assert 'vigil_quality_label_coverage{model="breast_cancer",version="1"}' in scraped


def test_a_feedback_token_labels_and_does_nothing_else(vigil) -> None:
    token = create_token(f"labeller-{uuid.uuid4().hex[:8]}", "feedback", vigil.models_dir)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=vigil.base_url, timeout=30, headers=auth) as labeller:
        def post():
            return labeller.post("/v2/models/breast_cancer/feedback",
                                 json={"id": "nobody", "label": 1})

        answer = wait_for(lambda: post() if post().status_code != 401 else None, 10,
                          "the new token read")
        assert answer.status_code == 200
        assert answer.json()["labels"][0]["outcome"] == "unknown_id"
        refused = labeller.post("/v2/models/breast_cancer/infer", json={})
        assert refused.status_code == 403


def test_the_rows_endpoint_gives_sampled_rows_the_labels_of_their_requests(vigil, client) -> None:
    """A request's sampled rows carry its id to the monitor: once its window closed, the rows
    endpoint gives them the label posted for it, at each row's own index in the request."""
    given = f"rows-{uuid.uuid4()}"
    answer = _infer(client, 3, given)
    truth = [1 - p for p in answer.json()["outputs"][0]["data"]]  # the truth changed

    def labelled() -> bool:
        posted = client.post("/v2/models/breast_cancer/feedback",
                             json={"id": given, "label": truth})
        return posted.json()["labels"][0]["outcome"] == "joined"

    wait_for(labelled, 30, "the label joined")

    def closed() -> dict | None:
        _infer(client, 100)  # fills the open window (1000 sampled rows) until it closes
        got = vigil.get("/monitor/v1/models/breast_cancer/rows",
                        params={"version": "1", "labelled": "only"})
        doc = got.json() if got.status_code == 200 else {}
        return doc if given in doc.get("request_ids", []) else None

    # 100 rows a second: the next window needs ten more seconds to close, long after this one
    # is seen (the replicas flush every second)
    doc = wait_for(closed, 90, "the window with the labelled request closed", interval=1.0)
    assert doc["labelled"] == "only" and doc["label_of"] == "label"
    ours = [label for request_id, label in zip(doc["request_ids"], doc["labels"], strict=True)
            if request_id == given]
    assert ours == truth
    assert None not in doc["labels"] and doc["rows"] == len(doc["columns"]["mean radius"])
    everything = vigil.get("/monitor/v1/models/breast_cancer/rows", params={"version": "1"})
    assert everything.json()["labelled_rows"] == doc["rows"]
    assert len(everything.json()["labels"]) == everything.json()["window"]["rows"]
    bad = vigil.get("/monitor/v1/models/breast_cancer/rows", params={"labelled": "yes"})
    assert bad.status_code == 400 and "labelled must be 'all' or 'only'" in bad.json()["error"]
