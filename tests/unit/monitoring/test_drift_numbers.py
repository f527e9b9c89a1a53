"""Drift tests pinned on tiny hand-built inputs; corrections; the Wasserstein kernel and sketch bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from monitoring.drift import compute_drift
from monitoring.profile import build_profile
from monitoring.settings import MonitorSettings
from monitoring.stattests import adjust_p_values, sturges_edges


def one(method: str, reference, current, **override) -> tuple[float, bool]:
    """Score and verdict of `method` on one column (dtype decides numeric vs categorical)."""
    profile = build_profile({"v": np.asarray(reference)})
    settings = MonitorSettings(overrides={"v": {"method": method, **override}})
    column = compute_drift(profile, {"v": np.asarray(current)}, settings).features[0]
    assert column.status == "tested" and column.method == method
    return column.score, column.drifted


def test_ks_p_value() -> None:
    score, drifted = one("ks", [1.0, 2, 3, 4, 5, 6, 7, 8], [4.0, 5, 6, 7, 8, 9, 10, 11, 12])
    assert score == pytest.approx(0.24245166598107779, rel=1e-12)  # exact two-sided, D = 0.5
    assert not drifted


def test_wasserstein_normed() -> None:
    # |sorted differences| = 1, 1, 1, 1, 2 -> W1 = 1.2; population std of 0..4 = sqrt(2)
    score, drifted = one("wasserstein", [0.0, 1, 2, 3, 4], [1.0, 2, 3, 4, 6])
    assert score == pytest.approx(1.2 / math.sqrt(2), rel=1e-12)
    assert drifted


def test_wasserstein_norm_floor_for_constant_reference() -> None:
    score, _ = one("wasserstein", [5.0] * 6, [5.0, 5.0, 5.5, 6.0])
    assert score == pytest.approx((0.5 + 1.0) / 4 / 0.001, rel=1e-12)  # std 0 -> norm 0.001


def test_chisquare_p_value() -> None:
    # counts a:2 b:3 c:1 vs a:1 b:1 c:3; expected x 5/6; statistic 6.8 with 2 dof: p = exp(-3.4)
    score, drifted = one("chisquare", list("aabbbc"), list("abccc"))
    assert score == pytest.approx(math.exp(-3.4), rel=1e-12)
    assert drifted


def test_z_p_value() -> None:
    # share of "not x": 5/8 vs 9/10, pooled 14/18
    score, drifted = one("z", list("xxxyyyyy"), list("xyyyyyyyyy"))
    pooled = 14 / 18
    z = (5 / 8 - 9 / 10) / math.sqrt(pooled * (1 - pooled) * (1 / 8 + 1 / 10))
    assert score == pytest.approx(2 * (1 - stats.norm.cdf(abs(z))), rel=1e-12)
    assert score == pytest.approx(0.16316530543754282, rel=1e-12)
    assert not drifted


def test_jensenshannon_distance() -> None:
    score, drifted = one("jensenshannon", list("aabc"), list("abbbd"))
    assert score == pytest.approx(0.4756983154499037, rel=1e-12)
    assert drifted


def test_psi_fills_empty_bins_like_evidently() -> None:
    score, drifted = one("psi", list("aabc"), list("abbbd"))
    ref = np.array([0.5, 0.25, 0.25, 0.0001])  # a b c d; empty bins -> 0.0001
    cur = np.array([0.2, 0.6, 0.0001, 0.2])
    assert score == pytest.approx(np.sum((ref - cur) * np.log(ref / cur)), rel=1e-12)
    assert score == pytest.approx(4.055950777411561, rel=1e-12)
    assert drifted


def test_threshold_override_changes_the_verdict() -> None:
    assert one("ks", [1.0, 2, 3, 4, 5, 6, 7, 8], [4.0, 5, 6, 7, 8, 9, 10, 11, 12], threshold=0.3)[1]


def test_benjamini_hochberg_on_known_p_values() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # sorted 0.005 0.01 0.03 0.04 0.5; x 5/rank: .025 .025 .05 .05 .5; running min from the top
    expected = np.array([0.025, 0.05, 0.05, 0.025, 0.5])
    np.testing.assert_allclose(adjust_p_values(p, "benjamini-hochberg"), expected, rtol=1e-12)
    np.testing.assert_allclose(adjust_p_values(p, "bonferroni"), [0.05, 0.2, 0.15, 0.025, 1.0])
    np.testing.assert_array_equal(adjust_p_values(p, "none"), p)
    assert adjust_p_values(np.array([]), "benjamini-hochberg").size == 0


def test_benjamini_hochberg_step_up_and_cap() -> None:
    """Ties keep one value; a larger p earlier in rank can lower a smaller one's; never above 1."""
    p = np.array([0.02, 0.02, 0.9, 0.03])
    # sorted .02 .02 .03 .9; x 4/rank: .08 .04 .04 .9; running min from the top: .04 .04 .04 .9
    np.testing.assert_allclose(
        adjust_p_values(p, "benjamini-hochberg"), [0.04, 0.04, 0.9, 0.04], rtol=1e-12
    )
    np.testing.assert_array_equal(adjust_p_values(np.array([1.0, 0.9]), "benjamini-hochberg"),
                                  [1.0, 1.0])
    np.testing.assert_array_equal(adjust_p_values(np.array([0.6, 0.5]), "bonferroni"), [1.0, 1.0])


