"""Reference profiles: per-column summaries of a model version's reference data, saved beside it.

A profile holds everything drift and quality need, so evaluating a window never re-reads the raw
reference data. Per column:

- numeric: the sorted finite reference values (every value up to ``max_exact_values``; above that
  ``max_exact_values`` evenly spaced quantiles, and every statistic computed from them is then
  approximate, see ``ColumnProfile.exact``), count, mean, std (population, computed as pandas does,
  which is what Evidently's normed Wasserstein divides by), min, max, missing and non-finite counts,
  the unique count, and the unique values with their counts when there are at most ``FEW_UNIQUE``.
- categorical: every category with its count (at most ``max_categories``).

Size bound: at most ``8 * max_exact_values`` bytes of values per numeric column (plus 20 unique
values and counts), and at most ``max_categories`` values and counts per categorical column.

Stored as ``profile.json`` (scalars) and ``profile.npz`` (arrays) in a directory, for example a
model version's directory; loading never unpickles (``np.load(..., allow_pickle=False)``).
profile.json records the sha256 of profile.npz. Saving writes each file under a temporary name
and renames it into place, the npz first and the json last, so the json never names an npz that
is not there in full; loading refuses a pair whose digests differ (an interrupted or mixed-up
save) and a json of the older format that records no digest: both say to rebuild the profile.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitoring.data_files import from_frame
from vigil.core.files import atomic_write
from vigil.core.repository import PROFILE_JSON, PROFILE_NPZ

Kind = Literal["numeric", "categorical"]
Role = Literal["feature", "output"]

FORMAT_VERSION = 2  # 2: profile.json records the sha256 of profile.npz
# Evidently (core/datasets.py INTEGER_CARDINALITY_LIMIT): integer columns with at most this many
# distinct values are categorical.
INTEGER_CARDINALITY_LIMIT = 10
# Numeric columns keep their unique values and counts up to this many: enough for Evidently's
# n_unique rules (<= 5) and its binning (reference n_unique <= 20 bins by value, not histogram).
FEW_UNIQUE = 20
_PROGRESS_MIN_ROWS = 1_000_000  # rows x columns above which a build shows a progress bar by default


@dataclass(frozen=True, eq=False)
class ColumnProfile:
    """Summary of one reference column. Arrays are read-only."""

    name: str
    kind: Kind
    role: Role
    dtype: str  # numpy dtype of the reference column, e.g. "float32", "int64", "object"
    rows: int  # reference rows, missing included
    count: int  # usable values: not missing and, for numeric columns, finite
    missing: int  # NaN or None
    non_finite: int  # +-inf (numeric only); dropped before tests, as Evidently does
    n_unique: int  # distinct usable values
    unique_values: np.ndarray | None  # sorted; categorical: always; numeric: if n_unique <= 20
    unique_counts: np.ndarray | None  # int64, aligned with unique_values
    values: np.ndarray | None = None  # numeric: sorted float64, exact or quantile sketch
    exact: bool = True  # False when values is a quantile sketch
    mean: float | None = None  # numeric, None when count == 0
    std: float | None = None
    min: float | None = None
    max: float | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.values, self.unique_values, self.unique_counts)
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass(frozen=True, eq=False)
class Profile:
    """A reference profile: one ColumnProfile per profiled column, features and outputs."""

    columns: tuple[ColumnProfile, ...]
    rows: int
    max_exact_values: int
    # What the builder records beside the statistics (JSON values only): the data file, the
    # tensor -> column layout, the model's sha256. The statistics never read it.
    meta: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("duplicate column names in profile")
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    def column(self, name: str) -> ColumnProfile:
        return self._by_name[name]  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def features(self) -> tuple[ColumnProfile, ...]:
        return tuple(c for c in self.columns if c.role == "feature")

    @property
    def outputs(self) -> tuple[ColumnProfile, ...]:
        return tuple(c for c in self.columns if c.role == "output")

    @property
    def nbytes(self) -> int:
        """Bytes of array data held (the bulk of the profile in memory and on disk)."""
        return sum(c.nbytes for c in self.columns)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write profile.json and profile.npz into `directory` (created if absent), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "rows": self.rows,
            "max_exact_values": self.max_exact_values,
            "columns": [],
        }
        if self.meta is not None:
            meta["meta"] = dict(self.meta)
        arrays: dict[str, np.ndarray] = {}
        for i, c in enumerate(self.columns):
            scalars = {
                k: getattr(c, k)
                for k in (
                    "name", "kind", "role", "dtype", "rows", "count", "missing", "non_finite",
                    "n_unique", "exact", "mean", "std", "min", "max",
                )
            }
            meta["columns"].append(scalars)
            for field in ("values", "unique_values", "unique_counts"):
                array = getattr(c, field)
                if array is not None:
                    arrays[f"c{i}.{field}"] = array
        buffer = io.BytesIO()
        _write_npz(buffer, arrays)
        npz = buffer.getvalue()
        meta["npz_sha256"] = hashlib.sha256(npz).hexdigest()
        text = json.dumps(meta, indent=1, allow_nan=False).encode()  # before any file is touched
        atomic_write(directory / PROFILE_NPZ, npz)
        atomic_write(directory / PROFILE_JSON, text)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Profile:
        """Read a profile written by save(). Refuses a profile.npz other than the one profile.json
        records (sha256), an older format, and pickled content (allow_pickle=False)."""
        directory = Path(directory)
        meta = json.loads((directory / PROFILE_JSON).read_text())
        version = meta.get("format_version")
        if version == 1:
            raise ValueError(f"{PROFILE_JSON} is of format 1, which records no sha256 of "
                             f"{PROFILE_NPZ}: rebuild the profile (`vigil profile build`)")
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported profile format {version!r}: rebuild the profile")
        digest = meta.get("npz_sha256")
        if not isinstance(digest, str):
            raise ValueError(f"{PROFILE_JSON} records no sha256 of {PROFILE_NPZ}: rebuild the "
                             "profile")
        npz_bytes = (directory / PROFILE_NPZ).read_bytes()  # hashed and parsed: the same bytes
        if hashlib.sha256(npz_bytes).hexdigest() != digest:
            raise ValueError(f"{PROFILE_NPZ} does not match the sha256 recorded in {PROFILE_JSON}: "
                             "rebuild the profile")
        with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
            arrays = {key: _readonly(npz[key]) for key in npz.files}
        columns = []
        for i, scalars in enumerate(meta["columns"]):
            fields: dict[str, Any] = {f: arrays.get(f"c{i}.{f}")
                                      for f in ("values", "unique_values", "unique_counts")}
            columns.append(ColumnProfile(**scalars, **fields))
        return cls(
            tuple(columns),
            rows=int(meta["rows"]),
            max_exact_values=int(meta["max_exact_values"]),
            meta=meta.get("meta"),
        )


def build_profile(
    frame: Any,
    *,
    feature_types: Mapping[str, Kind] | None = None,
    outputs: Iterable[str] | None = None,
    columns: Iterable[str] | None = None,
    max_exact_values: int = 100_000,
    max_categories: int = 10_000,
    progress: bool | None = None,
) -> Profile:
    """Profile a pandas DataFrame or a mapping of 1-D arrays.

    Types are inferred as Evidently does, from the reference: float -> numeric; integer ->
    categorical with at most 10 distinct values, else numeric; bool, string, object and pandas
    category -> categorical. `feature_types` overrides per column. Columns named in `outputs` are
    profiled the same way and marked as model outputs (prediction drift). `columns` restricts the
    profile (default: every column). Numeric columns with more than `max_exact_values` finite values
    keep that many evenly spaced quantiles instead (approximate results). `progress`: show a
    progress bar (default: when stderr is a terminal and the build is large).
    """
    if max_exact_values < 2:
        raise ValueError("max_exact_values must be at least 2")
    data = frame if isinstance(frame, Mapping) else from_frame(frame)
    names = list(data) if columns is None else list(columns)
    output_set = set(outputs or ())
    types = dict(feature_types or {})
    for name in (*output_set, *types):
        if name not in names:
            raise ValueError(f"column {name!r} named in outputs/feature_types is not profiled")
    arrays = {name: _as_1d(name, data[name]) for name in names}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    rows = lengths.pop() if lengths else 0
    if progress is None:
        progress = sys.stderr.isatty() and rows * len(names) >= _PROGRESS_MIN_ROWS
    iterator: Iterable[str] = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="profiling", unit="col", file=sys.stderr)
    profiled = []
    for name in iterator:
        array = arrays[name]
        kind = types.get(name) or infer_kind(array)
        role: Role = "output" if name in output_set else "feature"
        if kind == "numeric":
            profiled.append(_numeric(name, role, array, max_exact_values))
        elif kind == "categorical":
            profiled.append(_categorical(name, role, array, max_categories))
        else:
            raise ValueError(f"unknown kind {kind!r} for column {name!r}")
    return Profile(tuple(profiled), rows=rows, max_exact_values=max_exact_values)


def infer_kind(array: np.ndarray) -> Kind:
    """Evidently's rule (core/datasets.py infer_column_type), minus text: strings are categorical."""
    kind = array.dtype.kind
    if kind == "f":
        return "numeric"
    if kind in "iu":
        return "categorical" if np.unique(array).size <= INTEGER_CARDINALITY_LIMIT else "numeric"
    if kind in "bOUS":
        return "categorical"
    raise ValueError(f"cannot profile a column of dtype {array.dtype}")


