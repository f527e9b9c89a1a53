"""The rollout's plan and step machine (vigil.core.rollout), driven with judged windows alone:
every refusal with its message, pass, no verdict, fail, the deadline, max failed checks,
promotion at the last step only, pause and resume, and the state saved and read back."""

from __future__ import annotations

import json
import re

import pytest

from vigil.core import rollout
from vigil.core.rollout import CheckResult, PlanRefused, make_plan

PASS = (CheckResult("min_requests", "pass", 80, 50), CheckResult("error_ratio", "pass", 0.0, 0.01))
FAIL = (CheckResult("min_requests", "pass", 80, 50), CheckResult("error_ratio", "fail", 0.2, 0.01))
NO_VERDICT = (CheckResult("min_requests", "no_verdict", 3, 50),)


def started(steps=(0.1, 0.5), windows=2, failed=2, deadline=600.0, now=1000.0):
    return rollout.start("2", make_plan(steps, windows, failed, deadline), now)


# --- the plan: every refusal names what is wrong ------------------------------------------------

@pytest.mark.parametrize("steps, says", [
    ((), "at least one step"),
    ((0.0, 0.5), "step 1 sends 0"),
    ((0.1, 1.0), "below 1 (100%)"),
    ((0.1, 1.5), "step 2 sends 1.5"),
    ((-0.1,), "above 0"),
    ((0.25, 0.1), "strictly increase: step 2 (0.1) is not above step 1 (0.25)"),
    ((0.1, 0.1), "strictly increase"),
    ((float("nan"),), "not a finite number"),
    ((True,), "not a finite number"),
    (tuple(i / 100 for i in range(1, 23)), "at most 20"),
])
def test_a_plan_that_cannot_end_in_a_promotion_is_refused(steps, says) -> None:
    with pytest.raises(PlanRefused, match=re.escape(says)) as err:
        make_plan(steps)
    assert err.value.status == 400


@pytest.mark.parametrize("kwargs, says", [
    ({"windows_per_step": 0}, "windows_per_step must be a whole number from 1"),
    ({"windows_per_step": 1.5}, "windows_per_step"),
    ({"max_failed_checks": 0}, "max_failed_checks must be a whole number from 1"),
    ({"step_deadline_s": 0}, "step_deadline_s must be between 1"),
    ({"step_deadline_s": 10 ** 9}, "step_deadline_s"),
    ({"sticky_header": "x user"}, "not an HTTP header name"),
    ({"sticky_header": ""}, "not an HTTP header name"),
])
def test_bounds_of_the_plan(kwargs, says) -> None:
    with pytest.raises(PlanRefused, match=says):
        make_plan((0.1, 0.5), **kwargs)


def test_steps_are_written_in_percent() -> None:
    assert rollout.parse_percent_steps("5,10, 25%,50") == (0.05, 0.10, 0.25, 0.50)
    with pytest.raises(PlanRefused, match="'ten' is not a number of percent"):
        rollout.parse_percent_steps("5,ten")
    with pytest.raises(PlanRefused, match="step 3 sends 1"):  # 100% is promotion, not a step
        make_plan(rollout.parse_percent_steps("10,50,100"))


def test_the_model_state_refuses_a_second_rollout_production_and_an_ungated_version() -> None:
    running = started()
    with pytest.raises(PlanRefused, match="already has a rollout of version 2") as err:
        rollout.check_startable("m", "3", "1", running, gate_passed=True)
    assert err.value.status == 409
    with pytest.raises(PlanRefused, match="production already"):
        rollout.check_startable("m", "1", "1", None, gate_passed=True)
    with pytest.raises(PlanRefused, match="has not passed the model gate"):
        rollout.check_startable("m", "2", "1", None, gate_passed=False)
    rollout.check_startable("m", "2", "1", None, gate_passed=True)  # nothing raised


# --- the step machine ------------------------------------------------------------------------------

def test_a_step_passes_after_its_windows_then_the_last_step_promotes() -> None:
    state = started(steps=(0.1, 0.5), windows=2)
    d = rollout.decide(state, 1, PASS, 1010)
    assert (d.kind, d.state.passed_windows, d.state.step) == ("hold", 1, 0)
    d = rollout.decide(d.state, 2, PASS, 1020)
    assert (d.kind, d.weight, d.state.step, d.state.passed_windows) == ("advance", 0.5, 1, 0)
    assert d.state.step_started_at == 1020
    d = rollout.decide(d.state, 3, PASS, 1030)
    assert d.kind == "hold"
    d = rollout.decide(d.state, 4, PASS, 1040)
    assert (d.kind, d.state) == ("promote", None)
    assert "promoted" in d.reason


