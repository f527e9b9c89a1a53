"""A column whose statistics fail is "failed" with its reason; the window's other columns and its
quality are still evaluated. Real inputs that break a test (no stand-ins), pinned exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from monitoring.drift import compute_drift, evaluate_window
from monitoring.profile import build_profile
from monitoring.settings import MonitorSettings

F32_MAX = 3.4e38
F64_MAX = 1.7e308


def _f32_extremes() -> tuple[np.ndarray, np.ndarray]:
    """21 distinct float32 reference values in two clusters at the ends of float32's range (11
    near -3.4e38, 10 near +3.4e38); a window of 11: 3 near the bottom, 8 near the top."""
    ref = np.array([-F32_MAX * (1 - i / 1000) for i in range(11)]
                   + [F32_MAX * (1 - i / 1000) for i in range(10)], dtype=np.float32)
    cur = np.array([-3.39e38, -3.38e38, -3.37e38, 3.39e38, 3.38e38, 3.37e38, 3.36e38, 3.35e38,
                    3.395e38, 3.385e38, 3.375e38], dtype=np.float32)
    return ref, cur


def test_numpy_itself_cannot_bin_float32_values_near_the_limits() -> None:
    """Why the histogram edges fall back to float64: numpy (and so Evidently) computes them in
    float32, where max - min overflows to inf and the bin count becomes int(nan)."""
    ref, cur = _f32_extremes()
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="cannot convert float NaN"):
        np.histogram_bin_edges(np.concatenate([ref, cur]), "sturges")


@pytest.mark.parametrize("method", ["psi", "jensenshannon"])
def test_float32_values_near_the_limits_are_binned_in_float64(method: str) -> None:
    ref, cur = _f32_extremes()
    profile = build_profile({"x": ref, "y": np.arange(21.0)})
    settings = MonitorSettings(overrides={"x": {"method": method}})
    result = evaluate_window(profile, {"x": cur, "y": np.arange(11.0)}, settings)
    x = result.drift.column("x")
    assert (x.status, x.error, x.method, x.current_count) == ("tested", None, method, 11)
    # Only the end bins hold values: reference shares 11/21 and 10/21, window 3/11 and 8/11.
    p, q = np.array([11 / 21, 10 / 21]), np.array([3 / 11, 8 / 11])
    if method == "psi":  # the empty middle bins get 0.0001 on both sides: they add 0
        expected = float(np.sum((p - q) * np.log(p / q)))
        assert x.score == pytest.approx(0.27019951126983116, rel=1e-12)
    else:
        m = (p + q) / 2
        expected = math.sqrt((np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m))) / 2)
        assert x.score == pytest.approx(0.18253909602836432, rel=1e-12)
    assert x.score == pytest.approx(expected, rel=1e-12)
    assert x.drifted  # both above their 0.1 threshold
    assert result.quality.column("x").out_of_range == 0 and result.failed_columns == {}


SPAN_TOO_WIDE = ("ValueError: the values span more than float64 can hold (-1.7e+308 to "
                 "1.7e+308): no histogram bins")


@pytest.mark.parametrize("method", ["psi", "jensenshannon"])
def test_values_spanning_more_than_float64_fail_that_column_only(method: str) -> None:
    profile = build_profile({"x": np.arange(21.0), "y": np.arange(21.0)})
    window = {"x": np.array([-F64_MAX, F64_MAX, 0.0, 1.0, 2.0]), "y": np.arange(5.0) + 16}
    settings = MonitorSettings(overrides={"x": {"method": method}})
    result = evaluate_window(profile, window, settings)
    x, y = result.drift.features
    assert (x.status, x.error, x.score, x.p_value_adjusted, x.drifted) == (
        "failed", SPAN_TOO_WIDE, None, None, False
    )
    assert (x.method, x.threshold, x.reference_count, x.current_count) == (None, None, 21, 5)
    assert (y.status, y.method, y.error) == ("tested", "ks", None)
    assert y.score == stats.ks_2samp(np.arange(21.0), np.arange(5.0) + 16).pvalue
    assert y.score == pytest.approx(0.008148373365764667, rel=1e-12) and y.drifted
    drift = result.drift
    assert (drift.tested, drift.drifted, drift.share_drifted, drift.dataset_drift) == (
        1, 1, 1.0, True
    )  # the failed column is left out of the share, like the other untested statuses
    quality = result.quality.column("x")  # quality of the same column is still computed
    assert (quality.error, quality.present, quality.rows, quality.out_of_range) == (None, True, 5, 2)
    assert quality.out_of_range_share == 2 / 5
    assert result.failed_columns == {"x": SPAN_TOO_WIDE}


def test_a_wasserstein_group_that_overflows_is_split_to_find_the_column_at_fault() -> None:
    """x, y and n share reference and window sizes, so they are computed as one block; x's
    window overflows float64 (its sum), y and n get exactly what they get without x."""
    rng = np.random.default_rng(4)
    reference = {"x": np.arange(21.0), "y": rng.normal(size=21), "n": rng.normal(size=21)}
    window = {"x": np.array([F64_MAX, F64_MAX, F64_MAX, 1.0, 2.0]),
              "y": rng.normal(size=5) + 1, "n": rng.normal(size=5)}
    settings = MonitorSettings(overrides={k: {"method": "wasserstein"} for k in reference})
    result = compute_drift(build_profile(reference), window, settings)
    x, y, n = result.features
    assert (x.status, x.error, x.score) == (
        "failed", "FloatingPointError: overflow encountered in reduce", None
    )
    alone = compute_drift(
        build_profile({k: reference[k] for k in "yn"}), {k: window[k] for k in "yn"},
        MonitorSettings(overrides={k: {"method": "wasserstein"} for k in "yn"}),
    )
    assert [(c.status, c.score) for c in (y, n)] == [(c.status, c.score) for c in alone.features]
    for column in (y, n):
        ref, cur = reference[column.name], window[column.name]
        expected = stats.wasserstein_distance(ref, cur) / np.std(ref)
        assert column.score == pytest.approx(expected, rel=1e-12)
    assert (result.tested, result.drifted) == (2, sum(c.drifted for c in (y, n)))


def test_a_column_that_cannot_be_prepared_fails_in_drift_and_quality() -> None:
    """An object column holding an integer beyond float64 (numeric), one holding a list
    (categorical: unhashable): both fail; the window's other columns are evaluated."""
    profile = build_profile({"n": np.arange(21.0), "s": np.array(list("abc") * 7),
                             "y": np.arange(21.0)})
    huge = np.empty(5, dtype=object)
    huge[:] = [1, 2, 10**400, 3, 4]
    unhashable = np.empty(5, dtype=object)
    unhashable[:] = ["a", ["b"], "c", "a", "b"]
    result = evaluate_window(profile, {"n": huge, "s": unhashable, "y": np.arange(5.0)})
    reasons = {"n": "OverflowError: int too large to convert to float",
               "s": "TypeError: unhashable type: 'list'"}
    assert result.failed_columns == reasons
    for name, reason in reasons.items():
        drift, quality = result.drift.column(name), result.quality.column(name)
        assert (drift.status, drift.error, drift.score, drift.current_count) == (
            "failed", reason, None, 0
        )
        assert (quality.error, quality.present, quality.rows, quality.missing) == (
            reason, True, 5, 0
        )
    y = result.drift.column("y")
    assert (y.status, y.method, result.drift.tested) == ("tested", "ks", 1)
    assert result.quality.column("y").error is None and result.quality.violations == ()
