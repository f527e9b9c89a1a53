"""Reference profiles: type inference, summaries, the quantile sketch, files, no pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import compute_drift
from monitoring.profile import Profile, build_profile, load_data
from vigil.repository import PROFILE_JSON, PROFILE_NPZ
from tests.unit.monitoring.helpers import Case, as_window


def test_type_inference_and_overrides() -> None:
    data = {
        "f": np.array([0.5, 1.5, 2.5]),
        "i_few": np.array([1, 2, 3]),
        "i_many": np.arange(11),
        "b": np.array([True, False, True]),
        "s": np.array(["a", "b", "c"], dtype=object),
        "u": np.array(["a", "b", "c"]),
    }
    data = {k: np.resize(v, 11) for k, v in data.items()}
    profile = build_profile(data, feature_types={"f": "categorical"})
    kinds = {c.name: c.kind for c in profile.columns}
    assert kinds == {
        "f": "categorical", "i_few": "categorical", "i_many": "numeric",
        "b": "categorical", "s": "categorical", "u": "categorical",
    }
    with pytest.raises(ValueError, match="not profiled"):
        build_profile(data, outputs=["missing"])


def test_numeric_summary() -> None:
    values = np.array([3.0, 1.0, np.nan, 2.0, np.inf, 2.0, -1.0], dtype=np.float32)
    column = build_profile({"x": values}).column("x")
    assert (column.rows, column.count, column.missing, column.non_finite) == (7, 5, 1, 1)
    np.testing.assert_array_equal(column.values, [-1.0, 1.0, 2.0, 2.0, 3.0])
    assert column.values.dtype == np.float64 and not column.values.flags.writeable
    assert (column.min, column.max, column.mean) == (-1.0, 3.0, 1.4)
    finite = pd.Series(values).replace([np.inf], np.nan).dropna()
    assert column.std == float(np.std(finite))  # bit for bit what Evidently divides by
    assert column.n_unique == 4 and column.exact and column.dtype == "float32"
    np.testing.assert_array_equal(column.unique_values, [-1.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(column.unique_counts, [1, 1, 2, 1])


def test_many_unique_values_are_not_listed() -> None:
    column = build_profile({"x": np.arange(21.0)}).column("x")
    assert column.n_unique == 21 and column.unique_values is None


def test_categorical_summary() -> None:
    values = np.array(["b", "a", None, "b", np.nan, "c"], dtype=object)
    column = build_profile({"s": values}).column("s")
    assert (column.count, column.missing, column.n_unique) == (4, 2, 3)
    assert column.categories.tolist() == ["a", "b", "c"]
    assert column.unique_counts.tolist() == [1, 2, 1]


def test_quantile_sketch_bounds_the_size() -> None:
    values = np.random.default_rng(0).normal(size=10_001)
    y = np.where(np.arange(values.size) < 5000, values, np.nan)  # 5000 finite values: exact
    profile = build_profile({"x": values, "y": y}, max_exact_values=5000)
    x, y = profile.column("x"), profile.column("y")
    assert not x.exact and x.values.size == 5000 and x.count == 10_001
    assert np.all(np.diff(x.values) >= 0)
    assert y.exact and y.values.size == 5000
    assert profile.nbytes <= 2 * 8 * 5000
    # each kept value is the inverted-CDF quantile at the middle of its 1/K slice of the mass
    k = np.arange(5000)
    expected = np.quantile(values, (2 * k + 1) / 10_000, method="inverted_cdf")
    np.testing.assert_array_equal(x.values, expected)


def test_too_many_categories_is_refused() -> None:
    with pytest.raises(ValueError, match="max_categories"):
        build_profile({"id": np.array([f"user{i}" for i in range(50)])}, max_categories=20)


def test_save_load_round_trip(tmp_path: Path, large_case: Case) -> None:
    profile = build_profile(large_case.reference, outputs=["num_same"])
    profile.save(tmp_path / "v1")
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [PROFILE_JSON, PROFILE_NPZ]
    loaded = Profile.load(tmp_path / "v1")
    assert loaded.names == profile.names and loaded.rows == profile.rows
    for ours, theirs in zip(profile.columns, loaded.columns, strict=True):
        for field in ("name", "kind", "role", "dtype", "rows", "count", "missing", "non_finite",
                      "n_unique", "exact", "mean", "std", "min", "max"):
            assert getattr(ours, field) == getattr(theirs, field), (ours.name, field)
        for field in ("values", "unique_values", "unique_counts"):
            a, b = getattr(ours, field), getattr(theirs, field)
            assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a, b))
    window = as_window(large_case.current)
    assert compute_drift(loaded, window) == compute_drift(profile, window)


def test_load_refuses_pickles(tmp_path: Path) -> None:
    build_profile({"x": np.arange(5.0)}).save(tmp_path)
    np.savez(tmp_path / PROFILE_NPZ, **{"c0.values": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="allow_pickle"):
        Profile.load(tmp_path)
    (tmp_path / PROFILE_NPZ).write_bytes(pickle.dumps({"c0.values": np.arange(5.0)}))
    with pytest.raises(ValueError):
        Profile.load(tmp_path)


def test_load_data_reads_parquet_csv_and_npz(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": [1.5, 2.5, np.nan], "s": ["a", None, "b"], "n": [1, 2, 3]})
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_csv(tmp_path / "d.csv", index=False)
    np.savez(tmp_path / "d.npz", x=frame["x"].to_numpy(), n=frame["n"].to_numpy())
    for name in ("d.parquet", "d.csv", "d.npz"):
        data = load_data(tmp_path / name)
        np.testing.assert_array_equal(data["x"], frame["x"].to_numpy())
        assert data["n"].tolist() == [1, 2, 3]
    assert build_profile(load_data(tmp_path / "d.csv")).column("s").missing == 1
    with pytest.raises(ValueError, match="unsupported"):
        load_data(tmp_path / "d.json")


def test_pandas_extension_dtypes() -> None:
    frame = pd.DataFrame(
        {
            "i": pd.array([1, None, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], dtype="Int64"),
            "s": pd.array(["a", None, "b"] * 4, dtype="string"),
            "c": pd.Categorical(["x", "y", "x"] * 4),
            "b": pd.array([True, None, False] * 4, dtype="boolean"),
        }
    )
    profile = build_profile(frame)
    assert profile.column("b").categories.tolist() == [False, True]
    assert profile.column("b").missing == 4
    assert profile.column("i").kind == "numeric" and profile.column("i").missing == 1
    assert profile.column("s").categories.tolist() == ["a", "b"]
    assert profile.column("s").missing == 4
    assert profile.column("c").unique_counts.tolist() == [8, 4]


def test_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    build_profile({"x": np.arange(10.0)}, progress=True)
    assert "profiling" in capsys.readouterr().err
    build_profile({"x": np.arange(10.0)})  # stderr is not a terminal here: no bar
    assert capsys.readouterr().err == ""