def test_correction_removes_false_alarms_but_keeps_scores() -> None:
    """Ten unshifted features: two KS p-values fall below 0.05 by chance; corrections clear them."""
    rng = np.random.default_rng(7)
    reference = {f"f{i}": rng.normal(size=300) for i in range(10)}
    window = {f"f{i}": rng.normal(size=200) for i in range(10)}
    profile = build_profile(reference)
    plain = compute_drift(profile, window)
    assert [c.name for c in plain.features if c.drifted] == ["f0", "f9"]
    raw = np.array([c.score for c in plain.features])
    for correction in ("bonferroni", "benjamini-hochberg"):
        corrected = compute_drift(profile, window, MonitorSettings(correction=correction))
        assert [c.score for c in corrected.features] == raw.tolist()
        adjusted = adjust_p_values(raw, correction)
        assert [c.p_value_adjusted for c in corrected.features] == adjusted.tolist()
        assert not any(c.drifted for c in corrected.features)
        assert corrected.correction == correction


@pytest.mark.parametrize("seed", range(12))
def test_wasserstein_kernel_matches_scipy(seed: int) -> None:
    """Sizes either side of each other, ties, huge offsets, several columns per group."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 80)), int(rng.integers(1, 80))
    offset = [0.0, 1e6, -3.5][seed % 3]
    reference, window = {}, {}
    for i in range(4):
        if i % 2:
            ref, cur = rng.integers(0, 4, n) * 1.0, rng.integers(0, 5, m) * 1.0
        else:
            ref, cur = rng.normal(size=n), rng.normal(size=m) * 1.5 + 0.2
        reference[f"c{i}"], window[f"c{i}"] = ref + offset, cur + offset
    profile = build_profile(reference)
    settings = MonitorSettings(overrides={name: {"method": "wasserstein"} for name in reference})
    for column in compute_drift(profile, window, settings).features:
        ref, cur = reference[column.name], window[column.name]
        expected = stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)
        assert column.score == pytest.approx(expected, rel=1e-9, abs=1e-9), column.name


def test_windows_of_another_size_reuse_nothing_stale() -> None:
    rng = np.random.default_rng(3)
    reference = {"x": rng.normal(size=5000)}
    profile = build_profile(reference)
    for m in (1000, 700, 1000, 1, 2):
        cur = rng.normal(size=m) + 0.1
        got = compute_drift(profile, {"x": cur}).features[0].score
        expected = stats.wasserstein_distance(reference["x"], cur) / np.std(reference["x"])
        assert got == pytest.approx(expected, rel=1e-9)


def test_quantile_sketch_error_is_bounded() -> None:
    """Above max_exact_values the reference keeps K quantiles; |W1 error| <= (max - min) / K."""
    rng = np.random.default_rng(11)
    values = rng.lognormal(size=50_000)
    k = 1000
    profile = build_profile({"x": values}, max_exact_values=k)
    column = profile.column("x")
    assert not column.exact and column.values.size == k and column.count == values.size
    assert column.min == values.min() and column.max == values.max()
    assert column.std == pytest.approx(np.std(values), rel=1e-12)
    for shift in (0.0, 0.05, 0.5):
        cur = rng.lognormal(size=3000) + shift
        result = compute_drift(profile, {"x": cur}).features[0]
        assert result.method == "wasserstein" and result.approximate
        exact = stats.wasserstein_distance(values, cur) / np.std(values)
        bound = (values.max() - values.min()) / k / np.std(values)
        assert abs(result.score - exact) <= bound
        assert abs(result.score - exact) < 0.005  # in practice: far below the 0.1 threshold


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).normal(size=999).astype(np.float32),
        np.random.default_rng(1).lognormal(size=5000),
        np.random.default_rng(2).integers(-5, 400, 3000),
        np.arange(-3, 22, dtype=np.int16).repeat(400_000),  # integer width < 1 -> width 1
    ],
    ids=["float32", "float64", "int64", "int16-wide"],
)
def test_sturges_edges_equal_numpys(data: np.ndarray) -> None:
    expected = np.histogram_bin_edges(data, "sturges")
    ours = sturges_edges(float(data.min()), float(data.max()), data.size, data.dtype)
    np.testing.assert_array_equal(ours, expected.astype(np.float64))


def test_sturges_edges_of_float32_beyond_its_span_are_float64s() -> None:
    data = np.array([-3.4e38, -1e38, 0.0, 2e38, 3.4e38], dtype=np.float32)  # max - min > f32 max
    ours = sturges_edges(float(data.min()), float(data.max()), data.size, data.dtype)
    np.testing.assert_array_equal(
        ours, np.histogram_bin_edges(data.astype(np.float64), "sturges")
    )
    assert ours.size == 5 and ours[0] == float(np.float32(-3.4e38))
    with pytest.raises(ValueError, match=r"^the values span more than float64 can hold "
                       r"\(-1e\+308 to 1e\+308\): no histogram bins$"):
        sturges_edges(-1e308, 1e308, 5, np.dtype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("method", ["jensenshannon", "psi"])
def test_histogram_binning_matches_evidently(dtype: type, method: str) -> None:
    """Many-valued numeric columns are binned over reference and window together, per dtype."""
    import pandas as pd
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(5)
    ref = (rng.gamma(2.0, size=3000) * 10).astype(dtype)
    cur = (rng.gamma(2.3, size=700) * 10).astype(dtype)
    score, drifted = one(method, ref, cur)
    test = get_stattest(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, method)
    theirs = test(pd.Series(ref), pd.Series(cur), ColumnType.Numerical, None)
    assert score == pytest.approx(theirs.drift_score, rel=1e-12)
    assert drifted == theirs.drifted
