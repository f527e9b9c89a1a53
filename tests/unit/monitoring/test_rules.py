"""Alert rules: verdicts per condition on hand-built windows, the state machine, most drifted."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from monitoring.alert_settings import AlertRule
from monitoring.profile import build_profile
from monitoring.rules import (
    AlertState,
    Crossed,
    Verdict,
    advance,
    judge,
    judge_silence,
    most_drifted,
)
from monitoring.settings import MonitorSettings
from monitoring.window import TumblingWindow
from tests.unit.monitoring.helpers import drift_of, latency_of, quality_of_column, window_of

BREACH, HEALTHY, NONE = Verdict(True, "b"), Verdict(False, "h"), Verdict(None, "n")


def _rule(when: dict, **kw) -> AlertRule:
    return AlertRule(name="r", when=when, **kw)


# ---------------------------------------------------------------- drift conditions

X = drift_of("x", 0.01, drifted=True)  # ks p = 0.01 <= 0.05
Y = drift_of("y", 0.5)
Z = drift_of("z", 0.02, method="wasserstein", threshold=0.1)
EMPTY = drift_of("w", None, method=None, threshold=None, status="empty_window")
FAILED = drift_of("f", None, method=None, threshold=None, status="failed")
Y_DRIFTED = drift_of("y", 0.001, drifted=True)


def test_dataset_drift_follows_the_windows_verdict() -> None:
    rule = _rule({"dataset_drift": True})
    breached = judge(rule, window_of(index=4, features=[X, Y_DRIFTED, Z, EMPTY]))
    assert breached == Verdict(True, "2 of 3 features drifted (share 0.667, threshold 0.5)",
                               (Crossed("share_drifted", 2 / 3, 0.5),), window=4)
    healthy = judge(rule, window_of(features=[X, Y, Z, EMPTY]))
    assert (healthy.breached, healthy.crossed) == (False, ())
    assert healthy.detail == "1 of 3 features drifted (share 0.333, threshold 0.5)"
    exactly = judge(rule, window_of(features=[X, Y]))  # 1 of 2 = the share: drift
    assert exactly.breached is True and exactly.crossed == (Crossed("share_drifted", 0.5, 0.5),)


def test_drift_share_at_least_uses_its_own_threshold() -> None:
    window = window_of(features=[X, Y, Z])  # 1 of 3
    breached = judge(_rule({"drift_share_at_least": 0.3}), window)
    assert breached.breached is True
    assert breached.crossed == (Crossed("share_drifted", 1 / 3, 0.3),)
    healthy = judge(_rule({"drift_share_at_least": 0.34}), window)
    assert (healthy.breached, healthy.crossed) == (False, ())
    assert judge(_rule({"drift_share_at_least": 1 / 3}), window).breached is True


def test_features_drifted_looks_at_the_named_features_only() -> None:
    window = window_of(features=[X, Y, Z, EMPTY, FAILED])
    breached = judge(_rule({"features_drifted": ["x", "w", "nope"]}), window)
    assert breached.breached is True and breached.detail == "drifted: x"
    assert breached.crossed == (Crossed("drift_score", 0.01, 0.05, "x", "ks"),)
    healthy = judge(_rule({"features_drifted": ["y", "z"]}), window)
    assert (healthy.breached, healthy.detail, healthy.crossed) == (False, "none of them drifted", ())
    none = judge(_rule({"features_drifted": ["w", "f", "nope"]}), window)
    assert (none.breached, none.detail) == (None, "none of the named features was tested in "
                                            "this window")


def test_prediction_drift_looks_at_the_outputs() -> None:
    rule = _rule({"prediction_drift": True})
    p = drift_of("p", 0.001, method="chisquare", drifted=True, role="output")
    q = drift_of("q", 0.9, method="chisquare", role="output")
    breached = judge(rule, window_of(features=[Y], outputs=[p, q]))
    assert (breached.breached, breached.detail) == (True, "1 of the outputs drifted")
    assert breached.crossed == (Crossed("drift_score", 0.001, 0.05, "p", "chisquare"),)
    healthy = judge(rule, window_of(features=[Y], outputs=[q]))
    assert (healthy.breached, healthy.crossed) == (False, ())
    # outputs are judged even when no feature could be tested
    assert judge(rule, window_of(features=[EMPTY], outputs=[p])).breached is True
    none = judge(rule, window_of(features=[X], outputs=[]))
    assert (none.breached, none.detail) == (None, "no model output was tested for drift")


def test_drift_conditions_give_no_verdict_without_statistics() -> None:
    for when in ({"dataset_drift": True}, {"drift_share_at_least": 0.1},
                 {"features_drifted": ["w"]}):
        none = judge(_rule(when), window_of(features=[EMPTY, FAILED]))
        assert (none.breached, none.detail) == (None, "no feature could be tested for drift")
    rule = _rule({"dataset_drift": True}, min_rows=100)
    few = judge(rule, window_of(index=3, rows=99, features=[X]))
    assert few == Verdict(None, "99 sampled rows, fewer than min_rows 100", window=3)
    assert judge(rule, window_of(rows=100, features=[X])).breached is True
    failed = judge(rule, window_of(evaluated=False, error="ValueError: boom"))
    assert (failed.breached, failed.detail) == (None, "no drift or quality statistics: "
                                                "ValueError: boom")
    unprofiled = judge(rule, window_of(evaluated=False))
    assert unprofiled.detail == "no drift or quality statistics: no reference profile"


# ---------------------------------------------------------------- quality conditions

QUALITY = [
    quality_of_column("n1", missing_ratio=0.2, out_of_range_share=0.3),
    quality_of_column("n2", missing_ratio=0.05),
    quality_of_column("c1", kind="categorical", unseen_share=0.4),
    quality_of_column("c2", kind="categorical", missing_ratio=0.9, unseen_share=0.9,
                      present=False),  # absent from the window: not judged
    quality_of_column("n3", missing_ratio=0.9, out_of_range_share=0.9, error="boom"),
]


def test_missing_ratio_above() -> None:
    window = window_of(quality=QUALITY)
    breached = judge(_rule({"missing_ratio_above": 0.1}), window)
    assert breached.breached is True
    assert breached.crossed == (Crossed("missing_ratio", 0.2, 0.1, "n1"),)
    assert breached.detail == "missing_ratio above 0.1 in 1 columns: n1"
    many = judge(_rule({"missing_ratio_above": 0.0}), window)
    assert [(c.column, c.value) for c in many.crossed] == [("n1", 0.2), ("n2", 0.05)]
    healthy = judge(_rule({"missing_ratio_above": 0.2}), window)  # above, not at
    assert (healthy.breached, healthy.crossed) == (False, ())
    assert healthy.detail == "missing_ratio at most 0.2 in all 3 columns"


def test_out_of_range_ratio_above_judges_numeric_columns() -> None:
    window = window_of(quality=QUALITY)
    breached = judge(_rule({"out_of_range_ratio_above": 0.25}), window)
    assert breached.crossed == (Crossed("out_of_range_share", 0.3, 0.25, "n1"),)
    healthy = judge(_rule({"out_of_range_ratio_above": 0.3}), window)
    assert (healthy.breached, healthy.detail) == (False, "out_of_range_share at most 0.3 in all 2 "
                                                  "columns")


def test_unseen_category_ratio_above_judges_categorical_columns() -> None:
    window = window_of(quality=QUALITY)
    breached = judge(_rule({"unseen_category_ratio_above": 0.1}), window)
    assert breached.crossed == (Crossed("unseen_share", 0.4, 0.1, "c1"),)
    assert judge(_rule({"unseen_category_ratio_above": 0.4}), window).breached is False
    numeric_only = window_of(quality=QUALITY[:2])
    none = judge(_rule({"unseen_category_ratio_above": 0.1}), numeric_only)
    assert (none.breached, none.detail) == (None, "no categorical column to judge")
    nothing = judge(_rule({"missing_ratio_above": 0.1}), window_of(quality=QUALITY[3:]))
    assert (nothing.breached, nothing.detail) == (None, "no numeric or categorical column to judge")


def test_quality_conditions_need_rows_and_statistics() -> None:
    rule = _rule({"missing_ratio_above": 0.1}, min_rows=50)
    assert judge(rule, window_of(rows=49, quality=QUALITY)).breached is None
    assert judge(rule, window_of(rows=50, quality=QUALITY)).breached is True
    assert judge(rule, window_of(evaluated=False)).breached is None


# ---------------------------------------------------------------- request conditions


def test_latency_p99_above() -> None:
    rule = _rule({"latency_p99_above_s": 0.5}, min_requests=10)
    breached = judge(rule, window_of(index=2, latency=latency_of(20, p99=0.8)))
    assert breached == Verdict(True, "p99 latency 0.8 above 0.5",
                               (Crossed("latency_p99_s", 0.8, 0.5),), window=2)
    healthy = judge(rule, window_of(latency=latency_of(20, p99=0.5)))
    assert (healthy.breached, healthy.detail, healthy.crossed) == \
        (False, "p99 latency 0.5 within 0.5", ())
    few = judge(rule, window_of(latency=latency_of(9, p99=9.0)))
    assert (few.breached, few.detail) == (None, "9 requests, fewer than min_requests 10")
    untimed = judge(rule, window_of(latency=latency_of(20, p99=None)))
    assert (untimed.breached, untimed.detail) == (None, "no request latency recorded")


def test_error_ratio_above() -> None:
    rule = _rule({"error_ratio_above": 0.1}, min_requests=10)
    breached = judge(rule, window_of(latency=latency_of(20, p99=0.1, error_ratio=0.15)))
    assert breached.crossed == (Crossed("error_ratio", 0.15, 0.1),)
    assert breached.detail == "error ratio 0.15 above 0.1"
    assert judge(rule, window_of(latency=latency_of(20, error_ratio=0.1))).breached is False
    assert judge(rule, window_of(latency=latency_of(5, error_ratio=1.0))).breached is None


def test_request_conditions_need_no_profile_and_ignore_min_rows() -> None:
    window = window_of(rows=0, evaluated=False, latency=latency_of(10, p99=2.0, error_ratio=0.5))
    assert judge(_rule({"latency_p99_above_s": 1.0}), window).breached is True
    assert judge(_rule({"error_ratio_above": 0.2}), window).breached is True


def test_shadow_agreement_below() -> None:
    rule = _rule({"shadow_agreement_below": 0.9}, min_rows=50)
    low = dataclasses.replace(window_of(index=4, evaluated=False), agreeing_rows=88,
                              compared_rows=100)
    assert judge(rule, low) == Verdict(
        True, "shadow agreement 0.88 (88 of 100 rows) below 0.9",
        (Crossed("shadow_agreement", 0.88, 0.9),), window=4)
    fine = dataclasses.replace(low, agreeing_rows=90)
    assert judge(rule, fine) == Verdict(
        False, "shadow agreement 0.9 (90 of 100 rows) at or above 0.9", window=4)
    few = dataclasses.replace(low, agreeing_rows=0, compared_rows=49)
    assert (judge(rule, few).breached, judge(rule, few).detail) == \
        (None, "49 rows compared with production, fewer than min_rows 50")
    none = window_of(index=5)  # production traffic only
    assert judge(rule, none).detail == "0 rows compared with production, fewer than min_rows 50"


def test_a_real_window_is_judged() -> None:
    """Four rows through TumblingWindow: x far out of its reference, one unseen category in c,
    one missing output y; requests 200, 200, 500, 404 taking 0.1..0.4 s."""
    reference = {"x": np.arange(20.0), "c": np.array(["a", "b"] * 10), "y": np.arange(20.0) % 3}
    profile = build_profile(reference, outputs=["y"])
    windows = TumblingWindow(profile, MonitorSettings(window={"rows": 4, "seconds": None}), 0.0)
    rows = {"x": np.array([100.0, 101, 102, 103]), "c": np.array(["a", "b", "a", "zz"]),
            "y": np.array([0.0, 1, 2, np.nan])}
    (window,) = windows.add(rows, 4, np.array([0.1, 0.2, 0.3, 0.4]),
                            np.array([200, 200, 500, 404]), now=1.0)

    def verdict(when: dict) -> Verdict:
        return judge(_rule(when, min_rows=4, min_requests=4), window)

    assert verdict({"dataset_drift": True}).crossed == (Crossed("share_drifted", 1.0, 0.5),)
    assert verdict({"prediction_drift": True}).breached is False
    assert verdict({"out_of_range_ratio_above": 0.5}).crossed == \
        (Crossed("out_of_range_share", 1.0, 0.5, "x"),)
    assert verdict({"unseen_category_ratio_above": 0.2}).crossed == \
        (Crossed("unseen_share", 0.25, 0.2, "c"),)
    assert verdict({"missing_ratio_above": 0.2}).crossed == (Crossed("missing_ratio", 0.25, 0.2, "y"),)
    assert verdict({"error_ratio_above": 0.2}).crossed == (Crossed("error_ratio", 0.25, 0.2),)
    p99 = verdict({"latency_p99_above_s": 0.39}).crossed[0]
    assert p99.value == pytest.approx(0.397) and p99.threshold == 0.39
    assert judge(_rule({"dataset_drift": True}, min_rows=5), window).breached is None


def test_silence_rules_are_not_judged_per_window() -> None:
    rule = _rule({"no_traffic_for_s": 60})
    with pytest.raises(ValueError, match="judge_silence"):
        judge(rule, window_of())
    assert judge_silence(rule, 59.4) == Verdict(False, "last request 59 s ago")
    assert judge_silence(rule, 60.0) == Verdict(True, "no request for 60 s",
                                                (Crossed("silent_s", 60.0, 60.0),))
    assert judge_silence(rule, 3600.0).crossed[0].value == 3600.0


def test_verdict_and_state_as_dicts() -> None:
    verdict = Verdict(True, "why", (Crossed("error_ratio", 0.5, 0.1),), window=3)
    assert verdict.to_dict() == {
        "window": 3, "breached": True, "detail": "why",
        "crossed": [{"statistic": "error_ratio", "value": 0.5, "threshold": 0.1,
                     "column": None, "method": None}],
    }
    state = AlertState(firing=True, since=5.0, last_fired_at=5.0, last_event_id="e", breaching=2)
    assert AlertState.from_dict({**state.to_dict(), "from_a_newer_vigil": 1}) == state


# ---------------------------------------------------------------- the state machine


def _run(rule: AlertRule, verdicts, start: AlertState | None = None, times=None):
    """Feed verdicts one per second (or at `times`); the transitions and the final state."""
    state, transitions = start or AlertState(), []
    for i, verdict in enumerate(verdicts):
        state, transition = advance(rule, state, verdict, float(i if times is None else times[i]))
        transitions.append(transition)
    return transitions, state


def test_for_windows_fires_on_the_third_consecutive_breach_only() -> None:
    rule = _rule({"dataset_drift": True}, for_windows=3)
    transitions, state = _run(rule, [BREACH, BREACH, BREACH, BREACH])
    assert transitions == [None, None, "fire", None]
    assert (state.firing, state.since, state.last_fired_at, state.breaching) == (True, 2.0, 2.0, 4)


def test_a_none_verdict_neither_resets_nor_advances() -> None:
    rule = _rule({"dataset_drift": True}, for_windows=3)
    transitions, state = _run(rule, [BREACH, NONE, BREACH, NONE, NONE, BREACH])
    assert transitions == [None, None, None, None, None, "fire"]
    before = AlertState(breaching=2, healthy=0)
    assert advance(rule, before, NONE, 9.0) == (before, None)
    firing = AlertState(firing=True, since=1.0, last_fired_at=1.0, healthy=1)
    assert advance(_rule({"dataset_drift": True}, resolve_windows=2), firing, NONE, 9.0) == \
        (firing, None)


def test_a_healthy_verdict_resets_the_breach_streak() -> None:
    rule = _rule({"dataset_drift": True}, for_windows=3)
    transitions, state = _run(rule, [BREACH, BREACH, HEALTHY, BREACH, BREACH])
    assert transitions == [None] * 5
    assert (state.firing, state.breaching, state.healthy) == (False, 2, 0)
    assert advance(rule, state, BREACH, 9.0)[1] == "fire"


def test_resolve_windows_and_at_most_one_firing() -> None:
    rule = _rule({"dataset_drift": True}, resolve_windows=2)
    transitions, state = _run(
        rule, [BREACH, BREACH, BREACH, HEALTHY, BREACH, HEALTHY, NONE, HEALTHY, HEALTHY]
    )
    # one firing however many breaches; a breach resets the healthy streak; the second
    # consecutive healthy verdict (the none one between does not count) resolves
    assert transitions == [None if i not in (0, 7) else ("fire" if i == 0 else "resolve")
                           for i in range(9)]
    assert (state.firing, state.since, state.last_fired_at, state.healthy) == \
        (False, None, 0.0, 3)


def test_cooldown_holds_a_breach_back_until_it_has_passed() -> None:
    rule = _rule({"dataset_drift": True}, cooldown_s=100.0)
    times = [0.0, 10.0, 50.0, 99.9, 100.0]
    transitions, state = _run(rule, [BREACH, HEALTHY, BREACH, BREACH, BREACH], times=times)
    assert transitions == ["fire", "resolve", None, None, "fire"]
    assert (state.since, state.last_fired_at) == (100.0, 100.0)
    # resolved within the cooldown, the next breach after it fires at once
    late, transition = advance(rule, AlertState(last_fired_at=0.0, breaching=0), BREACH, 250.0)
    assert transition == "fire" and late.last_fired_at == 250.0


def test_cooldown_with_for_windows() -> None:
    rule = _rule({"dataset_drift": True}, for_windows=2, cooldown_s=60.0)
    resolved = AlertState(last_fired_at=0.0)
    transitions, state = _run(rule, [BREACH, BREACH, BREACH], start=resolved,
                              times=[30.0, 40.0, 61.0])
    assert transitions == [None, None, "fire"]  # two breaches inside the cooldown, then past it
    assert state.breaching == 3


# ---------------------------------------------------------------- most drifted


def test_most_drifted_orders_p_values_and_distances_by_how_far_past_their_threshold() -> None:
    features = [
        drift_of("ks_5x", 0.01, drifted=True),  # 0.05 / 0.01 = 5
        drift_of("wass_3x", 0.3, method="wasserstein", threshold=0.1, drifted=True),  # 3
        drift_of("chi_zero", 0.0, method="chisquare", drifted=True),  # 0.05 / 1e-300
        drift_of("js_half", 0.05, method="jensenshannon", threshold=0.1),  # 0.5
        drift_of("z_tenth", 0.5, method="z"),  # 0.1
        drift_of("psi_9x", 0.9, method="psi", threshold=0.1, drifted=True),  # 9
        EMPTY,  # not tested: left out
    ]
    window = window_of(features=features)
    top = most_drifted(window)
    assert [f["name"] for f in top] == ["chi_zero", "psi_9x", "ks_5x", "wass_3x", "js_half"]
    assert top[1] == {"name": "psi_9x", "method": "psi", "score": 0.9, "threshold": 0.1,
                      "drifted": True}
    assert [f["name"] for f in most_drifted(window, limit=2)] == ["chi_zero", "psi_9x"]
    assert most_drifted(window, limit=10)[-1]["name"] == "z_tenth"
    assert most_drifted(window_of(evaluated=False)) == []
