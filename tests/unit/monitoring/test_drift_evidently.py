"""Vigil's drift verdicts equal Evidently's own (Report + DataDriftPreset, legacy stattests)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import ColumnDrift, DriftResult, compute_drift
from monitoring.data_files import load_data
from monitoring.profile import build_profile, infer_kind
from monitoring.settings import MonitorSettings
from tests.unit.monitoring.helpers import Case, EvidentlyVerdict, as_window, evidently_drift


def assert_same(vigil: DriftResult, evidently: EvidentlyVerdict) -> None:
    assert {c.name for c in vigil.features} == set(evidently.columns)
    for column in vigil.features:
        theirs = evidently.columns[column.name]
        assert column.status == "tested"
        assert (column.method, column.threshold, column.drifted) == (
            theirs.method, theirs.threshold, theirs.drifted
        ), column.name
        assert math.isclose(column.score, theirs.score, rel_tol=1e-9, abs_tol=1e-12), column.name
    assert vigil.share_drifted == pytest.approx(evidently.share, abs=1e-12)
    assert vigil.dataset_drift == evidently.dataset_drift


def test_small_reference_matches_evidently_report(small_case: Case) -> None:
    vigil = compute_drift(small_case.profile, as_window(small_case.current))
    evidently = evidently_drift(small_case.reference, small_case.current, small_case.profile)
    assert_same(vigil, evidently)
    methods = {c.name: c.method for c in vigil.features}
    assert methods["num_shift"] == "ks" and methods["num_few"] == "chisquare"
    assert methods["num_bin"] == "z" and methods["cat_str"] == "chisquare"
    assert methods["cat_bin"] == "z" and methods["const_same"] == "z"
    assert vigil.column("cat_unseen").score == 0.0  # a category the reference never had
    assert vigil.column("const_same").score == 1.0


def test_large_reference_matches_evidently_report(large_case: Case) -> None:
    vigil = compute_drift(large_case.profile, as_window(large_case.current))
    evidently = evidently_drift(large_case.reference, large_case.current, large_case.profile)
    assert_same(vigil, evidently)
    methods = {c.name: c.method for c in vigil.features}
    assert methods["num_shift"] == "wasserstein" and methods["num_few"] == "jensenshannon"
    assert methods["cat_str"] == "jensenshannon"


def test_overrides_match_evidently_report(large_case: Case) -> None:
    methods = {
        "num_same": "psi",
        "num_shift": "ks",
        "num_int": "jensenshannon",  # 50 distinct values: Sturges histogram, not by value
        "num_nan": "psi",
        "num_few": "psi",
        "cat_str": "psi",
        "cat_int": "psi",
        "const_ref": "ks",
    }
    thresholds = {"num_shift": 0.01, "num_same": 0.2, "cat_str": 0.05, "num_bin": 0.01}
    settings = MonitorSettings(
        overrides={
            name: {"method": methods.get(name), "threshold": thresholds.get(name)}
            for name in {*methods, *thresholds}
        }
    )
    vigil = compute_drift(large_case.profile, as_window(large_case.current), settings)
    evidently = evidently_drift(
        large_case.reference,
        large_case.current,
        large_case.profile,
        per_column_method=methods,
        per_column_threshold=thresholds,
    )
    assert_same(vigil, evidently)
    assert vigil.column("num_int").method == "jensenshannon"
    assert vigil.column("num_bin").threshold == 0.01


def test_breast_cancer_reference_matches_evidently_report(example_root: Path) -> None:
    """The example model's own float32 reference (569 rows: KS), against a partly shifted window."""
    reference = pd.DataFrame(load_data(example_root / "breast_cancer" / "1" / "reference.parquet"))
    assert len(reference.columns) == 31 and reference["target"].dtype == np.int64
    current = reference.sample(300, random_state=0).reset_index(drop=True)
    for name in current.columns[:12]:
        if name != "target":
            current[name] = (current[name] * np.float32(1.15)).astype(np.float32)
    profile = build_profile(reference)
    vigil = compute_drift(profile, as_window(current))
    assert_same(vigil, evidently_drift(reference, current, profile))
    assert vigil.column("target").method == "z" and vigil.column("mean radius").method == "ks"
    assert 0 < vigil.drifted < vigil.tested


def test_inferred_types_match_evidently(small_case: Case) -> None:
    from evidently.core.datasets import infer_column_type

    kinds = {"num": "numeric", "cat": "categorical"}
    for name in small_case.reference.columns:
        theirs = kinds[infer_column_type(small_case.reference[name]).value]
        assert infer_kind(small_case.reference[name].to_numpy()) == theirs, name


@pytest.mark.parametrize(
    ("rows", "nan_rows", "expected"),
    [(1000, 0, "ks"), (1001, 0, "wasserstein"), (1010, 10, "ks"), (1012, 11, "wasserstein")],
)
def test_size_boundary_counts_finite_reference_values(rows: int, nan_rows: int, expected: str) -> None:
    """Evidently compares the reference size after dropping NaN; so does Vigil."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(rows)
    values = rng.normal(size=rows)
    values[:nan_rows] = np.nan
    current = rng.normal(size=200)
    theirs = get_stattest(
        pd.Series(values).dropna(), pd.Series(current), ColumnType.Numerical, None
    ).name
    ours = compute_drift(build_profile({"x": values}), {"x": current}).features[0]
    assert ours.method == theirs == expected


@pytest.mark.parametrize("seed", range(6))
def test_random_small_data_sets_match_legacy_stattests(seed: int) -> None:
    """Many shapes through Evidently's own selection and test functions (fast, no Report)."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(100 + seed)
    n_ref = int(rng.choice([40, 400, 1000, 1001, 2500]))
    n_cur = int(rng.integers(5, 600))
    levels = int(rng.integers(1, 9))
    columns = {
        "cont": (rng.normal(size=n_ref), rng.normal(size=n_cur) + rng.normal() * 0.3),
        "few": (rng.integers(0, levels, n_ref) * 0.5, rng.integers(0, levels + 1, n_cur) * 0.5),
        "cat": (
            rng.choice(list("abcdefg")[:levels], n_ref).astype(object),
            rng.choice(list("abcdefgh")[: levels + 1], n_cur).astype(object),
        ),
    }
    reference = {name: ref for name, (ref, _) in columns.items()}
    window = {name: cur for name, (_, cur) in columns.items()}
    profile = build_profile(reference, feature_types={"few": "numeric", "cat": "categorical"})
    result = compute_drift(profile, window)
    for column in result.features:
        kind = ColumnType.Numerical if column.kind == "numeric" else ColumnType.Categorical
        ref, cur = pd.Series(reference[column.name]), pd.Series(window[column.name])
        test = get_stattest(ref, cur, kind, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = test(ref, cur, kind, None)
        _check(column, test.name, theirs.drift_score, theirs.drifted)


def _check(column: ColumnDrift, method: str, score: float, drifted: bool) -> None:
    assert column.method == method, column.name
    expected = 1.0 if np.isnan(score) else score  # no degrees of freedom: Vigil says p = 1.0
    assert math.isclose(column.score, expected, rel_tol=1e-9, abs_tol=1e-12), column.name
    assert column.drifted == bool(drifted), column.name
