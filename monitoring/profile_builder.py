"""Build a model version's reference profile from a data file and save it beside the version.

Feature columns are the model's input tensor columns (monitoring.columns); other columns in the
file (a target, ids) are ignored. Output columns come from running the model on the reference
features (``model_outputs``: a function the caller supplies, so that monitoring never loads a
model itself; vigil.tools.profiles gives it serving's runtime) or, failing that, from the file when it
holds every output column. The profile records its data
file, the tensor -> column layout and the model's sha256 in ``Profile.meta``; it records no
clock time, so building twice from the same data gives the same profile.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.columns import TensorColumns, layout_for, tensor_columns
from monitoring.profile import Profile, build_profile, load_data
from monitoring.settings import MonitorSettings
from vigil.core.repository import read_manifest

Tensors = dict[str, np.ndarray]
ModelOutputs = Callable[[Tensors], Tensors]  # one chunk of input tensors -> every output tensor

CHUNK_ROWS = 65_536  # rows per model run when computing outputs
_PROGRESS_MIN_CELLS = 1_000_000  # rows x columns above which a build shows progress by default


def build_version_profile(
    version_dir: str | Path,
    data_path: str | Path,
    *,
    model_outputs: ModelOutputs | None = None,
    settings: MonitorSettings | None = None,
    progress: bool | None = None,
) -> Profile:
    """Profile `data_path` (parquet, CSV or npz) for the version in `version_dir`, save it there
    as profile.json + profile.npz, and return it. With `model_outputs`, the output columns are
    the model's answers on the reference features."""
    version_dir, data_path = Path(version_dir), Path(data_path)
    settings = settings or MonitorSettings()
    manifest = read_manifest(version_dir)
    data = load_data(data_path)
    feature_names = manifest.metadata.get("feature_names")
    inputs = [(s.name, s.shape) for s in manifest.inputs]
    outputs = [(s.name, s.shape) for s in manifest.outputs]
    names = feature_names if len(inputs) == 1 else None
    in_layout = [
        tensor_columns(n, s, feature_names=names, width=_width(n, s, data, names)) for n, s in inputs
    ]
    rows = _rows(data)
    columns: dict[str, np.ndarray] = {}
    for t in in_layout:
        columns.update(_columns_of(t, data, "input"))
    cells = rows * max(len(columns), 1)
    if progress is None:
        progress = sys.stderr.isatty() and cells >= _PROGRESS_MIN_CELLS
    source = "none"
    out_arrays: dict[str, np.ndarray] = {}
    if model_outputs is not None:
        tensors = {t.tensor: t.join(columns) for t in in_layout}
        out_arrays = run_in_chunks(model_outputs, tensors, rows, progress)
        source = "model"
    widths = {t.tensor: t.width for t in in_layout if t.width is not None}
    widths.update({n: a.shape[1] for n, a in out_arrays.items() if a.ndim == 2})
    if not out_arrays:
        widths.update({n: w for n, s in outputs if (w := _width(n, s, data, None)) is not None})
    layout = layout_for(inputs, outputs, feature_names=feature_names, widths=widths)
    if out_arrays:
        for t in layout.outputs:
            split = t.split(out_arrays[t.tensor])
            columns.update({k: np.ascontiguousarray(v) for k, v in split.items()})
    elif layout.output_columns and all(_present(t, data) for t in layout.outputs):
        for t in layout.outputs:
            columns.update(_columns_of(t, data, "output"))
        source = "data"
    output_columns = list(layout.output_columns) if source != "none" else []
    profiled = [*layout.feature_columns, *output_columns]
    profile = build_profile(
        columns,
        columns=profiled,
        outputs=output_columns,
        feature_types={k: v for k, v in settings.feature_types.items() if k in profiled},
        max_exact_values=settings.max_exact_values,
        max_categories=settings.max_categories,
        progress=progress,
    )
    meta = {
        "model": manifest.name,
        "version": manifest.version,
        "model_sha256": manifest.sha256,
        "data": _relative(data_path, version_dir),
        "outputs": source,
        "layout": layout.to_dict(),
    }
    profile = Profile(profile.columns, profile.rows, profile.max_exact_values, meta=meta)
    profile.save(version_dir)
    return profile


def run_in_chunks(
    model_outputs: ModelOutputs, tensors: Mapping[str, np.ndarray], rows: int, progress: bool = False
) -> Tensors:
    """Every output of the model on `tensors` (rows first), CHUNK_ROWS rows per call."""
    starts: Any = range(0, max(rows, 1), CHUNK_ROWS)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="model outputs", unit="chunk", file=sys.stderr)
    parts: dict[str, list[np.ndarray]] = {}
    for start in starts:
        chunk = {k: v[start : start + CHUNK_ROWS] for k, v in tensors.items()}
        for name, array in model_outputs(chunk).items():
            parts.setdefault(name, []).append(np.asarray(array))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _rows(data: Mapping[str, np.ndarray]) -> int:
    lengths = {int(np.shape(a)[0]) for a in data.values() if np.ndim(a) >= 1}
    if len(lengths) > 1:
        raise ValueError(f"data columns have different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _width(
    tensor: str, shape: Any, data: Mapping[str, np.ndarray], names: Any
) -> int | None:
    """The width of a 2-D tensor whose declared width is dynamic, read from the data."""
    if len(shape) != 2 or shape[1] != -1:
        return None
    if tensor in data and np.ndim(data[tensor]) == 2:
        return int(np.shape(data[tensor])[1])
    if names and all(n in data for n in names):
        return len(names)
    k = 0
    while f"{tensor}_{k}" in data:
        k += 1
    return k or None


def _present(t: TensorColumns, data: Mapping[str, np.ndarray]) -> bool:
    if t.columns and all(c in data and np.ndim(data[c]) == 1 for c in t.columns):
        return True
    return t.tensor in data and t.mismatch(data[t.tensor]) is None


def _columns_of(t: TensorColumns, data: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The tensor's columns from the data: by column name, or split from a tensor-shaped array."""
    if t.ndim == 2 and not t.columns:
        raise ValueError(f"cannot tell the width of {kind} {t.tensor!r} from the data")
    if all(c in data and np.ndim(data[c]) == 1 for c in t.columns):
        return {c: np.asarray(data[c]) for c in t.columns}
    if t.tensor in data and t.mismatch(data[t.tensor]) is None and t.ndim == 2:
        return {k: np.ascontiguousarray(v) for k, v in t.split(np.asarray(data[t.tensor])).items()}
    missing = [c for c in t.columns if c not in data]
    shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise ValueError(
        f"the data lacks {len(missing)} column(s) of {kind} {t.tensor!r}: {shown} "
        f"(columns follow monitoring.columns: feature_names, or {t.tensor}_0..)"
    )


def _relative(path: Path, base: Path) -> str:
    """The data file relative to the version directory when inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(base.resolve()))
    except ValueError:
        return str(path)
