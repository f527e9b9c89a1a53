"""Build a model version's reference profile from a data file and save it, with the data, in the version.

Feature columns are the model's input tensor columns (monitoring.columns); other columns in the
file (a target, ids) are ignored. Output columns come from running the model on the reference
features (``model_outputs``: a function the caller supplies, so that monitoring never loads a
model itself; vigil.tools.profiles gives it serving's runtime) or, failing that, from the file when
it holds every output column.

A version is self-contained: data from outside its folder is copied into it as
``reference.<format>`` (REFERENCE_STEM), and ``Profile.meta`` records the data by its name inside
the version with its sha256 (checked whenever the report reads it), the tensor -> column layout and
the model's sha256. It records no clock time, so building twice from the same data gives the same
profile.
"""

from __future__ import annotations

import hashlib
import io
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.columns import ColumnLayout, TensorColumns, layout_for, tensor_columns
from monitoring.data_files import parse_data
from monitoring.profile import Profile, build_profile
from monitoring.settings import MonitorSettings
from vigil.core.files import atomic_write
from vigil.core.repository import VersionManifest, read_manifest

Tensors = dict[str, np.ndarray]
ModelOutputs = Callable[[Tensors], Tensors]  # one chunk of input tensors -> every output tensor

CHUNK_ROWS = 65_536  # rows per model run when computing outputs
_PROGRESS_MIN_CELLS = 1_000_000  # rows x columns above which a build shows progress by default
# The reference data copied into a version keeps its format: reference.parquet, .csv, .npz.
REFERENCE_STEM = "reference"


def reference_file(suffix: str) -> str:
    """The name, inside a version, of reference data in the format of `suffix` ('.parquet')."""
    return f"{REFERENCE_STEM}{suffix.lower()}"


@dataclass(frozen=True)
class ReferenceData:
    """A version's reference data: its name inside the version, the sha256 of its bytes, the
    columns read from exactly those bytes, and the bytes to copy in when it came from outside."""

    name: str
    sha256: str
    data: dict[str, np.ndarray]
    copy_in: bytes | None  # None: the file is inside the version already


@dataclass(frozen=True)
class _Inputs:
    """The input tensors' columns, read from the reference data."""

    layout: list[TensorColumns]
    columns: dict[str, np.ndarray]
    rows: int


@dataclass(frozen=True)
class _Outputs:
    """The output columns, where they came from ("model", "data" or "none"), and the layout."""

    layout: ColumnLayout
    columns: dict[str, np.ndarray]
    names: list[str]
    source: str


def build_version_profile(
    version_dir: str | Path,
    data_path: str | Path,
    *,
    model_outputs: ModelOutputs | None = None,
    settings: MonitorSettings | None = None,
    progress: bool | None = None,
) -> Profile:
    """Profile `data_path` (parquet, CSV or npz) for the version in `version_dir`, save it there
    as profile.json + profile.npz (with the data itself when it came from outside), and return
    it. With `model_outputs`, the output columns are the model's answers on the reference
    features."""
    version_dir = Path(version_dir)
    settings = settings or MonitorSettings()
    manifest = read_manifest(version_dir)
    reference = read_reference(version_dir, Path(data_path))
    inputs = _input_columns(manifest, reference.data)
    if progress is None:
        cells = inputs.rows * max(len(inputs.columns), 1)
        progress = sys.stderr.isatty() and cells >= _PROGRESS_MIN_CELLS
    outputs = _output_columns(manifest, inputs, reference.data, model_outputs, progress)
    profiled = [*outputs.layout.feature_columns, *outputs.names]
    stats = build_profile(
        {**inputs.columns, **outputs.columns},
        columns=profiled,
        outputs=outputs.names,
        feature_types={k: v for k, v in settings.feature_types.items() if k in profiled},
        max_exact_values=settings.max_exact_values,
        max_categories=settings.max_categories,
        progress=progress,
    )
    meta = {
        "model": manifest.name,
        "version": manifest.version,
        "model_sha256": manifest.sha256,
        "data": reference.name,
        "data_sha256": reference.sha256,
        "outputs": outputs.source,
        "layout": outputs.layout.to_dict(),
    }
    profile = Profile(stats.columns, stats.rows, stats.max_exact_values, meta=meta)
    if reference.copy_in is not None:  # only once the profile is built: a refused build writes nothing
        atomic_write(version_dir / reference.name, reference.copy_in)
    profile.save(version_dir)  # profile.json last: it never names data that is not there
    return profile


def read_reference(version_dir: Path, data_path: Path) -> ReferenceData:
    """The reference data at `data_path`, read once: hashed and parsed from the same bytes. A
    file inside the version keeps its name there; one from outside is to be copied in under
    reference_file(its suffix), so the version never depends on the file it came from."""
    inside = _inside(data_path, version_dir)
    name = inside if inside is not None else reference_file(data_path.suffix)
    raw = data_path.read_bytes()
    data = parse_data(io.BytesIO(raw), data_path.suffix)
    return ReferenceData(name, hashlib.sha256(raw).hexdigest(), data,
                         None if inside is not None else raw)


def _input_columns(manifest: VersionManifest, data: Mapping[str, np.ndarray]) -> _Inputs:
    feature_names = manifest.metadata.get("feature_names")
    inputs = [(s.name, s.shape) for s in manifest.inputs]
    names = feature_names if len(inputs) == 1 else None
    layout = [
        tensor_columns(n, s, feature_names=names, width=_width(n, s, data, names)) for n, s in inputs
    ]
    rows = _rows(data)
    columns: dict[str, np.ndarray] = {}
    for t in layout:
        columns.update(_columns_of(t, data, "input"))
    return _Inputs(layout, columns, rows)


def _output_columns(
    manifest: VersionManifest, inputs: _Inputs, data: Mapping[str, np.ndarray],
    model_outputs: ModelOutputs | None, progress: bool,
) -> _Outputs:
    """The outputs: the model's answers on the inputs when it is given, else the file's output
    columns when it holds them all, else none (the profile then has features only)."""
    outputs = [(s.name, s.shape) for s in manifest.outputs]
    source = "none"
    out_arrays: dict[str, np.ndarray] = {}
    if model_outputs is not None:
        tensors = {t.tensor: t.join(inputs.columns) for t in inputs.layout}
        out_arrays = run_in_chunks(model_outputs, tensors, inputs.rows, progress)
        source = "model"
    widths = {t.tensor: t.width for t in inputs.layout if t.width is not None}
    widths.update({n: a.shape[1] for n, a in out_arrays.items() if a.ndim == 2})
    if not out_arrays:
        widths.update({n: w for n, s in outputs if (w := _width(n, s, data, None)) is not None})
    inputs_signature = [(s.name, s.shape) for s in manifest.inputs]
    layout = layout_for(inputs_signature, outputs,
                        feature_names=manifest.metadata.get("feature_names"), widths=widths)
    columns: dict[str, np.ndarray] = {}
    if out_arrays:
        for t in layout.outputs:
            split = t.split(out_arrays[t.tensor])
            columns.update({k: np.ascontiguousarray(v) for k, v in split.items()})
    elif layout.output_columns and all(_present(t, data) for t in layout.outputs):
        for t in layout.outputs:
            columns.update(_columns_of(t, data, "output"))
        source = "data"
    names = list(layout.output_columns) if source != "none" else []
    return _Outputs(layout, columns, names, source)


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


def _inside(path: Path, base: Path) -> str | None:
    """`path` relative to the version directory `base` when it resolves inside it, else None."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return None
