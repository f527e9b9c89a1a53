"""Alert rules as pure functions: a verdict on one closed window, and the alert's state machine.

A verdict is breached (True), healthy (False) or none (None: the window cannot say, e.g. fewer
sampled rows than ``min_rows`` for a drift condition, no profile, no request for a latency one,
fewer compared rows than ``min_rows`` for a shadow agreement one).
A none verdict leaves the counts as they were: it neither brings an alert closer to firing nor
to resolving.

The state machine of one (model, version, rule): ``for_windows`` consecutive breaching windows
fire it, unless it fired less than ``cooldown_s`` ago (then the first breaching window after the
cooldown fires it); while firing, ``resolve_windows`` consecutive healthy windows resolve it. At
most one alert fires per (model, version, rule) at a time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from monitoring.alert_settings import LOWER_IS_BETTER, AlertRule
from monitoring.drift import ColumnDrift
from monitoring.window import ClosedWindow

Transition = Literal["fire", "resolve"]
P_VALUE_METHODS = ("ks", "chisquare", "z")
TOP_FEATURES = 5  # most drifted features an event names


@dataclass(frozen=True)
class Crossed:
    """One statistic a verdict rests on, with the threshold it was compared with."""

    statistic: str  # share_drifted, drift_score, missing_ratio, latency_p99_s, error_ratio, ...
    value: float
    threshold: float
    column: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class Verdict:
    breached: bool | None  # None: this window gives no verdict
    detail: str  # why, in words
    crossed: tuple[Crossed, ...] = ()  # breached: the statistics over their thresholds
    window: int | None = None  # the window's index (None for a silence verdict)

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window, "breached": self.breached, "detail": self.detail,
                "crossed": [dataclasses.asdict(c) for c in self.crossed]}


@dataclass(frozen=True)
class AlertState:
    """One (model, version, rule): firing or not, and the counts that lead to a change."""

    firing: bool = False
    since: float | None = None  # when the firing alert fired
    last_fired_at: float | None = None  # for the cooldown; kept after a resolution
    last_event_id: str | None = None
    breaching: int = 0  # consecutive breaching verdicts
    healthy: int = 0  # consecutive healthy verdicts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AlertState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def advance(
    rule: AlertRule, state: AlertState, verdict: Verdict, now: float
) -> tuple[AlertState, Transition | None]:
    """The state after one verdict, and whether the alert fires or resolves with it."""
    if verdict.breached is None:
        return state, None
    if verdict.breached:
        state = dataclasses.replace(state, breaching=state.breaching + 1, healthy=0)
        cooled = state.last_fired_at is None or now - state.last_fired_at >= rule.cooldown_s
        if not state.firing and state.breaching >= rule.for_windows and cooled:
            return dataclasses.replace(state, firing=True, since=now, last_fired_at=now), "fire"
        return state, None
    state = dataclasses.replace(state, healthy=state.healthy + 1, breaching=0)
    if state.firing and state.healthy >= rule.resolve_windows:
        return dataclasses.replace(state, firing=False, since=None), "resolve"
    return state, None


def judge(rule: AlertRule, window: ClosedWindow) -> Verdict:
    """The rule's verdict on one closed window (never for a silence rule: see judge_silence)."""
    family = rule.when.family
    if family == "traffic":
        raise ValueError("silence rules are judged by judge_silence, not per window")
    if family in ("labels", "estimated"):
        raise ValueError("label rules are judged by judge_labels, once a window settled, and "
                         "estimated ones by judge_estimated")
    if family == "requests":
        verdict = _judge_requests(rule, window)
    elif family == "shadow":
        verdict = _judge_shadow(rule, window)
    elif window.result is None:
        why = window.error or "no reference profile"
        verdict = Verdict(None, f"no drift or quality statistics: {why}")
    elif window.rows < rule.min_rows:
        verdict = Verdict(None, f"{window.rows} sampled rows, fewer than min_rows {rule.min_rows}")
    elif family == "drift":
        verdict = _judge_drift(rule, window)
    else:
        verdict = _judge_quality(rule, window)
    return dataclasses.replace(verdict, window=window.index)


def judge_silence(rule: AlertRule, silent_s: float) -> Verdict:
    """A silence rule's verdict after `silent_s` seconds without a request."""
    limit = float(rule.when.value)  # type: ignore[arg-type]
    crossed = (Crossed("silent_s", silent_s, limit),)
    if silent_s >= limit:
        return Verdict(True, f"no request for {silent_s:.0f} s", crossed)
    return Verdict(False, f"last request {silent_s:.0f} s ago")


