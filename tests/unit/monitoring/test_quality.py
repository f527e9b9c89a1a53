"""Data quality of a window: missing ratio, out-of-range share, unseen categories, schema."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.profile import build_profile
from monitoring.quality import compute_quality


@pytest.fixture
def profile():
    return build_profile(
        {
            "x": np.array([1.0, 2.0, 3.0, 4.0, np.nan]),
            "s": np.array(["a", "b", "b", None, "c"], dtype=object),
            "k": np.array([1, 2, 2, 3, 3]),  # integer categories
        }
    )


def test_numeric_missing_and_range(profile) -> None:
    window = {
        "x": np.array([0.5, 1.0, 4.0, 4.5, np.nan, np.nan, 2.0, np.inf]),
        "s": np.array(["a"] * 8, dtype=object),
        "k": np.array([1] * 8),
    }
    x = compute_quality(profile, window).column("x")
    assert (x.rows, x.missing, x.non_finite) == (8, 2, 1)
    assert x.missing_ratio == 2 / 8
    assert x.out_of_range == 3  # 0.5 and 4.5 outside [1, 4], and +inf
    assert x.out_of_range_share == 3 / 6  # of the non-missing values
    assert x.present and (x.unseen, x.unseen_share) == (0, 0.0)


def test_unseen_categories(profile) -> None:
    window = {
        "x": np.zeros(6),
        "s": np.array(["a", "z", "z", "y", None, np.nan], dtype=object),
        "k": np.array([1.0, 2.0, 7.0, 7.0, 9.0, np.nan]),  # floats match integer categories
    }
    quality = compute_quality(profile, window)
    s = quality.column("s")
    assert (s.missing, s.missing_ratio) == (2, 2 / 6)
    assert (s.unseen, s.unseen_share, s.unseen_distinct) == (3, 3 / 4, 2)
    assert s.unseen_examples == ("z", "y")  # most frequent first
    k = quality.column("k")
    assert (k.missing, k.unseen, k.unseen_distinct, k.unseen_examples) == (1, 3, 2, ("7.0", "9.0"))
    assert k.unseen_share == 3 / 5
    assert quality.violations == ()


def test_schema_violations(profile) -> None:
    window = {"x": np.array(["1", "2"]), "k": np.array([1, 2]), "new": np.array([0, 0])}
    quality = compute_quality(profile, window)
    assert {(v.column, v.violation) for v in quality.violations} == {
        ("x", "wrong_dtype"),
        ("s", "missing_column"),
        ("new", "unexpected_column"),
    }
    assert quality.missing_columns == ("s",)
    assert quality.unexpected_columns == ("new",)
    assert not quality.column("x").present and not quality.column("s").present


def test_empty_window_ratios_are_zero(profile) -> None:
    window = {"x": np.array([], dtype=float), "s": np.array([], dtype=object), "k": np.array([1])[:0]}
    quality = compute_quality(profile, window)
    assert quality.rows == 0
    for column in quality.columns:
        assert (column.missing_ratio, column.out_of_range_share, column.unseen_share) == (0, 0, 0)


def test_bytes_and_numpy_strings_compare_with_string_categories(profile) -> None:
    window = {"x": np.ones(3), "s": np.array([b"a", b"b", b"q"]), "k": np.array([1, 2, 3])}
    s = compute_quality(profile, window).column("s")
    assert s.present and (s.unseen, s.unseen_examples) == (1, ("q",))
    window["s"] = np.array(["a", "b", "q"])
    assert compute_quality(profile, window).column("s").unseen == 1
