"""`make faults`' fastest scenario on the session's cluster: a model replica SIGKILLed under
steady mixed load (c=16) costs under 1% of the requests over its fault window, and Serve's
replacement serves the same versions as the replica that survived. The other scenarios run in
`make faults` (load_tests/faults.py), on a cluster of their own."""

from __future__ import annotations

import json

import pytest

from load_tests.fault_scenarios import replica_killed
from load_tests.fault_stack import REPLICA_CLASS, Stack, actors
from tests.integration.conftest import wait_for


# Open (found on 5 December): after this test, a request answered by Serve's replacement
# replica was not recorded for labels (its label came back unknown_id) and a token created
# afterwards stayed 401 on it for 10 s, while the surviving replica did both. Not diagnosed; so
# that the other tests keep a whole session, this one runs after all of them.
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
