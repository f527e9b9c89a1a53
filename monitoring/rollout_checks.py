"""A rollout's checks as pure functions: one candidate window against production's figures over
the same time, each check named, bounded and recorded (vigil.core.rollout turns them into a
decision).

Every comparison is relative to production in the same span, never to a fixed number alone: a
slow machine or a hard day of traffic slows and fails both sides alike. A check that cannot say
(too few requests on either side, no profile, nothing compared) gives no verdict, which is never
a pass. A check whose evidence cannot exist here (no labels for quality, agreement switched off)
is left out rather than counted as silent.
"""

from __future__ import annotations

from dataclasses import dataclass

from monitoring.rollout_settings import RolloutCheckSettings
from monitoring.window import ClosedWindow
from vigil.core.rollout import CheckResult, Outcome

CHECKS = ("min_requests", "error_ratio", "latency_p99", "agreement", "prediction_drift",
          "quality")
LATENCY_FLOOR_S = 0.001  # production p99 below this is taken as this (ratios of microseconds)


@dataclass(frozen=True)
class WindowFigures:
    """What a rollout check reads of one version's window."""

    window: int
    requests: int
    error_ratio: float
    p99_s: float | None
    agreeing_rows: int = 0
    compared_rows: int = 0
    prediction_drift: bool | None = None  # None: no profile or the window was not evaluated
    quality: float | None = None  # None: no labels joined for this window

    @classmethod
    def of(cls, window: ClosedWindow, quality: float | None = None) -> WindowFigures:
        drift = window.result.drift.prediction_drift if window.result is not None else None
        return cls(window.index, window.requests, window.latency.error_ratio, window.latency.p99,
                   window.agreeing_rows, window.compared_rows, drift, quality)


def judge(candidate: WindowFigures, production: WindowFigures | None,
          settings: RolloutCheckSettings) -> tuple[CheckResult, ...]:
    """Every check of one candidate window, in CHECKS order (those that apply)."""
    enough = settings.min_requests
    if candidate.requests < enough:
        return (CheckResult("min_requests", "no_verdict", candidate.requests, enough,
                            f"the candidate served {candidate.requests} requests, fewer than "
                            f"{enough}"),)
    if production is None or production.requests < enough:
        served = 0 if production is None else production.requests
        return (CheckResult("min_requests", "no_verdict", served, enough,
                            f"production served {served} requests over the same span, fewer "
                            f"than {enough}"),)
    results = [CheckResult("min_requests", "pass", candidate.requests, enough),
               _error_ratio(candidate, production, settings),
               _latency(candidate, production, settings)]
    if settings.min_agreement is not None:
        results.append(_agreement(candidate, settings.min_agreement, settings.min_agreement_rows))
    if settings.prediction_drift:
        results.append(_prediction_drift(candidate))
    if candidate.quality is not None:
        results.append(_quality(candidate, production, settings.max_quality_drop))
    return tuple(results)


def _error_ratio(candidate: WindowFigures, production: WindowFigures,
                 settings: RolloutCheckSettings) -> CheckResult:
    increase = candidate.error_ratio - production.error_ratio
    outcome: Outcome = "pass" if increase <= settings.max_error_ratio_increase else "fail"
    return CheckResult("error_ratio", outcome, increase, settings.max_error_ratio_increase,
                       f"server errors {candidate.error_ratio:.4f} against production's "
                       f"{production.error_ratio:.4f}")


def _latency(candidate: WindowFigures, production: WindowFigures,
             settings: RolloutCheckSettings) -> CheckResult:
    if candidate.p99_s is None or production.p99_s is None:
        return CheckResult("latency_p99", "no_verdict", None, settings.max_p99_ratio,
                           "no timed request on one side")
    ratio = candidate.p99_s / max(production.p99_s, LATENCY_FLOOR_S)
    outcome: Outcome = "pass" if ratio <= settings.max_p99_ratio else "fail"
    return CheckResult("latency_p99", outcome, ratio, settings.max_p99_ratio,
                       f"p99 {candidate.p99_s * 1000:.2f} ms against production's "
                       f"{production.p99_s * 1000:.2f} ms")


def _agreement(candidate: WindowFigures, least: float, rows: int) -> CheckResult:
    if candidate.compared_rows < rows:
        return CheckResult("agreement", "no_verdict", candidate.compared_rows, rows,
                           f"{candidate.compared_rows} rows compared with production, fewer "
                           f"than {rows}")
    share = candidate.agreeing_rows / candidate.compared_rows
    return CheckResult("agreement", "pass" if share >= least else "fail", share, least,
                       f"{candidate.agreeing_rows} of {candidate.compared_rows} rows answered "
                       "as production does")


def _prediction_drift(candidate: WindowFigures) -> CheckResult:
    if candidate.prediction_drift is None:
        return CheckResult("prediction_drift", "no_verdict", None, None,
                           "the window was not evaluated against a profile")
    drifted = candidate.prediction_drift
    return CheckResult("prediction_drift", "fail" if drifted else "pass", float(drifted), 0.0,
                       "predictions drift from the version's profile" if drifted
                       else "predictions as in the version's profile")


def _quality(candidate: WindowFigures, production: WindowFigures, most: float) -> CheckResult:
    assert candidate.quality is not None
    if production.quality is None:
        return CheckResult("quality", "no_verdict", candidate.quality, most,
                           "no labels joined for production over the same span")
    drop = production.quality - candidate.quality
    return CheckResult("quality", "pass" if drop <= most else "fail", drop, most,
                       f"quality {candidate.quality:.4f} against production's "
                       f"{production.quality:.4f}")
