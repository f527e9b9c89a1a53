"""Two Ray nodes, each in a network namespace of its own (its own address, its own HAProxy on
:8000): `python -m load_tests.cluster --basic`, the round trip of docs/deploying.md's
"A Ray cluster of several machines". Replicas on both nodes answer through both proxies, the
monitor's windows hold rows served by each node, drift is found on rows the worker served,
promote and rollback reach both nodes before the command returns, a revoked token is refused on
both, and every namespace, link and process it made is gone afterwards.

It runs in a process of its own: the session's Ray instance (tests/integration/conftest.py) is
this process's, and a process holds one. It cannot disturb that instance: the cluster's nodes
live in other network namespaces (no port is shared), under their own temp and HAProxy dirs
(/tmp/vglc), and are stopped by namespace, never with `ray stop`. Without root or `ip`, it skips
(docs/deploying.md says what the scenario shows that a one-host `ray.cluster_utils.Cluster`
could not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests import cluster_net

ROOT = Path(__file__).resolve().parents[2]
WHY_NOT = cluster_net.available()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(480),  # the scenario's 420 s, in whichever test asks for it first
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}"),
]


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cluster") / "cluster.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "load_tests.cluster", "--basic", "--out", str(out)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the cluster scenario ran past 420 s; stderr: {exc.stderr!r:.4000}")
    assert out.exists(), done.stdout[-3000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    result["_output"] = done.stdout[-3000:] + done.stderr[-3000:]
    return result


@pytest.mark.parametrize("check", [
    "answers_from_replicas_on_both_nodes",
    "samples_from_both_nodes_in_monitor_windows",
    "drift_detected_on_worker_traffic",
    "promote_and_rollback_on_both_nodes_before_return",
    "revoked_token_refused_on_both_nodes",
    "cleaned_up",
])
def test_cluster_round_trip(round_trip, check):
    checks = round_trip["checks"]
    assert "scenario_completed" not in checks, (checks.get("scenario_completed"),
                                                round_trip.get("serve_logs"))
    assert checks[check]["ok"], (checks[check]["detail"], round_trip["_output"])


def test_replicas_on_both_nodes_and_the_monitor_on_the_head(round_trip):
    placement = round_trip["placement"]
    servers = {row["node"] for row in placement if row["actor"].endswith(":ModelServer")}
    assert servers == {"head", "worker1"}
    (monitor,) = [row for row in placement if row["actor"].endswith(":Monitor")]
    assert monitor["node"] == "head" and monitor["address"] == "10.77.0.1"
    proxies = {row["node"] for row in placement if row["actor"] == "HAProxyManager"}
    assert proxies == {"head", "worker1"}
    (board,) = [row for row in placement if row["actor"] == "_Board"]
    assert board["node"] == "head"  # vigil.adapters.alias_board.BOARD_OPTIONS


def test_nothing_left_behind(round_trip):
    assert cluster_net.leftovers() == []
    assert not Path("/tmp/vglc").exists()
