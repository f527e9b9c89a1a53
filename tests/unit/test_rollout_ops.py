"""Rollouts through vigil.core.model_ops: started (gated like promote), every step saved in the
aliases with the canary's weight following it and one audit line each, the monitor's decisions
applied only to the rollout they were made from, a manual change ending it, and the state read
back after a restart (a new process reading the same files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.core import aliases, audit, model_ops, rollout
from vigil.core.aliases import AliasError
from vigil.core.repository import publish
from vigil.core.rollout import CheckResult, make_plan
from vigil.core.tensors import TensorSpec

SPEC = (TensorSpec("x", "FP32", (-1, 2)),)
PLAN = make_plan((0.05, 0.25, 0.5), windows_per_step=1, max_failed_checks=2)
PASS = (CheckResult("error_ratio", "pass", 0.0, 0.01),)
FAIL = (CheckResult("error_ratio", "fail", 0.3, 0.01),)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for v in ("1", "2", "3"):
        publish(root, "m", v, f"bytes-{v}".encode(), SPEC, SPEC)
    model_ops.apply(root, "m", "promote", actor="ci", version="1", force=True, reason="seed")
    return root


def start(repo: Path, version: str = "2", plan=PLAN, **kw) -> model_ops.Change:
    kw.setdefault("force", True)
    kw.setdefault("reason", "retrained on drift")
    return model_ops.apply(repo, "m", "rollout", actor="ops", version=version, plan=plan, now=100.0,
                           **kw)


def monitor(repo: Path, action: str, decision: rollout.Decision, judged) -> model_ops.Change:
    return model_ops.apply(repo, "m", action, actor="vigil-monitor", version=judged.version,
                           reason=decision.reason, expect=judged, rollout=decision.state)


def saved(repo: Path) -> aliases.AliasState:
    return aliases.read_aliases(repo, "m")


def test_a_rollout_starts_at_its_first_step_as_the_canary(repo: Path) -> None:
    change = start(repo, plan=make_plan((0.05, 0.5), sticky_header="X-User"))
    state = saved(repo)
    assert state.canary == aliases.Canary("2", 0.05, "x-user")
    assert state.rollout == rollout.start("2", make_plan((0.05, 0.5), sticky_header="X-User"),
                                          100.0)
    assert change.entry["action"] == "rollout" and change.entry["details"]["forced"] is True


def test_a_rollout_is_gated_like_promote(repo: Path) -> None:
    with pytest.raises(AliasError, match="validate") as err:
        start(repo, force=False)
    assert err.value.status == 409
    assert saved(repo).rollout is None and saved(repo).canary is None


@pytest.mark.parametrize("setup, version, says", [
    (lambda r: start(r), "3", "already has a rollout of version 2"),
    (lambda r: None, "1", "production already"),
    (lambda r: model_ops.apply(r, "m", "canary", actor="x", version="3", weight=0.1, force=True,
                               reason="manual"), "2", "has a canary of version 3"),
    (lambda r: None, "9", "no version '9'"),
])
def test_what_the_model_state_refuses(repo: Path, setup, version, says) -> None:
    setup(repo)
    before = saved(repo)
    with pytest.raises(AliasError, match=says):
        start(repo, version=version)
    assert saved(repo) == before


def test_the_monitor_walks_it_to_promotion_each_step_saved_and_audited(repo: Path) -> None:
    start(repo)
    now = 100.0
    for window, (action, weight) in enumerate(
            [("rollout_advanced", 0.25), ("rollout_advanced", 0.5)], 1):
        judged = saved(repo).rollout
        now += 30
        decision = rollout.decide(judged, window, PASS, now)
        assert decision.kind == "advance"
        monitor(repo, action, decision, judged)
        assert saved(repo).canary.weight == weight == saved(repo).rollout.weight
    judged = saved(repo).rollout
    decision = rollout.decide(judged, 3, PASS, now + 30)
    assert decision.kind == "promote"
    change = monitor(repo, "rollout_promoted", decision, judged)
    state = saved(repo)
    assert (state.production, state.canary, state.rollout) == ("2", None, None)
    assert (change.from_version, change.to_version) == ("1", "2")
    actions = [e["action"] for e in audit.newest(repo, "m")][:4]
    assert actions == ["rollout_promoted", "rollout_advanced", "rollout_advanced", "rollout"]


def test_failed_rounds_roll_it_back(repo: Path) -> None:
    start(repo)
    judged = saved(repo).rollout
    held = rollout.decide(judged, 1, FAIL, 130)
    monitor(repo, "rollout_held", held, judged)
    assert saved(repo).rollout.failed_checks == 1 and saved(repo).canary.weight == 0.05
    judged = saved(repo).rollout
    back = rollout.decide(judged, 2, FAIL, 160)
    assert back.kind == "roll_back"
    monitor(repo, "rollout_rolled_back", back, judged)
    state = saved(repo)
    assert (state.production, state.canary, state.rollout) == ("1", None, None)


def test_a_decision_on_a_rollout_that_changed_meanwhile_is_dropped(repo: Path) -> None:
    start(repo)
    judged = saved(repo).rollout
    decision = rollout.decide(judged, 1, PASS, 130)
    model_ops.apply(repo, "m", "rollout_paused", actor="ops", reason="look first")
    with pytest.raises(AliasError, match="changed since it was judged"):
        monitor(repo, "rollout_advanced", decision, judged)
    state = saved(repo)
    assert state.rollout.status == "paused" and state.canary.weight == 0.05


def test_pause_resume_and_abort(repo: Path) -> None:
    start(repo)
    model_ops.apply(repo, "m", "rollout_paused", actor="ops", reason="look first")
    with pytest.raises(AliasError, match="paused, not running"):
        model_ops.apply(repo, "m", "rollout_paused", actor="ops", reason="again")
    model_ops.apply(repo, "m", "rollout_resumed", actor="ops", reason="fine", now=500.0)
    assert saved(repo).rollout.deadline == 500.0 + PLAN.step_deadline_s
    with pytest.raises(AliasError, match="is of version 2, not 3"):
        model_ops.apply(repo, "m", "rollout_aborted", actor="ops", version="3", reason="x")
    model_ops.apply(repo, "m", "rollout_aborted", actor="ops", version="2", reason="not today")
    state = saved(repo)
    assert (state.production, state.canary, state.rollout) == ("1", None, None)
    with pytest.raises(AliasError, match="has no rollout"):
        model_ops.apply(repo, "m", "rollout_aborted", actor="ops", reason="again")


@pytest.mark.parametrize("action, kwargs", [
    ("promote", {"version": "3", "force": True}),
    ("rollback", {}),
    ("canary", {"version": "2", "weight": 0.3, "force": True}),
    ("canary_cleared", {}),
])
def test_a_manual_change_ends_the_rollout_and_says_so(repo: Path, action, kwargs) -> None:
    model_ops.apply(repo, "m", "promote", actor="ci", version="3", force=True, reason="seed")
    if action == "promote":
        kwargs = {"version": "1", "force": True}
    start(repo)
    change = model_ops.apply(repo, "m", action, actor="ops", reason="by hand", **kwargs)
    assert saved(repo).rollout is None
    assert change.entry["details"]["rollout_ended"] == (
        f"the rollout of 2 (step 1 of 3, running) ended by {action} (ops)")


def test_the_monitors_steps_need_the_state_they_were_judged_from(repo: Path) -> None:
    start(repo)
    with pytest.raises(AliasError, match="is the monitor's") as err:
        model_ops.apply(repo, "m", "rollout_advanced", actor="x", version="2", reason="r")
    assert err.value.status == 400


def test_the_saved_rollout_survives_a_restart_and_a_damaged_one_is_named(repo: Path) -> None:
    start(repo)
    judged = saved(repo).rollout
    monitor(repo, "rollout_held", rollout.decide(judged, 1, FAIL, 130), judged)
    again = aliases.read_aliases(repo, "m")  # as a restarted monitor or replica reads it
    assert again.rollout.failed_checks == 1 and again.rollout.last_window == 1
    path = aliases.aliases_path(repo, "m")
    path.write_text(path.read_text().replace('"status": "running"', '"status": "dancing"'))
    with pytest.raises(AliasError, match="the rollout is malformed"):
        aliases.read_aliases(repo, "m")
