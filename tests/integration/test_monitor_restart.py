"""A monitor that dies and restarts never holds up serving, and samples flow again after."""

from __future__ import annotations

import pytest

from tests.integration.conftest import wait_for

ROW = [0.5] * 30


def _monitor_actors(vigil) -> list:
    from ray.util.state import list_actors

    return list_actors(
        address=vigil.dashboard_url,
        filters=[("class_name", "=", "ServeReplica:monitor:Monitor"), ("state", "=", "ALIVE")],
    )


def _rows_received(vigil) -> float:
    text = vigil.get("/monitor/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vigil_sample_rows_received_total{")
        and 'model="breast_cancer"' in line
    )


@pytest.mark.slow
def test_serving_goes_on_while_the_monitor_restarts(vigil, client):
    import ray

    (old,) = wait_for(lambda: _monitor_actors(vigil), 120, "the monitor replica")
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
    ray.kill(ray.get_actor(old.name, namespace="serve"), no_restart=True)

    # While Serve replaces the monitor, every inference request is still answered at once.
    codes = [client.post("/v2/models/breast_cancer/infer", json=body).status_code for _ in range(60)]
    assert codes == [200] * 60

    new = wait_for(
        lambda: [a for a in _monitor_actors(vigil) if a.actor_id != old.actor_id], 120,
        "a new monitor replica",
    )
    assert len(new) == 1

    def samples_flow_again() -> bool:
        before = _rows_received(vigil)
        for _ in range(20):
            assert client.post("/v2/models/breast_cancer/infer", json=body).status_code == 200
        return wait_for(lambda: _rows_received(vigil) >= before + 20, 15, "rows at the monitor")

    # The replicas' handle finds the new monitor (after their retry pause) without a restart.
    wait_for(samples_flow_again, 90, "samples reaching the restarted monitor", interval=1.0)
