"""The human-facing drift report: Evidently's DataDriftPreset HTML of a window against its reference.

Evidently and pandas only (no Ray, no web framework). Evidently takes seconds to import and to
run: callers keep it off their event loop, and bound the rows they pass (``evenly_spaced``): its
run time grows with them, while the page's size does not (Evidently 0.7's drift widgets plot
aggregated histograms, never raw rows; ~65 KB per column plus a fixed 3.6 MB of JavaScript and
fonts). Column types are the profile's, so Evidently picks the same tests as monitoring.drift.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.profile import Profile, load_data



def reference_path(profile: Profile, version_dir: str | Path) -> Path | None:
    """The data file the profile was built from (recorded by monitoring.profile_builder)."""
    data = (profile.meta or {}).get("data")
    if not data:
        return None
    path = Path(data)
    return path if path.is_absolute() else Path(version_dir) / path


def load_reference(
    path: str | Path, columns: Sequence[str], max_rows: int
) -> dict[str, np.ndarray]:
    """The reference columns that the file holds (a model's outputs usually are not in it), at
    most `max_rows` of them (see evenly_spaced)."""
    data = load_data(path)
    kept = {c: np.asarray(data[c]) for c in columns if c in data and np.ndim(data[c]) == 1}
    return evenly_spaced(kept, max_rows)


def evenly_spaced(columns: Mapping[str, np.ndarray], max_rows: int) -> dict[str, np.ndarray]:
    """At most `max_rows` rows of equal-length columns: all of them, or `max_rows` evenly spaced
    ones, first and last included (a deterministic subsample)."""
    rows = len(next(iter(columns.values()))) if columns else 0
    if rows <= max_rows:
        return dict(columns)
    index = np.linspace(0, rows - 1, max_rows).round().astype(np.int64)
    return {c: np.asarray(v)[index] for c, v in columns.items()}


def drift_report_html(
    profile: Profile,
    reference: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    *,
    drift_share: float = 0.5,
) -> str:
    """Evidently's DataDriftPreset report as a standalone HTML page, over the profiled columns
    present in both data sets."""
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = [c.name for c in profile.columns if c.name in reference and c.name in current]
    if not names:
        raise ValueError("the reference and the window share no profiled column")
    kinds = {c.name: c.kind for c in profile.columns}
    definition = DataDefinition(
        numerical_columns=[n for n in names if kinds[n] == "numeric"],
        categorical_columns=[n for n in names if kinds[n] == "categorical"],
    )
    frames = [pd.DataFrame({n: _column(data[n]) for n in names}) for data in (current, reference)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(drift_share=drift_share)]).run(
            Dataset.from_pandas(frames[0], data_definition=definition),
            Dataset.from_pandas(frames[1], data_definition=definition),
        )
        return snapshot.get_html_str(as_iframe=False)


def _column(values: Any) -> np.ndarray:
    array = np.asarray(values)
    return array.astype(object) if array.dtype.kind == "S" else array
