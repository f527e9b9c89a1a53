"""`make faults`' fastest scenario on the session's cluster: a model replica SIGKILLed under
steady mixed load (c=16) costs under 1% of the requests over its fault window, and Serve's
replacement serves the same versions as the replica that survived. The other scenarios run in
`make faults` (load_tests/faults.py), on a cluster of their own."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from load_tests.fault_scenarios import replica_killed
from load_tests.fault_stack import REPLICA_CLASS, Stack, actors, http_port
from tests.integration.conftest import create_token, wait_for


def _each_replica_reads_new_tokens_and_records_labels(vigil, stack: Stack) -> None:
    """Straight to each replica's own port: a token created now is honoured, and an answer is
    recorded for labels (its label joins)."""
    token = create_token(f"after-kill-{uuid.uuid4().hex[:8]}", "infer", vigil.models_dir)
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                        "data": [0.5] * 30}]}
    ids = []
    for actor in actors(stack, REPLICA_CLASS):
        port = wait_for(lambda a=actor: http_port(a.pid, vigil.auth), 30, "the replica's port")
        url = f"http://127.0.0.1:{port}/v2/models/breast_cancer"
        wait_for(lambda u=url: httpx.get(u, headers={"Authorization": f"Bearer {token}"},
                                         timeout=5).status_code == 200,
                 10, f"the new token honoured by replica {actor.actor_id[:8]}")
        ids.append(f"after-kill-{uuid.uuid4()}")
        answer = httpx.post(f"{url}/infer", json={**body, "id": ids[-1]}, headers=vigil.auth,
                            timeout=10)
        assert answer.status_code == 200 and answer.json()["id"] == ids[-1], answer.text

    def outcomes() -> list[str] | None:
        r = httpx.post(f"{vigil.base_url}/v2/models/breast_cancer/feedback?overwrite=true",
                       json=[{"id": i, "label": 0} for i in ids], headers=vigil.auth, timeout=10)
        found = [o["outcome"] for o in r.json()["labels"]]
        return found if found == ["joined"] * len(ids) else None

    # records reach the join store with the replicas' next flush
    wait_for(outcomes, 30, "a label for each replica's answer joined", 1.0)


# Seen once on 5 December, in a whole session: after this test, an answer from Serve's
# replacement replica was not recorded for labels (unknown_id) and a token created afterwards
# stayed 401 on it for 10 s. Not seen again in two targeted runs (this test after the session's
# alert, auth, batching and config tests), which the check below now repeats every time; so
# that the other tests keep a whole session if it comes back, this one still runs last.
@pytest.mark.slow
@pytest.mark.runs_last
def test_a_killed_replica_is_replaced_under_load(vigil):
    stack = Stack(base_url=vigil.base_url, headers=vigil.auth, dashboard_url=vigil.dashboard_url,
                  repository=vigil.models_dir,
                  outbox=vigil.models_dir.parent / "vigil-outbox.sqlite")
    try:
        outcome = replica_killed(stack)
    finally:  # the session's other tests expect two replicas serving
        wait_for(lambda: len(actors(stack, REPLICA_CLASS)) == 2 and vigil.serving(), 180,
                 "two replicas serving again", 1.0)
    print(json.dumps(outcome.row(), default=str))  # the figures, with `pytest -s`
    assert outcome.passed, json.dumps(outcome.row(), default=str)
    assert outcome.window_sent > 100  # the load really ran through the fault
    _each_replica_reads_new_tokens_and_records_labels(vigil, stack)
