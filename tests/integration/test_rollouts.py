"""Progressive rollouts on the real server, judged by the real Monitor replica on 2-second time
windows: a good candidate walked through 3 steps and promoted under c=16 load with zero failed
requests, a candidate that errors rolled back at its first step, one without traffic halted and
never promoted, and a monitor killed mid-rollout that carries on at the same step.

The model `ro` is a copy of breast_cancer published as versions 1 (production), 2 (passed the
model gate) and 3 (fails at run time: every answer a 502)."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import Counter

import httpx
import pytest

from tests.integration.conftest import wait_for
from tests.integration.test_model_versions import _failing_graph
from vigil.core import aliases, audit
from vigil.core.repository import publish, scan
from vigil.core.tensors import TensorSpec
from vigil.tools import model_gate

pytestmark = pytest.mark.slow

MODEL = "ro"
BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.5] * 30}]}
# Two-second windows; p99 within 3x of production's (two cores shared by load, replicas and the
# monitor make short windows' p99 noisy; the ratio itself is tested in the unit tests).
MONITOR = {"window": {"rows": 100_000, "seconds": 2}, "alerts": [], "webhooks": [],
           "rollouts": {"min_requests": 10, "max_p99_ratio": 3.0, "prediction_drift": False}}


@pytest.fixture(scope="module")
def ro(vigil):
    source = scan(vigil.models_dir, ["breast_cancer"])["breast_cancer"][0]
    m = source.manifest
    extra = {f: (source.path / f).read_bytes()
             for f in ("profile.json", "profile.npz", "holdout.parquet")}
    for v in ("1", "2"):
        publish(vigil.models_dir, MODEL, v, source.model_file.read_bytes(), m.inputs, m.outputs,
                metadata=m.metadata, extra_files=extra)
    publish(vigil.models_dir, MODEL, "3", _failing_graph(),
            (TensorSpec("input", "FP32", (-1, 30)),), (TensorSpec("label", "FP32", (7, -1)),))
    assert model_gate.validate(vigil.models_dir, MODEL, "2", actor="tests")["passed"]
    assert _admin(vigil, "load")["converged"]
    config = copy.deepcopy(vigil.config)
    monitor = next(a for a in config["applications"] if a["name"] == "monitor")
    deployment = monitor["deployments"][0]
    deployment["user_config"] = {**deployment["user_config"], **MONITOR}
    vigil.deploy(config)
    wait_for(lambda: _status(vigil).get("settings", {}).get("rollouts", {}).get("min_requests")
             == 10, 120, "the monitor running the test's settings", 1.0)
    try:
        yield vigil
    finally:
        vigil.deploy(vigil.config)


def _status(vigil) -> dict:
    answer = vigil.get("/monitor/v1/status", timeout=10)
    return answer.json() if answer.status_code == 200 else {}


def _admin(vigil, action: str, expect: int = 200, **body) -> dict:
    response = httpx.post(f"{vigil.base_url}/v2/repository/models/{MODEL}/{action}",
                          json=body, headers=vigil.auth, timeout=60)
    assert response.status_code == expect, response.text
    return response.json()


class Load:
    """c=16 requests to `ro` (unversioned) on a thread until stopped: statuses by version."""

    def __init__(self, vigil, concurrency: int = 16) -> None:
        self.vigil, self.concurrency = vigil, concurrency
        self.answers: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.vigil.base_url, headers=self.vigil.auth,
                                     timeout=30, limits=limits) as client:
            async def worker() -> None:
                while not self._stop.is_set():
                    try:
                        r = await client.post(f"/v2/models/{MODEL}/infer", json=BODY)
                        key = (r.status_code, r.json().get("model_version"))
                    except httpx.HTTPError as exc:
                        key = (type(exc).__name__, None)
                    self.answers[key] += 1
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def failed(self) -> dict:
        return {k: n for k, n in self.answers.items() if k[0] != 200}


def _state(vigil) -> aliases.AliasState:
    return aliases.read_aliases(vigil.models_dir, MODEL)


def _actions(vigil, since: int) -> list[str]:
    return [e["action"] for e in audit.entries(vigil.models_dir, MODEL)][since:]


def test_a_good_candidate_is_promoted_step_by_step_with_no_failed_request(ro) -> None:
    before = len(list(audit.entries(ro.models_dir, MODEL)))
    with Load(ro) as load:
        time.sleep(3)  # production's windows under load
        started = _admin(ro, "rollout", version="2", reason="test: rollout",
                         plan={"steps": [0.2, 0.4, 0.6], "windows_per_step": 1,
                               "step_deadline_s": 60})
        assert started["converged"] and started["aliases"]["canary"]["weight"] == 0.2
        wait_for(lambda: _state(ro).production == "2", 120, "the rollout promoting 2", 0.5)
        time.sleep(1)
    assert load.failed() == {}, load.answers
    assert load.answers[(200, "2")] > 0 and load.answers[(200, "1")] > 0
    actions = _actions(ro, before)
    assert actions[0] == "rollout" and actions[-1] == "rollout_promoted", actions
    assert actions.count("rollout_advanced") == 2, actions
    assert _state(ro).rollout is None and _state(ro).canary is None


def test_a_candidate_that_errors_is_rolled_back_at_its_first_step(ro) -> None:
    production = _state(ro).production
    before = len(list(audit.entries(ro.models_dir, MODEL)))
    with Load(ro) as load:
        _admin(ro, "rollout", version="3", reason="test: a broken build", force=True,
               plan={"steps": [0.3, 0.6], "windows_per_step": 1, "max_failed_checks": 1,
                     "step_deadline_s": 60})
        wait_for(lambda: _state(ro).rollout is None, 120, "the broken build rolled back", 0.5)
    actions = _actions(ro, before)
    assert actions == ["rollout", "rollout_rolled_back"], actions
    entry = list(audit.entries(ro.models_dir, MODEL))[-1]
    failed = [c["name"] for c in entry["details"]["checks"] if c["outcome"] == "fail"]
    assert "error_ratio" in failed, entry
    assert _state(ro).production == production and _state(ro).canary is None
    assert load.answers[(502, None)] > 0  # the broken build's own answers, while it took some


def test_a_candidate_without_traffic_halts_and_is_never_promoted(ro) -> None:
    production = _state(ro).production
    _admin(ro, "rollout", version="1" if production != "1" else "2", reason="test: no traffic",
           force=True, plan={"steps": [0.1, 0.5], "windows_per_step": 1, "step_deadline_s": 4})
    wait_for(lambda: _state(ro).rollout is not None and _state(ro).rollout.status == "halted",
             60, "the rollout halted", 0.5)
    assert _state(ro).production == production
    assert "did not pass within 4 s" in _state(ro).rollout.halted_reason
    _admin(ro, "rollout-abort", reason="test: done")
    assert _state(ro).rollout is None


def test_a_killed_monitor_carries_on_at_the_same_step(ro) -> None:
    import ray
    from ray.util.state import list_actors

    production = _state(ro).production
    candidate = "1" if production != "1" else "2"
    with Load(ro, concurrency=8) as load:
        _admin(ro, "rollout", version=candidate, reason="test: monitor dies", force=True,
               plan={"steps": [0.2, 0.4, 0.6], "windows_per_step": 2, "step_deadline_s": 120})
        wait_for(lambda: _state(ro).rollout is not None and _state(ro).rollout.step >= 1, 120,
                 "the rollout at its second step", 0.5)
        step = _state(ro).rollout.step
        (monitor,) = list_actors(address=ro.dashboard_url, filters=[
            ("class_name", "=", "ServeReplica:monitor:Monitor"), ("state", "=", "ALIVE")])
        ray.kill(ray.get_actor(monitor.name, namespace="serve"), no_restart=False)
        wait_for(lambda: _state(ro).rollout is None or _state(ro).rollout.step > step, 180,
                 "the rollout moving on after the monitor's restart", 1.0)
    assert load.failed() == {}, load.answers
    state = _state(ro)
    if state.rollout is None:
        assert state.production == candidate  # carried on to the end: promoted
    else:
        assert state.rollout.step > step and state.rollout.status == "running"
    entries = list(audit.entries(ro.models_dir, MODEL))
    assert sum(e["action"] == "rollout" for e in entries) == 4
