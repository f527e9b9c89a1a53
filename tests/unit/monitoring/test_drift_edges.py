"""Drift edge cases: empty windows, constant and all-NaN columns, schema trouble, outputs, settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitoring.drift import WindowResult, compute_drift, evaluate_window
from monitoring.profile import build_profile
from monitoring.settings import MonitorSettings
from tests.unit.monitoring.helpers import Case, as_window


def assert_defined(result: WindowResult) -> None:
    """No NaN anywhere a number is reported."""
    drift = result.drift
    assert not math.isnan(drift.share_drifted)
    for column in (*drift.features, *drift.outputs):
        for value in (column.score, column.p_value_adjusted, column.threshold):
            assert value is None or not math.isnan(value), column
    for column in result.quality.columns:
        for ratio in (column.missing_ratio, column.out_of_range_share, column.unseen_share):
            assert 0.0 <= ratio <= 1.0, column


def test_empty_window(small_case: Case) -> None:
    window = {name: values[:0] for name, values in as_window(small_case.current).items()}
    result = evaluate_window(small_case.profile, window)
    assert result.rows == 0
    assert {c.status for c in result.drift.features} == {"empty_window"}
    assert all(c.score is None and not c.drifted for c in result.drift.features)
    assert result.drift.tested == 0 and result.drift.share_drifted == 0.0
    assert not result.drift.dataset_drift
    assert_defined(result)


def test_window_with_no_columns(small_case: Case) -> None:
    result = evaluate_window(small_case.profile, {})
    assert result.rows == 0
    assert {c.status for c in result.drift.features} == {"missing_column"}
    assert result.drift.share_drifted == 0.0
    assert set(result.quality.missing_columns) == set(small_case.profile.names)
    assert_defined(result)


def test_all_nan_window_column_is_left_out_of_the_share() -> None:
    rng = np.random.default_rng(0)
    profile = build_profile({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    window = {"a": np.full(50, np.nan), "b": rng.normal(size=50) + 3}
    result = evaluate_window(profile, window)
    a, b = result.drift.features
    assert (a.status, a.score, a.drifted, a.current_count) == ("empty_window", None, False, 0)
    assert b.status == "tested" and b.drifted
    assert (result.drift.tested, result.drift.drifted, result.drift.share_drifted) == (1, 1, 1.0)
    assert result.drift.dataset_drift
    assert result.quality.column("a").missing_ratio == 1.0
    assert_defined(result)


def test_infinite_values_count_as_non_finite_not_as_data() -> None:
    profile = build_profile({"a": np.arange(100.0)})
    window = {"a": np.array([np.inf, -np.inf, np.nan, 5.0, 6.0])}
    result = evaluate_window(profile, window)
    column = result.drift.features[0]
    assert column.current_count == 2 and column.status == "tested"
    quality = result.quality.column("a")
    assert (quality.missing, quality.non_finite, quality.out_of_range) == (1, 2, 2)
    assert quality.out_of_range_share == pytest.approx(2 / 4)


def test_all_nan_reference_column() -> None:
    profile = build_profile({"a": np.full(30, np.nan), "b": np.arange(30.0)})
    column = profile.column("a")
    assert (column.count, column.missing, column.values, column.mean) == (0, 30, None, None)
    result = evaluate_window(profile, {"a": np.arange(10.0), "b": np.arange(10.0)})
    assert result.drift.column("a").status == "empty_reference"
    assert result.drift.tested == 1
    assert result.quality.column("a").out_of_range == 0  # no reference range to leave
    assert_defined(result)


def test_constant_columns_have_defined_results() -> None:
    small = build_profile({"c": np.full(100, 3.0)})
    assert compute_drift(small, {"c": np.full(40, 3.0)}).features[0].score == 1.0  # z, same value
    moved = compute_drift(small, {"c": np.full(40, 4.0)}).features[0]
    assert (moved.method, moved.score, moved.drifted) == ("z", 0.0, True)
    spread = compute_drift(small, {"c": np.linspace(0, 6, 40)}).features[0]
    assert spread.method == "ks" and spread.drifted
    large = build_profile({"c": np.full(2000, 3.0)})
    same = compute_drift(large, {"c": np.full(40, 3.0)}).features[0]
    assert (same.method, same.score, same.drifted) == ("jensenshannon", 0.0, False)
    wide = compute_drift(large, {"c": np.linspace(2.9, 3.1, 40)}).features[0]
    assert wide.method == "wasserstein" and math.isfinite(wide.score) and wide.drifted


def test_chisquare_over_one_category_is_p_one() -> None:
    profile = build_profile({"s": np.array(["a"] * 20, dtype=object)})
    settings = MonitorSettings(overrides={"s": {"method": "chisquare"}})
    column = compute_drift(profile, {"s": np.array(["a"] * 5, dtype=object)}, settings).features[0]
    assert (column.score, column.drifted) == (1.0, False)


def test_schema_trouble_skips_the_column() -> None:
    rng = np.random.default_rng(1)
    profile = build_profile(
        {"x": rng.normal(size=100), "s": rng.choice(["a", "b", "c"], 100), "y": rng.normal(size=100)}
    )
    window = {
        "x": np.array(["1.0", "2.0"]),  # strings for a numeric column
        "s": np.array([1, 2]),  # integers for a string column
        "extra": np.array([1, 2]),
    }
    result = evaluate_window(profile, window)
    statuses = {c.name: c.status for c in result.drift.features}
    assert statuses == {"x": "wrong_dtype", "s": "wrong_dtype", "y": "missing_column"}
    kinds = {(v.column, v.violation) for v in result.quality.violations}
    assert kinds == {
        ("x", "wrong_dtype"), ("s", "wrong_dtype"), ("y", "missing_column"),
        ("extra", "unexpected_column"),
    }
    assert result.drift.share_drifted == 0.0
    wrong_shape = evaluate_window(profile, {"x": np.zeros((2, 2)), "s": np.array(["a", "b"])})
    assert wrong_shape.drift.column("x").status == "wrong_shape"
    assert wrong_shape.drift.column("s").status == "tested"


def test_numbers_in_an_object_column_are_accepted() -> None:
    profile = build_profile({"x": np.arange(50.0)})
    window = {"x": np.array([1, 2.5, None, 40], dtype=object)}
    column = compute_drift(profile, window).features[0]
    assert column.status == "tested" and column.current_count == 3


def test_outputs_give_prediction_drift_apart_from_the_feature_share() -> None:
    rng = np.random.default_rng(2)
    reference = {"f": rng.normal(size=500), "proba": rng.beta(2, 5, size=500)}
    profile = build_profile(reference, outputs=["proba"])
    assert [c.name for c in profile.outputs] == ["proba"]
    steady = compute_drift(profile, {"f": rng.normal(size=200), "proba": rng.beta(2, 5, size=200)})
    assert steady.prediction_drift is False and [c.name for c in steady.outputs] == ["proba"]
    moved = compute_drift(profile, {"f": rng.normal(size=200), "proba": rng.beta(5, 2, size=200)})
    assert moved.prediction_drift is True
    assert moved.tested == 1 and moved.share_drifted == 0.0  # outputs are not features
    assert compute_drift(profile, {"f": rng.normal(size=10)}).prediction_drift is None


def test_settings_are_checked_against_the_profile() -> None:
    profile = build_profile({"x": np.arange(20.0), "s": np.array(list("ab") * 10)})
    window = {"x": np.arange(5.0), "s": np.array(list("abba") + ["a"])}
    bad = [
        MonitorSettings(overrides={"nope": {"method": "ks"}}),
        MonitorSettings(feature_types={"x": "categorical"}),
        MonitorSettings(overrides={"s": {"method": "wasserstein"}}),
    ]
    for settings in bad:
        with pytest.raises(ValueError):
            compute_drift(profile, window, settings)
    compute_drift(profile, window, MonitorSettings(feature_types={"x": "numeric"}))


def test_ragged_window_is_refused() -> None:
    profile = build_profile({"x": np.arange(20.0), "y": np.arange(20.0)})
    with pytest.raises(ValueError, match="different lengths"):
        evaluate_window(profile, {"x": np.arange(5.0), "y": np.arange(4.0)})


@pytest.mark.parametrize("seed", range(5))
def test_random_windows_never_give_nan(seed: int, small_case: Case, large_case: Case) -> None:
    rng = np.random.default_rng(seed)
    for case in (small_case, large_case):
        rows = int(rng.integers(0, 40))
        picked = case.current.sample(rows, random_state=seed) if rows else case.current[:0]
        window = as_window(picked)
        for name in rng.choice(list(window), 3, replace=False):
            if window[name].dtype.kind == "f":
                window[name] = np.full(rows, np.nan)
        assert_defined(evaluate_window(case.profile, window))
