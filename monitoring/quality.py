"""Data quality of a window against its reference profile: schema, missing, range, unseen values.

`prepare_window` checks a window (a mapping of 1-D arrays by column) against the profile once and
keeps the cleaned values the drift tests read (numeric: sorted finite float64; categorical: counts
per reference category plus the unseen values); `compute_quality` summarises it.

Definitions (every ratio is 0.0 when its denominator is 0, never NaN):
- missing: NaN or None; missing_ratio = missing / rows of the column.
- non_finite: +-inf in a numeric column (dropped from drift tests, as Evidently does).
- out_of_range: numeric values (+-inf included) below the reference min or above the reference max;
  share over the column's non-missing values. A column whose reference is empty has no range: 0.
- unseen: categorical values absent from the reference; count of rows, share over non-missing rows,
  distinct count and up to 10 examples (as strings).
- schema violations: a profiled column absent from the window ("missing_column"), a column whose
  dtype cannot hold the profiled kind ("wrong_dtype": e.g. strings for a numeric column), a column
  that is not 1-D ("wrong_shape"), and a window column the profile does not know
  ("unexpected_column"). Columns with a violation are skipped by the drift tests.
- failed: a column whose preparation or statistics raised (an object column holding an integer
  too large for float64, an unhashable category, ...) has ``error`` set to the reason and zero
  counts; it is "failed" for the drift tests too. Every other column is still evaluated: one
  column's failure never loses the window.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitoring.profile import ColumnProfile, Kind, Profile, Role, is_missing

Violation = Literal["missing_column", "wrong_dtype", "wrong_shape", "unexpected_column"]
_EXAMPLES = 10
_ACCEPTED_KINDS = {  # reference category dtype kind -> window dtype kinds that can be compared
    "U": "OUS",
    "i": "biufO",
    "u": "biufO",
    "b": "biufO",
    "f": "biufO",
}


@dataclass(frozen=True, eq=False)
class PreparedColumn:
    """One window column, checked and cleaned once for both quality and drift."""

    name: str
    violation: Violation | None
    rows: int = 0
    missing: int = 0
    non_finite: int = 0
    values: np.ndarray | None = None  # numeric: sorted finite float64 values
    counts: np.ndarray | None = None  # categorical: int64 counts aligned with reference categories
    unseen_values: tuple[Any, ...] = ()  # categorical: values not in the reference ...
    unseen_counts: np.ndarray | None = None  # ... and how many rows each
    dtype: str = ""  # numeric: the window column's dtype as it arrived (histogram edges follow it)
    error: str | None = None  # why the column could not be prepared (see failure_reason)

    @property
    def count(self) -> int:
        """Usable values: what the drift tests see."""
        return self.rows - self.missing - self.non_finite


@dataclass(frozen=True, eq=False)
class PreparedWindow:
    rows: int
    columns: Mapping[str, PreparedColumn]  # every profiled column, in profile order
    unexpected: tuple[str, ...]


@dataclass(frozen=True)
class SchemaViolation:
    column: str
    violation: Violation
    detail: str


@dataclass(frozen=True)
class ColumnQuality:
    name: str
    kind: Kind
    role: Role
    present: bool  # in the window, 1-D, with a usable dtype
    rows: int
    missing: int
    missing_ratio: float
    non_finite: int
    out_of_range: int
    out_of_range_share: float
    unseen: int
    unseen_share: float
    unseen_distinct: int
    unseen_examples: tuple[str, ...]
    error: str | None = None  # why this column's statistics failed; its counts are then 0


@dataclass(frozen=True)
class QualityResult:
    rows: int
    columns: tuple[ColumnQuality, ...]
    violations: tuple[SchemaViolation, ...]

    @property
    def missing_columns(self) -> tuple[str, ...]:
        return tuple(v.column for v in self.violations if v.violation == "missing_column")

    @property
    def unexpected_columns(self) -> tuple[str, ...]:
        return tuple(v.column for v in self.violations if v.violation == "unexpected_column")

    def column(self, name: str) -> ColumnQuality:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def failure_reason(exc: BaseException) -> str:
    """How a column statistic that raised is reported: the exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


def compute_quality(profile: Profile, window: Mapping[str, Any]) -> QualityResult:
    """Quality of one window (mapping of 1-D arrays by column name) against the profile."""
    return quality_of(profile, prepare_window(profile, window))