def is_missing(value: Any) -> bool:
    """None or a floating NaN: what pandas and Evidently drop as missing."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def pandas_std(values: np.ndarray) -> float:
    """Population std exactly as pandas computes it for np.std(Series) (Evidently's normaliser).

    Two-pass in float64; for float32 input the variance is rounded to float32 and its square root
    taken in float32, as pandas' nanvar/nanstd do, unless the variance overflows float32 (values
    spread wider than about 1.8e19): pandas then gives inf, which would make every normed
    Wasserstein distance 0 and the profile unsavable (JSON has no inf); here the float64 std.
    """
    n = values.size
    avg = values.sum(dtype=np.float64) / n
    var = ((avg - values) ** 2).sum(dtype=np.float64) / n
    if values.dtype == np.float32 and var <= np.finfo(np.float32).max:
        return float(np.sqrt(np.float32(var)))
    return float(np.sqrt(var))


def _numeric(name: str, role: Role, array: np.ndarray, max_exact: int) -> ColumnProfile:
    if array.dtype.kind not in "biuf":
        raise ValueError(f"column {name!r} of dtype {array.dtype} cannot be numeric")
    source = array if array.dtype.kind == "f" else array.astype(np.float64)
    nan = np.isnan(source)
    finite = np.isfinite(source)
    clean = source[finite]
    values = np.sort(clean.astype(np.float64))
    count = int(values.size)
    common: dict[str, Any] = {
        "name": name, "kind": "numeric", "role": role, "dtype": str(array.dtype),
        "rows": int(array.size), "count": count, "missing": int(nan.sum()),
        "non_finite": int((~finite & ~nan).sum()),
    }
    if count == 0:
        return ColumnProfile(**common, n_unique=0, unique_values=None, unique_counts=None)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    n_unique = int(starts.size)
    unique_values = unique_counts = None
    if n_unique <= FEW_UNIQUE:
        unique_values = _readonly(values[starts])
        unique_counts = _readonly(np.diff(np.r_[starts, count]).astype(np.int64))
    exact = count <= max_exact
    if not exact:
        k = np.arange(max_exact, dtype=np.int64)
        # quantile (2k + 1) / (2K), inverted-CDF: every kept point sits inside its 1/K of the mass.
        values = values[((2 * k + 1) * count + 2 * max_exact - 1) // (2 * max_exact) - 1]
    return ColumnProfile(
        **common,
        n_unique=n_unique,
        unique_values=unique_values,
        unique_counts=unique_counts,
        values=_readonly(values),
        exact=exact,
        mean=float(clean.sum(dtype=np.float64) / count),
        std=pandas_std(clean),
        min=float(values[0] if exact else clean.min()),
        max=float(values[-1] if exact else clean.max()),
    )


def _categorical(name: str, role: Role, array: np.ndarray, max_categories: int) -> ColumnProfile:
    kind = array.dtype.kind
    if kind == "S":
        array = np.char.decode(array, "utf-8")
        kind = "U"
    missing = 0
    if kind in "OU":
        counts = Counter(array.tolist())
        for key in [k for k in counts if is_missing(k)]:
            missing += counts.pop(key)
        keys = list(counts)
        numbers = (int, float, np.integer, np.floating)
        if all(isinstance(k, str) for k in keys):
            categories = np.array(sorted(keys), dtype=str)
        elif all(isinstance(k, (bool, np.bool_)) for k in keys):
            categories = np.array(sorted(keys), dtype=bool)
        elif all(isinstance(k, numbers) and not isinstance(k, (bool, np.bool_)) for k in keys):
            as_int = all(isinstance(k, (int, np.integer)) for k in keys)
            categories = np.array(sorted(keys), dtype=np.int64 if as_int else np.float64)
        else:  # mixed objects: compare by their string form
            merged: Counter[str] = Counter()
            for k, v in counts.items():
                merged[str(k)] += v
            counts = merged
            categories = np.array(sorted(merged), dtype=str)
        if categories.size == 0:
            categories = np.array([], dtype=str)
        tally = np.array([counts[k] for k in categories.tolist()], dtype=np.int64)
    else:
        values = array
        if kind == "f":
            nan = np.isnan(array)
            missing = int(nan.sum())
            values = array[~nan]
        categories, tally = np.unique(values, return_counts=True)
        tally = tally.astype(np.int64)
    if categories.size > max_categories:
        raise ValueError(
            f"column {name!r} has {categories.size} distinct values, more than max_categories="
            f"{max_categories}: it is text or an id, not a category; leave it out of the profile"
        )
    return ColumnProfile(
        name=name, kind="categorical", role=role, dtype=str(array.dtype), rows=int(array.size),
        count=int(tally.sum()), missing=missing, non_finite=0, n_unique=int(categories.size),
        unique_values=_readonly(categories), unique_counts=_readonly(tally),
    )


def _as_1d(name: str, value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"column {name!r} must be 1-D, got shape {array.shape}")
    return array


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _write_npz(file: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """np.savez's format with a fixed timestamp per member: the same profile, the same bytes."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
