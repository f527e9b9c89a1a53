"""A rollout's checks (monitoring.rollout_checks): each check against production over the same
span, each bound on both sides of its edge, and every way a window gives no verdict."""

from __future__ import annotations

import dataclasses

import pytest

from monitoring.rollout_checks import WindowFigures, judge
from monitoring.rollout_settings import RolloutCheckSettings
from tests.unit.monitoring.helpers import drift_of, latency_of, window_of

SETTINGS = RolloutCheckSettings(min_agreement=0.95)
PROD = WindowFigures(window=7, requests=500, error_ratio=0.002, p99_s=0.010,
                     prediction_drift=False, quality=0.95)
GOOD = WindowFigures(window=3, requests=100, error_ratio=0.002, p99_s=0.011, agreeing_rows=98,
                     compared_rows=100, prediction_drift=False)


def outcomes(checks) -> dict[str, str]:
    return {c.name: c.outcome for c in checks}


def test_a_candidate_like_production_passes_every_check() -> None:
    assert outcomes(judge(GOOD, PROD, SETTINGS)) == {
        "min_requests": "pass", "error_ratio": "pass", "latency_p99": "pass",
        "agreement": "pass", "prediction_drift": "pass"}  # no labels: quality left out


@pytest.mark.parametrize("change, check", [
    ({"error_ratio": 0.013}, "error_ratio"),        # +0.011 over production's 0.002
    ({"p99_s": 0.0126}, "latency_p99"),              # 1.26 x production's p99
    ({"agreeing_rows": 94}, "agreement"),            # 0.94 < 0.95
    ({"prediction_drift": True}, "prediction_drift"),
    ({"quality": 0.92}, "quality"),                  # 0.03 below production's 0.95
])
def test_each_check_fails_just_past_its_bound(change, check) -> None:
    checks = outcomes(judge(dataclasses.replace(GOOD, **change), PROD, SETTINGS))
    assert checks[check] == "fail"
    assert [name for name, outcome in checks.items() if outcome == "fail"] == [check]


@pytest.mark.parametrize("change, check", [
    ({"error_ratio": 0.012}, "error_ratio"),
    ({"p99_s": 0.0125}, "latency_p99"),
    ({"agreeing_rows": 95}, "agreement"),
    ({"quality": 0.93}, "quality"),
])
def test_each_check_passes_at_its_bound(change, check) -> None:
    assert outcomes(judge(dataclasses.replace(GOOD, **change), PROD, SETTINGS))[check] == "pass"


def test_too_few_requests_on_either_side_is_no_verdict_and_nothing_else_is_judged() -> None:
    few = judge(dataclasses.replace(GOOD, requests=49, error_ratio=1.0), PROD, SETTINGS)
    assert [(c.name, c.outcome) for c in few] == [("min_requests", "no_verdict")]
    assert "the candidate served 49 requests, fewer than 50" in few[0].detail
    quiet_prod = judge(GOOD, dataclasses.replace(PROD, requests=10), SETTINGS)
    assert outcomes(quiet_prod) == {"min_requests": "no_verdict"}
    assert outcomes(judge(GOOD, None, SETTINGS)) == {"min_requests": "no_verdict"}


def test_checks_without_their_evidence_give_no_verdict() -> None:
    bare = dataclasses.replace(GOOD, compared_rows=5, agreeing_rows=5, prediction_drift=None,
                               p99_s=None, quality=0.9)
    checks = outcomes(judge(bare, dataclasses.replace(PROD, quality=None), SETTINGS))
    assert checks == {"min_requests": "pass", "error_ratio": "pass", "latency_p99": "no_verdict",
                      "agreement": "no_verdict", "prediction_drift": "no_verdict",
                      "quality": "no_verdict"}


def test_checks_switched_off_are_left_out() -> None:
    assert RolloutCheckSettings().min_agreement is None  # off until replicas feed it
    settings = RolloutCheckSettings(min_agreement=None, prediction_drift=False)
    assert set(outcomes(judge(GOOD, PROD, settings))) == {"min_requests", "error_ratio",
                                                           "latency_p99"}


def test_a_microsecond_production_p99_is_compared_from_a_floor() -> None:
    fast = dataclasses.replace(PROD, p99_s=0.00001)
    check = {c.name: c for c in judge(dataclasses.replace(GOOD, p99_s=0.0012), fast, SETTINGS)}
    assert check["latency_p99"].outcome == "pass"  # 1.2 ms against the 1 ms floor
    assert check["latency_p99"].observed == pytest.approx(1.2)


def test_figures_read_from_a_closed_window() -> None:
    window = window_of(index=4, latency=latency_of(count=120, p99=0.02, error_ratio=0.05),
                       outputs=[drift_of("label", 0.001, drifted=True, role="output")])
    figures = WindowFigures.of(window, quality=0.8)
    assert figures == WindowFigures(window=4, requests=120, error_ratio=0.05, p99_s=0.02,
                                    prediction_drift=True, quality=0.8)
    assert WindowFigures.of(window_of(evaluated=False)).prediction_drift is None


def test_settings_are_bounded_and_strict() -> None:
    with pytest.raises(ValueError):
        RolloutCheckSettings(max_p99_ratio=0.5)
    with pytest.raises(ValueError):
        RolloutCheckSettings(min_requests=0)
    with pytest.raises(ValueError):
        RolloutCheckSettings(unknown=1)