def prepare_window(profile: Profile, window: Mapping[str, Any]) -> PreparedWindow:
    """Check every profiled column of the window once and keep what the statistics need."""
    arrays: dict[str, np.ndarray] = {}
    prepared: dict[str, PreparedColumn] = {}
    for col in profile.columns:
        if col.name not in window:
            prepared[col.name] = PreparedColumn(col.name, "missing_column")
            continue
        array = np.asarray(window[col.name])
        if array.ndim != 1:
            rows = array.shape[0] if array.ndim else 0
            prepared[col.name] = PreparedColumn(col.name, "wrong_shape", rows=rows)
            continue
        arrays[col.name] = array
    lengths = {a.size for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"window columns have different lengths: {sorted(lengths)}")
    if not lengths:  # no profiled column readable: the window's size from any other column
        lengths = {np.shape(v)[0] for v in window.values() if np.ndim(v) >= 1}
    rows = max(lengths, default=0)
    numeric = [c for c in profile.columns if c.kind == "numeric" and c.name in arrays]
    prepared.update(_prepare_numeric(numeric, arrays, rows))
    for col in profile.columns:
        if col.kind == "categorical" and col.name in arrays:
            try:
                prepared[col.name] = _prepare_categorical(col, arrays[col.name])
            except Exception as exc:  # noqa: BLE001 - this column fails, not the window
                prepared[col.name] = PreparedColumn(
                    col.name, None, rows=arrays[col.name].size, error=failure_reason(exc)
                )
    ordered = {c.name: prepared[c.name] for c in profile.columns}
    unexpected = tuple(sorted(str(k) for k in window if k not in profile))
    return PreparedWindow(rows=rows, columns=ordered, unexpected=unexpected)


def quality_of(profile: Profile, window: PreparedWindow) -> QualityResult:
    """QualityResult from an already prepared window (see prepare_window)."""
    violations = []
    columns = []
    for col in profile.columns:
        p = window.columns[col.name]
        if p.violation is not None:
            violations.append(SchemaViolation(col.name, p.violation, _detail(col, p.violation)))
        error = p.error
        if error is None:
            try:
                columns.append(_column_quality(col, p))
                continue
            except Exception as exc:  # noqa: BLE001 - this column fails, not the window
                error = failure_reason(exc)
        columns.append(
            ColumnQuality(
                name=col.name, kind=col.kind, role=col.role, present=p.violation is None,
                rows=p.rows, missing=0, missing_ratio=0.0, non_finite=0, out_of_range=0,
                out_of_range_share=0.0, unseen=0, unseen_share=0.0, unseen_distinct=0,
                unseen_examples=(), error=error,
            )
        )
    for name in window.unexpected:
        violations.append(SchemaViolation(name, "unexpected_column", "not in the reference profile"))
    return QualityResult(rows=window.rows, columns=tuple(columns), violations=tuple(violations))


def _column_quality(col: ColumnProfile, p: PreparedColumn) -> ColumnQuality:
    present = p.violation is None
    non_missing = p.rows - p.missing
    out_of_range = _out_of_range(col, p) if present else 0
    unseen = int(p.unseen_counts.sum()) if p.unseen_counts is not None else 0
    return ColumnQuality(
        name=col.name,
        kind=col.kind,
        role=col.role,
        present=present,
        rows=p.rows,
        missing=p.missing,
        missing_ratio=_ratio(p.missing, p.rows),
        non_finite=p.non_finite,
        out_of_range=out_of_range,
        out_of_range_share=_ratio(out_of_range, non_missing),
        unseen=unseen,
        unseen_share=_ratio(unseen, non_missing),
        unseen_distinct=len(p.unseen_values),
        unseen_examples=tuple(str(v) for v in p.unseen_values[:_EXAMPLES]),
    )


