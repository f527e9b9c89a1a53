"""The HTML report builder (one small Evidently run: it is slow) and its reference reading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.profile import Profile, build_profile
from monitoring.report import (
    ReferenceUnavailable,
    drift_report_html,
    evenly_spaced,
    load_reference,
    reference_path,
    version_reference,
)


def _with_meta(profile: Profile, **meta: str) -> Profile:
    return Profile(profile.columns, profile.rows, profile.max_exact_values,
                   meta={"model": "m", "version": "3", **meta})


def test_reference_path_is_recorded_relative_to_the_version(tmp_path: Path) -> None:
    profile = build_profile({"x": np.arange(3.0)})
    assert reference_path(profile, tmp_path) is None
    relative = Profile(profile.columns, 3, profile.max_exact_values, meta={"data": "ref.csv"})
    assert reference_path(relative, tmp_path) == tmp_path / "ref.csv"
    absolute = Profile(profile.columns, 3, profile.max_exact_values, meta={"data": "/d/ref.csv"})
    assert reference_path(absolute, tmp_path) == Path("/d/ref.csv")


def test_a_relative_name_that_leaves_the_version_is_refused(tmp_path: Path) -> None:
    """A profile naming '../other/ref.csv' (or a link out of the folder) would read a file of
    another version or the host: no path, and version_reference says why."""
    version_dir = tmp_path / "m" / "3"
    version_dir.mkdir(parents=True)
    (tmp_path / "m" / "ref.csv").write_text("x\n1\n")
    (version_dir / "link.csv").symlink_to(tmp_path / "m" / "ref.csv")
    profile = build_profile({"x": np.arange(3.0)})
    for name in ("../ref.csv", "link.csv"):
        assert reference_path(_with_meta(profile, data=name), version_dir) is None
    with pytest.raises(ReferenceUnavailable, match="names its reference data '../ref.csv', "
                       "outside the version's folder: refused; rebuild the profile"):
        version_reference(_with_meta(profile, data="../ref.csv"), version_dir, 10)
    with pytest.raises(ReferenceUnavailable, match="records no reference data file"):
        version_reference(_with_meta(profile), version_dir, 10)


def test_reference_data_of_other_bytes_than_profiled_is_refused(tmp_path: Path) -> None:
    """The data is read once, hashed and parsed from the same bytes: a file changed since the
    profile was built is refused, saying to publish again or rebuild the profile."""
    path = tmp_path / "reference.csv"
    pd.DataFrame({"x": np.arange(4.0)}).to_csv(path, index=False)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    profile = _with_meta(build_profile({"x": np.arange(4.0)}), data=path.name, data_sha256=digest)
    assert version_reference(profile, tmp_path, 10)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]
    path.write_text("x\n9\n9\n9\n9\n")
    with pytest.raises(ReferenceUnavailable, match="the reference data of m/3: reference.csv does "
                       "not match the sha256 its profile records"):
        version_reference(profile, tmp_path, 10)
    with pytest.raises(ReferenceUnavailable, match="does not match"):
        load_reference(path, ["x"], 10, sha256=digest)
    (tmp_path / path.name).unlink()
    with pytest.raises(ReferenceUnavailable, match="m/3 lacks its reference data reference.csv"):
        version_reference(profile, tmp_path, 10)


def test_an_older_profile_with_an_absolute_path_works_where_the_file_is(tmp_path: Path) -> None:
    """Profiles built before versions carried their data record the builder's absolute path and
    no digest: read where the file exists; elsewhere the reason and the fix are named."""
    data = tmp_path / "publisher" / "ref.csv"
    data.parent.mkdir()
    pd.DataFrame({"x": np.arange(3.0)}).to_csv(data, index=False)
    version_dir = tmp_path / "m" / "3"
    version_dir.mkdir(parents=True)
    older = _with_meta(build_profile({"x": np.arange(3.0)}), data=str(data))
    assert version_reference(older, version_dir, 10)["x"].tolist() == [0.0, 1.0, 2.0]
    data.unlink()
    with pytest.raises(ReferenceUnavailable) as refused:
        version_reference(older, version_dir, 10)
    assert str(refused.value) == (
        f"the profile of m/3 names its reference data by an absolute path, {data}, which is not "
        "on this host: it was profiled before versions carried their reference data, so the file "
        "stayed where the profile was built; rebuild the profile where the version is served: "
        "`vigil profile build --model m --version 3 --data FILE` copies the data into the version"
    )


def test_load_reference_keeps_known_columns_and_subsamples_evenly(tmp_path: Path) -> None:
    path = tmp_path / "ref.csv"
    pd.DataFrame({"x": np.arange(10.0), "target": np.arange(10)}).to_csv(path, index=False)
    data = load_reference(path, ["x", "label"], max_rows=4)
    assert list(data) == ["x"]  # the output column is not in the file; target is not asked for
    assert data["x"].tolist() == [0.0, 3.0, 6.0, 9.0]


def test_evenly_spaced_keeps_first_and_last_rows_of_every_column() -> None:
    columns = {"x": np.arange(10.0), "s": np.array(list("abcdefghij"))}
    assert evenly_spaced(columns, 10) == columns
    kept = evenly_spaced(columns, 3)
    assert kept["x"].tolist() == [0.0, 4.0, 9.0] and kept["s"].tolist() == ["a", "e", "j"]
    assert evenly_spaced({}, 3) == {}


def test_report_is_evidently_html_over_the_shared_columns() -> None:
    rng = np.random.default_rng(0)
    reference = {"amount": rng.normal(size=60), "colour": rng.choice(["red", "blue"], 60)}
    current = {"amount": rng.normal(size=30) + 4.0, "colour": rng.choice(["red", "blue"], 30),
               "label": np.zeros(30)}
    profile = build_profile({**reference, "label": np.zeros(60)}, outputs=["label"])
    html = drift_report_html(profile, reference, current, drift_share=0.5)
    assert "<html" in html[:2000].lower()
    assert "amount" in html and "colour" in html
    with pytest.raises(ValueError, match="share no profiled column"):
        drift_report_html(profile, {"other": np.zeros(3)}, current)