def judge_labels(rule: AlertRule, window: ClosedWindow, quality: dict[str, Any]) -> Verdict:
    """A label rule's verdict on a settled window, from its quality doc
    (monitoring.label_join.LabelJoin.quality: labelled and served rows, coverage, metrics and the
    version's reference)."""
    when = rule.when
    if when.label_coverage_below is not None:
        served, labelled = quality["served_rows"], quality["labelled_rows"]
        if served < rule.min_rows:
            verdict = Verdict(None, f"{served} rows served, fewer than min_rows {rule.min_rows}")
        else:
            c = Crossed("label_coverage", labelled / served, when.label_coverage_below)
            breached = c.value < c.threshold
            verdict = Verdict(breached, f"label coverage {c.value:.4g} ({labelled} of {served} "
                              f"rows) {'below' if breached else 'at or above'} "
                              f"{c.threshold:.4g}", (c,) if breached else ())
        return dataclasses.replace(verdict, window=window.index)
    condition = when.quality_below or when.quality_drop
    assert condition is not None
    metric, labelled = condition.metric, quality["labelled_rows"]
    value = quality["metrics"].get(metric)
    if labelled < rule.min_rows:
        verdict = Verdict(None, f"{labelled} labelled rows, fewer than min_rows {rule.min_rows}")
    elif value is None:
        task = quality.get("task") or "unknown"
        verdict = Verdict(None, f"{metric} is not defined for this window ({task} task)")
    elif when.quality_below is not None:
        verdict = _worse(Crossed(metric, float(value), when.quality_below.value), metric)
    else:
        assert when.quality_drop is not None
        reference = quality["reference"].get(metric)
        if reference is None:
            verdict = Verdict(None, f"no reference {metric}: the model gate did not score this "
                              "version")
        else:
            drop = value - reference if metric in LOWER_IS_BETTER else reference - value
            c = Crossed(f"{metric}_drop", float(drop), when.quality_drop.by)
            breached = c.value >= c.threshold
            verdict = Verdict(breached, f"{metric} {value:.4g} against the reference "
                              f"{reference:.4g}: a drop of {drop:.4g}, "
                              f"{'at least' if breached else 'less than'} {c.threshold:.4g}",
                              (c,) if breached else ())
    return dataclasses.replace(verdict, window=window.index)


def judge_estimated(rule: AlertRule, window: ClosedWindow, estimated: dict[str, Any]) -> Verdict:
    """An estimated_quality_drop rule's verdict on a window, from its estimate
    (monitoring.label_join.LabelJoin.estimated: available, rows, metrics, reference)."""
    condition = rule.when.estimated_quality_drop
    assert condition is not None
    metric = condition.metric
    value, reference = estimated["metrics"].get(metric), estimated["reference"].get(metric)
    if not estimated["available"]:
        verdict = Verdict(None, f"no estimate: {estimated['reason']}")
    elif estimated["rows"] < rule.min_rows:
        verdict = Verdict(None, f"{estimated['rows']} rows estimated, fewer than min_rows "
                          f"{rule.min_rows}")
    elif value is None or reference is None:
        verdict = Verdict(None, f"estimated {metric} is not defined for this window or its "
                          "held-out set")
    else:
        c = Crossed(f"estimated_{metric}_drop", float(reference - value), condition.by)
        breached = c.value >= c.threshold
        verdict = Verdict(breached, f"estimated {metric} {value:.4g} against {reference:.4g} "
                          f"on the held-out set: a drop of {c.value:.4g}, "
                          f"{'at least' if breached else 'less than'} {c.threshold:.4g}",
                          (c,) if breached else ())
    return dataclasses.replace(verdict, window=window.index)


def _worse(c: Crossed, metric: str) -> Verdict:
    """Whether `c.value` is worse than `c.threshold` (higher is worse for error metrics)."""
    breached = c.value > c.threshold if metric in LOWER_IS_BETTER else c.value < c.threshold
    relation = "worse than" if breached else "no worse than"
    return Verdict(breached, f"{metric} {c.value:.4g} {relation} {c.threshold:.4g}",
                   (c,) if breached else ())


def _judge_requests(rule: AlertRule, window: ClosedWindow) -> Verdict:
    stats, when = window.latency, rule.when
    if stats.count < rule.min_requests:
        return Verdict(None, f"{stats.count} requests, fewer than min_requests {rule.min_requests}")
    if when.latency_p99_above_s is not None:
        if stats.p99 is None:
            return Verdict(None, "no request latency recorded")
        c = Crossed("latency_p99_s", stats.p99, when.latency_p99_above_s)
        return _compare(c, c.value > c.threshold, "p99 latency")
    assert when.error_ratio_above is not None
    c = Crossed("error_ratio", stats.error_ratio, when.error_ratio_above)
    return _compare(c, c.value > c.threshold, "error ratio")