def test_no_verdict_is_never_a_pass_and_halts_at_the_deadline() -> None:
    state = started(windows=1, deadline=60)
    d = rollout.decide(state, 1, NO_VERDICT, 1030)
    assert (d.kind, d.state.passed_windows) == ("hold", 0)
    assert "no verdict on min_requests" in d.reason
    d = rollout.decide(d.state, 2, (), 1050)  # no check at all is no verdict too
    assert d.kind == "hold"
    d = rollout.decide(d.state, 3, NO_VERDICT, 1061)
    assert d.kind == "halt" and d.state.status == "halted"
    assert "did not pass within 60 s" in d.reason and "not promoted" in d.reason
    # halted: nothing more is judged, even passing windows; it never promotes on its own
    after = rollout.decide(d.state, 4, PASS, 1070)
    assert after.kind == "hold" and after.state.status == "halted"


def test_a_candidate_with_no_traffic_halts_on_a_tick() -> None:
    state = started(deadline=60)
    assert rollout.tick(state, 1059).kind == "hold"
    d = rollout.tick(state, 1060)
    assert d.kind == "halt" and d.state.halted_reason == d.reason


def test_a_failed_window_holds_the_step_and_restarts_its_count() -> None:
    state = started(windows=2, failed=3)
    d = rollout.decide(state, 1, PASS, 1010)
    d = rollout.decide(d.state, 2, FAIL, 1020)
    assert (d.kind, d.state.failed_checks, d.state.passed_windows) == ("hold", 1, 0)
    assert "failed error_ratio (1 of 3 failed rounds)" in d.reason
    d = rollout.decide(d.state, 3, PASS, 1030)
    assert d.kind == "hold"  # one pass after the failure is not enough for this step
    d = rollout.decide(d.state, 4, PASS, 1040)
    assert d.kind == "advance" and d.state.failed_checks == 1  # failures count over the rollout


def test_max_failed_checks_rolls_back() -> None:
    state = started(failed=2)
    d = rollout.decide(state, 1, FAIL, 1010)
    assert d.kind == "hold"
    d = rollout.decide(d.state, 2, FAIL, 1020)
    assert (d.kind, d.state) == ("roll_back", None)
    assert "2 of 2 failed rounds" in d.reason


def test_a_window_is_judged_once() -> None:
    d = rollout.decide(started(windows=2), 5, PASS, 1010)
    again = rollout.decide(d.state, 5, PASS, 1011)
    assert again.kind == "hold" and again.state.passed_windows == 1
    older = rollout.decide(d.state, 4, PASS, 1011)
    assert older.state.passed_windows == 1


def test_pause_stops_judging_and_resume_restarts_the_deadline() -> None:
    state = rollout.pause(started(deadline=60))
    assert rollout.decide(state, 1, PASS, 1010).state.passed_windows == 0
    assert rollout.tick(state, 5000).kind == "hold"  # a paused rollout does not time out
    with pytest.raises(PlanRefused, match="is paused, not running"):
        rollout.pause(state)
    resumed = rollout.resume(state, 5000)
    assert resumed.status == "running" and resumed.deadline == 5060
    with pytest.raises(PlanRefused, match="running already"):
        rollout.resume(resumed, 5001)
    halted = rollout.tick(resumed, 5060).state
    assert rollout.resume(halted, 6000).halted_reason is None


# --- saved with the aliases ------------------------------------------------------------------------

def test_the_state_survives_a_round_trip_through_json() -> None:
    d = rollout.decide(started(steps=(0.05, 0.25, 0.5), windows=1), 1, PASS, 1010)
    d = rollout.decide(d.state, 2, FAIL, 1020)
    doc = json.loads(json.dumps(d.state.to_dict()))
    assert rollout.RolloutState.from_dict(doc, "m/aliases.json") == d.state


@pytest.mark.parametrize("damage", [
    lambda doc: doc.pop("plan"),
    lambda doc: doc.update(step=7),
    lambda doc: doc.update(status="dancing"),
    lambda doc: doc["plan"].update(steps=[0.5, 0.1]),
    lambda doc: doc.update(last_checks=[{"name": "x", "outcome": "maybe"}]),
    lambda doc: doc.update(started_at="soon"),
])
def test_a_damaged_state_is_refused_naming_the_file(damage) -> None:
    doc = json.loads(json.dumps(started().to_dict()))
    damage(doc)
    with pytest.raises(ValueError, match="m/aliases.json: the rollout is malformed"):
        rollout.RolloutState.from_dict(doc, "m/aliases.json")


@pytest.mark.parametrize("status", ["running", "paused", "halted"])
def test_a_rollback_rule_rolls_the_candidate_back_whatever_the_rollouts_status(status) -> None:
    from dataclasses import replace

    from vigil.core.rollout import guard, make_plan, start

    state = replace(start("2", make_plan((0.1, 0.5)), now=0.0), status=status)
    decision = guard(state, "rule canary-errors fired")
    assert (decision.kind, decision.state, decision.reason) == (
        "roll_back", None, "rule canary-errors fired")