def _prepare_numeric(
    cols: list[ColumnProfile], arrays: dict[str, np.ndarray], rows: int
) -> dict[str, PreparedColumn]:
    out: dict[str, PreparedColumn] = {}
    good: list[tuple[str, np.ndarray]] = []
    # One block, sorted in one call (NaN sorts last, -inf first, +inf just before NaN): each row's
    # finite values are then a contiguous, sorted slice the tests and range checks can share.
    block = np.empty((len(cols), rows), dtype=np.float64)
    for col in cols:
        try:
            array = _as_numeric(arrays[col.name])  # a window column of objects arrives as float64
            if array is not None:
                block[len(good)] = array
        except Exception as exc:  # noqa: BLE001 - e.g. an integer beyond float64: this column fails
            out[col.name] = PreparedColumn(col.name, None, rows=rows, error=failure_reason(exc))
            continue
        if array is None:
            out[col.name] = PreparedColumn(col.name, "wrong_dtype", rows=rows)
        else:
            good.append((col.name, array))
    if not good:
        return out
    block = block[: len(good)]
    block.sort(axis=1)
    nan = np.isnan(block).sum(axis=1) if rows else np.zeros(len(good), dtype=np.int64)
    for i, (name, array) in enumerate(good):
        row = block[i]
        end = rows - int(nan[i])
        lo = int(np.searchsorted(row[:end], -np.inf, side="right")) if end and row[0] == -np.inf else 0
        hi = end
        if end and row[end - 1] == np.inf:
            hi = int(np.searchsorted(row[:end], np.inf, side="left"))
        values = row[lo:hi]
        values.flags.writeable = False
        out[name] = PreparedColumn(
            name, None, rows=rows, missing=int(nan[i]), non_finite=lo + (end - hi), values=values,
            dtype=str(array.dtype),
        )
    return out


def _as_numeric(array: np.ndarray) -> np.ndarray | None:
    kind = array.dtype.kind
    if kind in "biuf":
        return array
    if kind == "O" and all(
        v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, str))
        for v in array.tolist()
    ):
        return np.array([np.nan if v is None else v for v in array.tolist()], dtype=np.float64)
    return None


def _prepare_categorical(col: ColumnProfile, array: np.ndarray) -> PreparedColumn:
    categories = col.unique_values
    assert categories is not None
    if array.dtype.kind not in _ACCEPTED_KINDS.get(categories.dtype.kind, "O"):
        return PreparedColumn(col.name, "wrong_dtype", rows=array.size)
    if array.dtype.kind == "S":
        array = np.char.decode(array, "utf-8")
    if array.dtype.kind in "OU":
        tally = Counter(array.tolist())
    else:  # numbers: count with numpy, then match as Python scalars (1 == 1.0 == True)
        values, counts = np.unique(array, return_counts=True)
        tally = Counter(dict(zip(values.tolist(), counts.tolist(), strict=True)))
    missing = 0
    for key in [k for k in tally if is_missing(k)]:
        missing += tally.pop(key)
    # reference strings: compare anything else by its string form
    if categories.dtype.kind == "U" and any(not isinstance(k, str) for k in tally):
        merged: Counter[Any] = Counter()
        for k, v in tally.items():
            merged[k if isinstance(k, str) else str(k)] += v
        tally = merged
    index = _category_index(col)
    counts = np.zeros(categories.size, dtype=np.int64)
    unseen: list[tuple[Any, int]] = []
    for key, n in tally.items():
        i = index.get(key)
        if i is None:
            unseen.append((key, n))
        else:
            counts[i] = n
    unseen.sort(key=lambda kv: (-kv[1], str(kv[0])))
    return PreparedColumn(
        col.name,
        None,
        rows=array.size,
        missing=missing,
        counts=counts,
        unseen_values=tuple(k for k, _ in unseen),
        unseen_counts=np.array([n for _, n in unseen], dtype=np.int64),
    )


_INDEX: weakref.WeakKeyDictionary[ColumnProfile, dict[Any, int]] = weakref.WeakKeyDictionary()


def _category_index(col: ColumnProfile) -> dict[Any, int]:
    index = _INDEX.get(col)
    if index is None:
        assert col.unique_values is not None
        index = {value: i for i, value in enumerate(col.unique_values.tolist())}
        _INDEX[col] = index
    return index


def _out_of_range(col: ColumnProfile, p: PreparedColumn) -> int:
    if col.kind != "numeric" or p.values is None:
        return 0
    if col.min is None or col.max is None:  # empty reference: no range to be outside of
        return 0
    below = int(np.searchsorted(p.values, col.min, side="left"))
    above = p.values.size - int(np.searchsorted(p.values, col.max, side="right"))
    return below + above + p.non_finite


def _detail(col: ColumnProfile, violation: Violation) -> str:
    if violation == "missing_column":
        return "profiled column absent from the window"
    if violation == "wrong_shape":
        return "column is not 1-D"
    expected = "numbers" if col.kind == "numeric" else f"categories like the reference ({col.dtype})"
    return f"dtype cannot hold {expected}"


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