def _judge_shadow(rule: AlertRule, window: ClosedWindow) -> Verdict:
    ratio, threshold = window.shadow_agreement, rule.when.shadow_agreement_below
    assert threshold is not None
    if ratio is None or window.compared_rows < rule.min_rows:
        return Verdict(None, f"{window.compared_rows} rows compared with production, fewer "
                       f"than min_rows {rule.min_rows}")
    c = Crossed("shadow_agreement", ratio, threshold)
    breached = ratio < threshold
    relation = "below" if breached else "at or above"
    return Verdict(breached, f"shadow agreement {ratio:.4g} ({window.agreeing_rows} of "
                   f"{window.compared_rows} rows) {relation} {threshold:.4g}",
                   (c,) if breached else ())


def _compare(crossed: Crossed, breached: bool, what: str) -> Verdict:
    relation = "above" if breached else "within"
    return Verdict(breached, f"{what} {crossed.value:.4g} {relation} {crossed.threshold:.4g}",
                   (crossed,) if breached else ())


def _judge_drift(rule: AlertRule, window: ClosedWindow) -> Verdict:
    assert window.result is not None
    drift, when = window.result.drift, rule.when
    if when.prediction_drift:
        if drift.prediction_drift is None:
            return Verdict(None, "no model output was tested for drift")
        drifted = tuple(_drift_crossed(c) for c in drift.outputs if c.drifted)
        return Verdict(drift.prediction_drift, f"{len(drifted)} of the outputs drifted", drifted)
    if drift.tested == 0:
        return Verdict(None, "no feature could be tested for drift")
    share = Crossed("share_drifted", drift.share_drifted,
                    drift.drift_share if when.dataset_drift else when.drift_share_at_least or 0.0)
    if when.features_drifted is not None:
        named = [c for c in drift.features if c.name in set(when.features_drifted)
                 and c.status != "failed" and c.score is not None]
        if not named:
            return Verdict(None, "none of the named features was tested in this window")
        drifted = tuple(_drift_crossed(c) for c in named if c.drifted)
        names = ", ".join(c.column or "" for c in drifted)
        return Verdict(bool(drifted), f"drifted: {names}" if drifted else "none of them drifted",
                       drifted)
    breached = drift.dataset_drift if when.dataset_drift else share.value >= share.threshold
    detail = (f"{drift.drifted} of {drift.tested} features drifted "
              f"(share {share.value:.3g}, threshold {share.threshold:.3g})")
    return Verdict(breached, detail, (share,) if breached else ())


def _drift_crossed(c: ColumnDrift) -> Crossed:
    return Crossed("drift_score", float(c.score or 0.0), float(c.threshold or 0.0), c.name, c.method)


_QUALITY = {  # condition -> (ColumnQuality field, the kinds of column it applies to)
    "missing_ratio_above": ("missing_ratio", ("numeric", "categorical")),
    "out_of_range_ratio_above": ("out_of_range_share", ("numeric",)),
    "unseen_category_ratio_above": ("unseen_share", ("categorical",)),
}


def _judge_quality(rule: AlertRule, window: ClosedWindow) -> Verdict:
    assert window.result is not None
    field, kinds = _QUALITY[rule.when.kind]
    threshold = float(rule.when.value)  # type: ignore[arg-type]
    columns = [c for c in window.result.quality.columns
               if c.present and c.error is None and c.kind in kinds]
    if not columns:
        return Verdict(None, f"no {' or '.join(kinds)} column to judge")
    crossed = tuple(
        Crossed(field, float(getattr(c, field)), threshold, c.name)
        for c in columns if getattr(c, field) > threshold
    )
    if crossed:
        names = ", ".join(c.column or "" for c in crossed[:5])
        return Verdict(True, f"{field} above {threshold:.4g} in {len(crossed)} columns: {names}",
                       crossed)
    return Verdict(False, f"{field} at most {threshold:.4g} in all {len(columns)} columns")


def most_drifted(window: ClosedWindow, limit: int = TOP_FEATURES) -> list[dict[str, Any]]:
    """The window's features, most drifted first: by how far past its threshold each score is
    (a p-value below it, a distance above it)."""
    if window.result is None:
        return []

    def severity(c: ColumnDrift) -> float:
        score, threshold = float(c.score or 0.0), float(c.threshold or 0.0)
        if c.method in P_VALUE_METHODS:
            return threshold / max(score, 1e-300)
        return score / threshold if threshold > 0 else score

    tested = [c for c in window.result.drift.features if c.score is not None]
    tested.sort(key=severity, reverse=True)
    return [
        {"name": c.name, "method": c.method, "score": c.score, "threshold": c.threshold,
         "drifted": c.drifted}
        for c in tested[:limit]
    ]
