"""Reference profiles: type inference, summaries, the quantile sketch, files, no pickles."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import compute_drift
from monitoring.data_files import load_data
from monitoring.profile import Profile, build_profile
from vigil.core.repository import PROFILE_JSON, PROFILE_NPZ
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
    assert column.unique_values.tolist() == ["a", "b", "c"]
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


def _record_npz_digest(directory: Path) -> None:
    """Make profile.json vouch for whatever profile.npz now holds (as someone who can write
    both files could)."""
    doc = json.loads((directory / PROFILE_JSON).read_text())
    doc["npz_sha256"] = hashlib.sha256((directory / PROFILE_NPZ).read_bytes()).hexdigest()
    (directory / PROFILE_JSON).write_text(json.dumps(doc))


def test_load_refuses_pickles(tmp_path: Path) -> None:
    build_profile({"x": np.arange(5.0)}).save(tmp_path)
    np.savez(tmp_path / PROFILE_NPZ, **{"c0.values": np.array([object()], dtype=object)})
    _record_npz_digest(tmp_path)
    with pytest.raises(ValueError, match="allow_pickle"):
        Profile.load(tmp_path)
    (tmp_path / PROFILE_NPZ).write_bytes(pickle.dumps({"c0.values": np.arange(5.0)}))
    _record_npz_digest(tmp_path)
    with pytest.raises(ValueError):
        Profile.load(tmp_path)


MISMATCH = (r"^profile\.npz does not match the sha256 recorded in profile\.json: rebuild the "
            r"profile$")


def test_profile_json_records_the_sha256_of_profile_npz(tmp_path: Path) -> None:
    build_profile({"x": np.arange(5.0)}).save(tmp_path)
    doc = json.loads((tmp_path / PROFILE_JSON).read_text())
    assert doc["format_version"] == 2
    assert doc["npz_sha256"] == hashlib.sha256((tmp_path / PROFILE_NPZ).read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    for name in (PROFILE_JSON, PROFILE_NPZ):  # as open() creates files, not mkstemp's 0600
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_an_npz_from_another_profile_is_refused(tmp_path: Path) -> None:
    """What an interrupted rebuild could leave: the old json beside another profile's npz."""
    build_profile({"x": np.arange(5.0)}).save(tmp_path / "old")
    build_profile({"x": np.arange(6.0)}).save(tmp_path / "new")
    shutil.copy(tmp_path / "new" / PROFILE_NPZ, tmp_path / "old" / PROFILE_NPZ)
    with pytest.raises(ValueError, match=MISMATCH):
        Profile.load(tmp_path / "old")


def test_a_truncated_npz_is_refused(tmp_path: Path) -> None:
    build_profile({"x": np.arange(5.0)}).save(tmp_path)
    data = (tmp_path / PROFILE_NPZ).read_bytes()
    (tmp_path / PROFILE_NPZ).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=MISMATCH):
        Profile.load(tmp_path)


def test_a_profile_json_without_digest_is_refused(tmp_path: Path) -> None:
    build_profile({"x": np.arange(5.0)}).save(tmp_path)
    doc = json.loads((tmp_path / PROFILE_JSON).read_text())
    del doc["npz_sha256"]
    (tmp_path / PROFILE_JSON).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"^profile\.json records no sha256 of profile\.npz: "
                       r"rebuild the profile$"):
        Profile.load(tmp_path)
    doc["format_version"] = 1  # what Vigil wrote before the digest
    (tmp_path / PROFILE_JSON).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"^profile\.json is of format 1, which records no sha256 "
                       r"of profile\.npz: rebuild the profile \(`vigil profile build`\)$"):
        Profile.load(tmp_path)


def test_a_save_that_fails_leaves_the_previous_profile(tmp_path: Path) -> None:
    old = build_profile({"x": np.arange(5.0)})
    old.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = Profile(old.columns, old.rows, old.max_exact_values, meta={"note": float("inf")})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        bad.save(tmp_path)  # refused before either file is touched
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert Profile.load(tmp_path).column("x").values.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_float32_variance_beyond_float32_keeps_a_finite_std(tmp_path: Path) -> None:
    """pandas gives inf here (so would Evidently's normed Wasserstein: 0 for any shift)."""
    values = np.array([-3e19, 0.0, 3e19], dtype=np.float32)
    column = build_profile({"x": values}).column("x")
    assert column.std == float(np.std(values.astype(np.float64)))
    assert column.std == pytest.approx(2.449489742783178e19, rel=1e-7)
    build_profile({"x": values}).save(tmp_path)  # JSON holds it (it has no inf)
    assert Profile.load(tmp_path).column("x").std == column.std
    small = np.array([1.0, 2.0, 4.0], dtype=np.float32)  # in range: float32 as pandas
    assert build_profile({"x": small}).column("x").std == float(np.std(pd.Series(small)))


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
    assert profile.column("b").unique_values.tolist() == [False, True]
    assert profile.column("b").missing == 4
    assert profile.column("i").kind == "numeric" and profile.column("i").missing == 1
    assert profile.column("s").unique_values.tolist() == ["a", "b"]
    assert profile.column("s").missing == 4
    assert profile.column("c").unique_counts.tolist() == [8, 4]


def test_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    build_profile({"x": np.arange(10.0)}, progress=True)
    assert "profiling" in capsys.readouterr().err
    build_profile({"x": np.arange(10.0)})  # stderr is not a terminal here: no bar
    assert capsys.readouterr().err == ""
