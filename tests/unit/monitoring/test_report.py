"""The HTML report builder (one small Evidently run: it is slow) and its reference reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.profile import Profile, build_profile
from monitoring.report import drift_report_html, evenly_spaced, load_reference, reference_path


def test_reference_path_is_recorded_relative_to_the_version(tmp_path: Path) -> None:
    profile = build_profile({"x": np.arange(3.0)})
    assert reference_path(profile, tmp_path) is None
    relative = Profile(profile.columns, 3, profile.max_exact_values, meta={"data": "ref.csv"})
    assert reference_path(relative, tmp_path) == tmp_path / "ref.csv"
    absolute = Profile(profile.columns, 3, profile.max_exact_values, meta={"data": "/d/ref.csv"})
    assert reference_path(absolute, tmp_path) == Path("/d/ref.csv")


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
