"""Tabular data files (parquet, CSV, npz; never a pickle) read into plain 1-D numpy columns: the
reference data of profiles and reports, and held-out and training sets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import numpy as np

# The reference data formats load_data reads (never a pickle).
DATA_SUFFIXES = (".parquet", ".pq", ".csv", ".npz")


def load_data(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read reference data from .parquet, .csv or .npz (no pickles) into 1-D arrays by column."""
    return parse_data(path, Path(path).suffix)


def parse_data(source: str | os.PathLike[str] | IO[bytes], suffix: str) -> dict[str, np.ndarray]:
    """Reference data from a file or a binary stream, read as its suffix says (see load_data)."""
    suffix = suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ValueError(
            f"unsupported reference data format {suffix!r}: use .parquet, .csv or .npz"
        )
    if suffix == ".npz":
        with np.load(source, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in npz.files}
    import pandas as pd  # only for reading files; the statistics never need it

    if suffix == ".csv":
        return from_frame(pd.read_csv(source))
    return from_frame(pd.read_parquet(source))


def from_frame(frame: Any) -> dict[str, np.ndarray]:
    """DataFrame -> plain numpy columns (nullable/extension dtypes mapped to NaN / None)."""
    out: dict[str, np.ndarray] = {}
    for name in frame.columns:
        series = frame[name]
        dtype = series.dtype
        if isinstance(dtype, np.dtype):
            out[str(name)] = series.to_numpy()
        elif getattr(dtype, "kind", "O") in "iuf":  # pandas nullable Int64 / Float64
            out[str(name)] = series.to_numpy(dtype=np.float64, na_value=np.nan)
        else:  # string, category, nullable boolean: objects with None for missing
            out[str(name)] = series.astype(object).where(series.notna(), None).to_numpy()
    return out
