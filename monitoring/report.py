"""The human-facing drift report: Evidently's DataDriftPreset HTML of a window against its reference.

Evidently and pandas only (no Ray, no web framework). Evidently takes seconds to import and to
run: callers keep it off their event loop, and bound the rows they pass (``evenly_spaced``): its
run time grows with them, while the page's size does not (Evidently 0.7's drift widgets plot
aggregated histograms, never raw rows; ~65 KB per column plus a fixed 3.6 MB of JavaScript and
fonts). Column types are the profile's, so Evidently picks the same tests as monitoring.drift.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.data_files import parse_data
from monitoring.profile import Profile


class ReferenceUnavailable(ValueError):
    """A version's reference data cannot be read: the message says why and what to do."""


def reference_path(profile: Profile, version_dir: str | Path) -> Path | None:
    """The data file the profile was built from: inside the version, by the name the profile
    records (monitoring.profile_builder copies data from outside in), or for a profile built
    before versions carried their data, the absolute path it recorded, which may not exist on
    this host. None when the profile records no file, or a relative one leaving the version."""
    data = (profile.meta or {}).get("data")
    if not data:
        return None
    path = Path(data)
    if path.is_absolute():
        return path
    version_dir = Path(version_dir)
    inside = version_dir / path
    if ".." in path.parts or not inside.resolve().is_relative_to(version_dir.resolve()):
        return None
    return inside


def load_reference(
    path: str | Path, columns: Sequence[str], max_rows: int, *, sha256: str | None = None
) -> dict[str, np.ndarray]:
    """The reference columns that the file holds (a model's outputs usually are not in it), at
    most `max_rows` of them (see evenly_spaced). With `sha256`, bytes of another digest are
    refused (ReferenceUnavailable); the digest and the columns are of the same bytes."""
    path = Path(path)
    raw = path.read_bytes()
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ReferenceUnavailable(
            f"{path.name} does not match the sha256 its profile records: the version's files "
            "changed after it was profiled; publish it again, or rebuild its profile with "
            "`vigil profile build`"
        )
    data = parse_data(io.BytesIO(raw), path.suffix)
    kept = {c: np.asarray(data[c]) for c in columns if c in data and np.ndim(data[c]) == 1}
    return evenly_spaced(kept, max_rows)


def version_reference(
    profile: Profile, version_dir: str | Path, max_rows: int
) -> dict[str, np.ndarray]:
    """The profiled columns of the reference data of the version in `version_dir`, checked
    against the sha256 its profile records. ReferenceUnavailable says why they cannot be read:
    no data recorded, a name leaving the version, a file missing (an older profile's absolute
    path on another host), or other bytes."""
    meta = profile.meta or {}
    model, version = str(meta.get("model", "?")), str(meta.get("version", "?"))
    label = f"{model}/{version}"
    rebuild = _REBUILD.format(model=model, version=version)
    path = reference_path(profile, version_dir)
    if path is None:
        raise ReferenceUnavailable(_no_reference(label, meta.get("data"), rebuild))
    if not path.is_file():
        raise ReferenceUnavailable(_missing_reference(label, Path(str(meta["data"])), rebuild))
    try:
        return load_reference(path, profile.names, max_rows, sha256=meta.get("data_sha256"))
    except ReferenceUnavailable as exc:
        raise ReferenceUnavailable(f"the reference data of {label}: {exc}") from None


_REBUILD = ("rebuild the profile where the version is served: `vigil profile build --model {model} "
            "--version {version} --data FILE` copies the data into the version")


def _no_reference(label: str, data: Any, rebuild: str) -> str:
    if not data:
        return f"the profile of {label} records no reference data file; {rebuild}"
    return (f"the profile of {label} names its reference data {data!r}, outside the version's "
            f"folder: refused; {rebuild}")


def _missing_reference(label: str, recorded: Path, rebuild: str) -> str:
    if recorded.is_absolute():
        return (f"the profile of {label} names its reference data by an absolute path, {recorded}, "
                "which is not on this host: it was profiled before versions carried their "
                f"reference data, so the file stayed where the profile was built; {rebuild}")
    return (f"{label} lacks its reference data {recorded} (its profile names it): the version's "
            f"folder is incomplete; publish it again, or {rebuild}")


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
