"""Drift of a window against a reference profile: Evidently's default tests over profile summaries.

Entry point: ``evaluate_window(profile, window, settings) -> WindowResult`` (drift and quality of
one window, a mapping of 1-D arrays by column name), or ``compute_drift`` for drift alone.

Test choice per column reproduces Evidently 0.7 (legacy/calculations/stattests/registry.py
``_get_default_stattest``), where n_values is the number of distinct non-missing values in the
reference and the window together and the reference size counts its finite values:

    reference <= 1000 rows  numeric: n_values > 5 -> ks, 3..5 -> chisquare, <= 2 -> z
                            categorical: n_values > 2 -> chisquare, else z
    reference  > 1000 rows  numeric: n_values > 5 -> wasserstein (normed), else jensenshannon
                            categorical: jensenshannon

Thresholds: 0.05 for the p-values of ks (drift when p <= t), chisquare and z (p < t); 0.1 for the
distances wasserstein, jensenshannon and psi (drift when d >= t). jensenshannon and psi bin as
Evidently does (by value when the reference has at most 20 distinct values, otherwise a Sturges
histogram over reference and window together). Before testing, NaN and +-inf are dropped from both
sides, as Evidently does.

Edge cases (Evidently raises on most; Vigil gives a defined result, never NaN):
- a column absent from the window, of the wrong dtype or shape: status "missing_column" /
  "wrong_dtype" / "wrong_shape"; an empty window or a column with no finite value in it:
  "empty_window"; a reference column with no finite value: "empty_reference". All of these have
  score None, drifted False, and are left out of the drifted share (share = drifted / tested).
  No column tested: share 0.0, dataset_drift False.
- a constant reference column is tested like any other (ks, z, chisquare all defined; the
  Wasserstein norm is max(std, 0.001) as in Evidently).
- a test with no degrees of freedom (chisquare over one category) gives p = 1.0 (Evidently: NaN,
  which is never "drifted" either).
- a column whose test raises or gives a non-finite score (values spanning more than float64 holds,
  a window column that could not be prepared, see monitoring.quality): status "failed", the reason
  in ``error``, score None, drifted False, left out of the drifted share like the statuses above.
  The other columns are tested as usual: one column never loses the window.

Multiple testing: with ``correction`` "bonferroni" or "benjamini-hochberg", the p-values of the
ks/chisquare/z tests in a window (features, and separately outputs) are adjusted before the
decision; ``score`` stays the raw p-value, ``p_value_adjusted`` holds the adjusted one. The default
is "none" because (1) it reproduces Evidently's per-column decisions, which operators compare with
Evidently's HTML reports of the same data; (2) the p-value tests only run for references of at most
1000 rows; (3) dataset drift is a share-of-columns rule (>= 50 % by default), not a family-wise test:
at alpha 0.05 the expected false share is 5 %, far below it. Per-column alerting on many features
should choose "benjamini-hochberg" (false discovery rate control, keeps power).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitoring.profile import ColumnProfile, Kind, Profile, Role
from monitoring.quality import (
    PreparedColumn,
    PreparedWindow,
    QualityResult,
    failure_reason,
    prepare_window,
    quality_of,
)
from monitoring.settings import Correction, DriftMethod, MonitorSettings
from monitoring.stattests import (
    adjust_p_values,
    binned_shares,
    chisquare_p_value,
    jensenshannon_distance,
    keyed_counts,
    ks_p_value,
    psi_value,
    wasserstein_all,
    z_p_value,
)

Status = Literal[
    "tested", "failed", "missing_column", "wrong_dtype", "wrong_shape", "empty_window",
    "empty_reference",
]
P_VALUE_METHODS = frozenset({"ks", "chisquare", "z"})
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.05, "chisquare": 0.05, "z": 0.05, "wasserstein": 0.1, "jensenshannon": 0.1, "psi": 0.1
}
NUMERIC_ONLY = frozenset({"ks", "wasserstein"})
SMALL_REFERENCE = 1000  # Evidently: references of at most this many rows get p-value tests


@dataclass(frozen=True)
class ColumnDrift:
    name: str
    role: Role
    kind: Kind
    status: Status
    method: DriftMethod | None  # None unless tested
    score: float | None  # p-value (ks, chisquare, z) or distance; None unless tested
    p_value_adjusted: float | None  # p-value methods only; equals score under correction "none"
    threshold: float | None
    drifted: bool
    reference_count: int  # finite / non-missing reference values
    current_count: int  # finite / non-missing window values
    approximate: bool  # computed from a quantile sketch of a large reference
    error: str | None = None  # status "failed": why the test could not be computed


@dataclass(frozen=True)
class DriftResult:
    features: tuple[ColumnDrift, ...]
    outputs: tuple[ColumnDrift, ...]
    tested: int  # features tested
    drifted: int  # features drifted
    share_drifted: float  # drifted / tested; 0.0 when none tested
    drift_share: float  # the threshold applied
    dataset_drift: bool  # tested > 0 and share_drifted >= drift_share
    prediction_drift: bool | None  # any output drifted; None when no output was tested
    correction: Correction

    def column(self, name: str) -> ColumnDrift:
        for c in (*self.features, *self.outputs):
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class WindowResult:
    rows: int
    drift: DriftResult
    quality: QualityResult

    @property
    def failed_columns(self) -> dict[str, str]:
        """Columns whose drift test or quality statistics failed, with the reason (the drift
        test's when both failed)."""
        failed = {c.name: c.error or "" for c in (*self.drift.features, *self.drift.outputs)
                  if c.status == "failed"}
        for c in self.quality.columns:
            if c.error is not None:
                failed.setdefault(c.name, c.error)
        return failed


def evaluate_window(
    profile: Profile, window: Mapping[str, Any], settings: MonitorSettings | None = None
) -> WindowResult:
    """Drift and data quality of one window (1-D arrays by column name) against the profile."""
    prepared = prepare_window(profile, window)
    return WindowResult(
        rows=prepared.rows,
        drift=drift_of(profile, prepared, settings),
        quality=quality_of(profile, prepared),
    )


def compute_drift(
    profile: Profile, window: Mapping[str, Any], settings: MonitorSettings | None = None
) -> DriftResult:
    return drift_of(profile, prepare_window(profile, window), settings)


def check_settings(profile: Profile, settings: MonitorSettings) -> None:
    """Raise ValueError when settings name unknown columns, disagree on types or misuse a test."""
    for name in (*settings.overrides, *settings.feature_types):
        if name not in profile:
            raise ValueError(f"settings name column {name!r}, which is not in the profile")
    for name, kind in settings.feature_types.items():
        if profile.column(name).kind != kind:
            raise ValueError(f"column {name!r} is {profile.column(name).kind} in the profile, "
                             f"{kind} in settings: rebuild the profile")
    for name, override in settings.overrides.items():
        if override.method in NUMERIC_ONLY and profile.column(name).kind != "numeric":
            raise ValueError(f"{override.method} needs a numeric column; {name!r} is categorical")


def drift_of(
    profile: Profile, window: PreparedWindow, settings: MonitorSettings | None = None
) -> DriftResult:
    """DriftResult from an already prepared window (see monitoring.quality.prepare_window)."""
    settings = settings or MonitorSettings()
    check_settings(profile, settings)
    plans: dict[str, tuple[DriftMethod, float] | Status] = {}
    failures: dict[str, str] = {}  # name -> why its test failed (one column, never the window)
    for col in profile.columns:
        cur = window.columns[col.name]
        try:
            plans[col.name] = _plan(col, cur, settings)
        except Exception as exc:  # noqa: BLE001 - this column fails, not the window
            plans[col.name], failures[col.name] = "failed", failure_reason(exc)
        if cur.error is not None:
            failures[col.name] = cur.error
    wasserstein = [c for c in profile.columns if _method(plans[c.name]) == "wasserstein"]
    scores, failed = wasserstein_all(profile, wasserstein, window)
    failures.update(failed)
    for col in profile.columns:
        method = _method(plans[col.name])
        if method is None or method == "wasserstein":
            continue
        try:
            scores[col.name] = _score(method, col, window.columns[col.name])
        except Exception as exc:  # noqa: BLE001 - this column fails, not the window
            failures[col.name] = failure_reason(exc)
    for name in failures:
        plans[name] = "failed"
    features = _decide(profile.features, plans, scores, failures, window, settings.correction)
    outputs = _decide(profile.outputs, plans, scores, failures, window, settings.correction)
    tested = sum(c.status == "tested" for c in features)
    drifted = sum(c.drifted for c in features)
    share = drifted / tested if tested else 0.0
    tested_outputs = [c for c in outputs if c.status == "tested"]
    return DriftResult(
        features=features,
        outputs=outputs,
        tested=tested,
        drifted=drifted,
        share_drifted=share,
        drift_share=settings.drift_share,
        dataset_drift=bool(tested) and share >= settings.drift_share,
        prediction_drift=any(c.drifted for c in tested_outputs) if tested_outputs else None,
        correction=settings.correction,
    )


def default_method(col: ColumnProfile, cur: PreparedColumn) -> DriftMethod:
    """Evidently's default test for this reference column and window column."""
    n_values = count_values(col, cur)
    if col.count <= SMALL_REFERENCE:
        if col.kind == "numeric" and n_values > 5:
            return "ks"
        return "chisquare" if n_values > 2 else "z"
    if col.kind == "numeric" and n_values > 5:
        return "wasserstein"
    return "jensenshannon"


def count_values(col: ColumnProfile, cur: PreparedColumn) -> int:
    """Distinct non-missing values in reference and window together (6 stands for 'more than 5')."""
    if col.n_unique > 5:
        return 6
    if col.kind == "categorical":
        return col.n_unique + len(cur.unseen_values)
    assert cur.values is not None and col.unique_values is not None
    return int(np.union1d(col.unique_values, cur.values).size)


# --- plumbing --------------------------------------------------------------------------------


def _plan(col: ColumnProfile, cur: PreparedColumn, settings: MonitorSettings):
    if cur.violation is not None:
        return cur.violation
    if cur.error is not None:
        return "failed"
    if col.count == 0:
        return "empty_reference"
    if cur.count == 0:
        return "empty_window"
    override = settings.overrides.get(col.name)
    method = (override.method if override else None) or default_method(col, cur)
    threshold = override.threshold if override and override.threshold is not None else None
    return method, DEFAULT_THRESHOLDS[method] if threshold is None else threshold


def _method(plan: Any) -> DriftMethod | None:
    return plan[0] if isinstance(plan, tuple) else None


def _score(method: DriftMethod, col: ColumnProfile, cur: PreparedColumn) -> tuple[float, bool]:
    score, approximate = _raw_score(method, col, cur)
    if not math.isfinite(score):
        raise ArithmeticError(f"{method} gave a non-finite score ({score})")
    return score, approximate


def _raw_score(method: DriftMethod, col: ColumnProfile, cur: PreparedColumn) -> tuple[float, bool]:
    if method == "ks":
        assert col.values is not None and cur.values is not None
        return ks_p_value(col.values, cur.values, col.exact, col.count), not col.exact
    if method in ("jensenshannon", "psi"):
        ref, cur_share, approximate = binned_shares(col, cur)
        fn = jensenshannon_distance if method == "jensenshannon" else psi_value
        return fn(ref, cur_share), approximate
    ref_counts, cur_counts, first, approximate = keyed_counts(col, cur)
    if method == "chisquare":
        return chisquare_p_value(ref_counts, cur_counts), approximate
    return z_p_value(ref_counts, cur_counts, first), approximate


def _decide(cols, plans, scores, failures, window: PreparedWindow, correction: Correction):
    p_names = [c.name for c in cols if _method(plans[c.name]) in P_VALUE_METHODS]
    adjusted = dict(
        zip(p_names, adjust_p_values(np.array([scores[n][0] for n in p_names]), correction).tolist(),
            strict=True)
    )
    out = []
    for col in cols:
        cur = window.columns[col.name]
        plan = plans[col.name]
        usable = cur.violation is None and cur.error is None
        common = {"name": col.name, "role": col.role, "kind": col.kind,
                  "reference_count": col.count, "current_count": cur.count if usable else 0}
        if not isinstance(plan, tuple):
            out.append(ColumnDrift(**common, status=plan, method=None, score=None,
                                   p_value_adjusted=None, threshold=None, drifted=False,
                                   approximate=False, error=failures.get(col.name)))
            continue
        method, threshold = plan
        score, approximate = scores[col.name]
        p_adj = adjusted.get(col.name)
        if method == "ks":
            drifted = p_adj <= threshold
        elif method in P_VALUE_METHODS:
            drifted = p_adj < threshold
        else:
            drifted = score >= threshold
        out.append(ColumnDrift(**common, status="tested", method=method, score=score,
                               p_value_adjusted=p_adj, threshold=threshold, drifted=bool(drifted),
                               approximate=approximate))
    return tuple(out)
