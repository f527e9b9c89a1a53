"""Publishing an ONNX file as a new model version: the file checked and loaded, its signature
read from the graph, its lineage and reference profile written with it, atomically, and audited.

onnx and onnxruntime are imported when a file is published, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from vigil.core import audit, repository
from vigil.core.repository import (
    MANIFEST_FILE,
    MAX_BATCH_ROWS,
    ModelVersion,
    RepositoryError,
    VersionManifest,
)
from vigil.core.tensors import ONNX_TO_V2, TensorSpec

if TYPE_CHECKING:
    import onnx

DEFAULT_MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit for one serialized model
_CHUNK = 1024 * 1024
_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")  # SHA-1 or SHA-256 object names, abbreviated or not


class PublishError(ValueError):
    """A file or an argument that cannot be published; the message says which and why."""


@dataclass(frozen=True)
class Published:
    """A version written by publish_file, and the audit entry that records it."""

    version: ModelVersion
    entry: dict[str, Any]
    profile_rows: int | None  # rows of the reference profile, None without --reference


def publish_file(
    root: Path,
    source: Path,
    name: str,
    *,
    actor: str,
    version: str | None = None,
    reference: Path | None = None,
    outputs_from_model: bool = False,
    max_batch_rows: int | None = None,
    metadata: dict[str, Any] | None = None,
    training_data: Path | None = None,
    code_commit: str | None = None,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    progress: bool | None = None,
    inherit_metadata: bool = True,
) -> Published:
    """Publish the ONNX file `source` as `name`/`version` (default: the next whole number) in the
    repository `root`. Everything is checked before anything is written; PublishError says what
    was refused. `max_batch_rows` (1 or more) declares that rows of several requests may share a
    run; None: never. With `reference`, the version's reference profile is inside it from the
    moment it becomes visible. A new version of a served model takes production's descriptive
    metadata (INHERITED_METADATA: feature names, classes, the gate's held-out set) unless
    `inherit_metadata` is off; `metadata` overrides it key by key."""
    root, source = Path(root), Path(source)
    for label, value in (("model name", name), ("version", version)):
        if value is not None and not repository.valid_name(value):
            raise PublishError(
                f"invalid {label} {value!r}: 1 to 128 letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
    if max_batch_rows is not None and not 1 <= max_batch_rows <= MAX_BATCH_ROWS:
        raise PublishError(
            f"--max-batch-rows must be from 1 to {MAX_BATCH_ROWS} (rows of several requests "
            f"stacked into one run), not {max_batch_rows}"
        )
    if code_commit is not None and not _COMMIT.fullmatch(code_commit):
        raise PublishError(f"code commit {code_commit!r} is not a git commit id (7 to 64 hex digits)")
    version = version or next_version(root, name)
    if (root / name / version / MANIFEST_FILE).exists():
        raise PublishError(
            f"{name}/{version} already exists in {root}: versions are immutable; publish this "
            f"file as a new version (the next free one is {next_version(root, name)})"
        )

    onnx_bytes = read_model_file(source, max_model_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    inputs, outputs = signature(source, onnx_bytes)
    published_at = datetime.now(UTC)
    lineage: dict[str, Any] = {
        "published_by": actor,
        "published_at": published_at.isoformat(timespec="seconds"),
        "source_file": source.name,
        "source_sha256": sha,
    }
    if training_data is not None:
        lineage["training_data"] = describe_training_data(training_data)
    if code_commit is not None:
        lineage["code_commit"] = code_commit.lower()
    if params is not None:
        lineage["params"] = params
    if metrics is not None:
        lineage["metrics"] = metrics
    if inherit_metadata:
        inherited, parent = _production_metadata(root, name)
        if parent is not None:
            metadata = {**inherited, **(metadata or {})}
            lineage["metadata_from"] = f"{name}/{parent}"
    try:  # the manifest checks max_batch_rows against the signature before anything is written
        manifest = VersionManifest(
            name=name, version=version, sha256=sha, inputs=inputs, outputs=outputs,
            created=published_at.isoformat(timespec="seconds"), metadata=metadata or {},
            lineage=lineage, max_batch_rows=max_batch_rows or 0,
        )
    except RepositoryError as exc:
        raise PublishError(f"{exc} (publish it without --max-batch-rows)") from None

    extra: dict[str, bytes] = {}
    profile_rows = None
    if reference is not None:
        extra, profile_rows = _reference_profile(
            manifest, onnx_bytes, reference, outputs_from_model, progress
        )
    try:
        written = repository.publish(
            root, name, version, onnx_bytes, inputs, outputs, metadata=manifest.metadata,
            created=published_at, max_batch_rows=manifest.max_batch_rows, lineage=lineage,
            extra_files=extra,
        )
    except RepositoryError as exc:
        raise PublishError(str(exc)) from None
    entry = audit.record(
        root, actor=actor, action="publish", model=name, to_version=version,
        details={"sha256": sha, "source_file": source.name},
    )
    return Published(written, entry, profile_rows)


INHERITED_METADATA = ("task", "feature_names", "classes", "evaluation")


def _production_metadata(root: Path, name: str) -> tuple[dict[str, Any], str | None]:
    """The descriptive metadata of the model's production version, and which version that is."""
    from vigil.core.aliases import read_aliases

    try:
        versions = {v.manifest.version: v for v in repository.scan(root, [name])[name]}
    except RepositoryError:
        return {}, None  # a new model
    parent = read_aliases(root, name).production_of(list(versions))
    if parent is None:
        return {}, None
    meta = versions[parent].manifest.metadata
    return {k: meta[k] for k in INHERITED_METADATA if k in meta}, parent


def next_version(root: Path, name: str) -> str:
    """One above the highest whole-number version of `name` ("1" for a new model). Folders
    without a manifest count too: a half-written version must not be published over."""
    model_dir = Path(root) / name
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()] \
        if model_dir.is_dir() else []
    return str(max(numbers, default=0) + 1)


def read_model_file(source: Path, max_bytes: int) -> bytes:
    """The file's bytes; one over `max_bytes` is refused before it is read."""
    if not source.exists():
        raise PublishError(f"{source}: no such file")
    if not source.is_file():
        raise PublishError(f"{source} is not a file")
    size = source.stat().st_size
    if size > max_bytes:
        raise PublishError(
            f"{source} is {size} bytes, above the limit of {max_bytes} (--max-model-bytes)"
        )
    with source.open("rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise PublishError(f"{source} grew above the limit of {max_bytes} bytes while being read")
    if not data:
        raise PublishError(f"{source} is empty, not an ONNX model")
    return data


def signature(
    source: Path, onnx_bytes: bytes
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the model as onnxruntime loads it, after refusing external data.
    Shapes use -1 for symbolic or unknown dimensions."""
    import onnx

    from serving.runtime import cpu_session

    try:
        proto: onnx.ModelProto | None = onnx.load_model_from_string(onnx_bytes)
        parse_error = ""
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        proto, parse_error = None, str(exc) or type(exc).__name__
    if proto is not None:
        _refuse_external_data(source, proto)
    try:
        # From the bytes, as serving/runtime.py loads a version: nothing else is read.
        session = cpu_session(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise PublishError(f"{source} is not a model onnxruntime can load: {exc}") from None
    if proto is None:
        raise PublishError(f"{source} is not an ONNX model onnx can parse: {parse_error}")
    declared = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    return (
        tuple(_spec("input", a, declared) for a in session.get_inputs()),
        tuple(_spec("output", a, declared) for a in session.get_outputs()),
    )


def _spec(kind: str, arg: Any, declared: dict[str, onnx.ValueInfoProto]) -> TensorSpec:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        raise PublishError(
            f"{kind} '{arg.name}' is {arg.type}; Vigil serves tensors of "
            f"{', '.join(sorted(ONNX_TO_V2.values()))} only"
        )
    info = declared.get(arg.name)
    if info is not None and not info.type.tensor_type.HasField("shape"):
        raise PublishError(
            f"{kind} '{arg.name}' has no shape in the graph (unknown rank): give it one, with "
            "symbolic names for the dimensions that vary"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _refuse_external_data(source: Path, proto: onnx.ModelProto) -> None:
    """Refuse tensors kept outside the file. Locations that leave the file's folder (absolute,
    '..', a link that resolves elsewhere) are named as such; the others are refused too, because
    a version is loaded from its model.onnx bytes alone, verified against their sha256."""
    import onnx

    base = source.parent
    external: list[tuple[str, str]] = []
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            external.append((tensor.name, entries.get("location", "")))
    if not external:
        return
    for tensor_name, location in external:
        if _escapes(location, base):
            raise PublishError(
                f"{source}: tensor '{tensor_name}' keeps its data at '{location}', outside the "
                f"model file's folder {base.resolve()}; refused (a model must not read other "
                "files)"
            )
    shown = ", ".join(sorted({loc for _, loc in external}))
    raise PublishError(
        f"{source} keeps tensor data in external files ({shown}); Vigil loads a version from its "
        "model.onnx bytes alone, checked against the sha256 in model.yaml, so inline the data "
        "first: onnx.save(onnx.load(path), new_path, save_as_external_data=False) (a model above "
        "protobuf's 2 GiB limit cannot be inlined and cannot be served)"
    )


def _escapes(location: str, base: Path) -> bool:
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if not location or posix.is_absolute() or windows.is_absolute() or windows.drive:
        return True
    if ".." in posix.parts or ".." in windows.parts:
        return True
    return not (base / location).resolve().is_relative_to(base.resolve())


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers, sparse ones, and node attributes in the
    graph, its subgraphs and the model's functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _reference_profile(
    manifest: VersionManifest, onnx_bytes: bytes, reference: Path, outputs_from_model: bool,
    progress: bool | None,
) -> tuple[dict[str, bytes], int]:
    """The version's profile and the copy of its reference data, built before it is written;
    returns their files' bytes and the profile's rows."""
    from vigil.tools.profiles import profile_unwritten  # needs onnxruntime and monitoring

    if not reference.is_file():
        raise PublishError(f"reference data {reference}: no such file")
    try:
        profiled = profile_unwritten(
            manifest, onnx_bytes, reference, outputs_from_model=outputs_from_model,
            progress=progress,
        )
    except (ValueError, KeyError, OSError, RepositoryError) as exc:
        raise PublishError(f"reference data {reference}: {exc}") from None
    return profiled.files, profiled.profile.rows


def describe_training_data(path: Path) -> dict[str, Any]:
    """{file, sha256, rows} of a training data file; rows for .csv, .parquet, .npz and .npy."""
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"training data {path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    doc: dict[str, Any] = {"file": str(path.resolve()), "sha256": digest.hexdigest()}
    try:
        rows = count_rows(path)
    except (ValueError, OSError, KeyError) as exc:
        raise PublishError(f"training data {path}: cannot count its rows: {exc}") from None
    if rows is not None:
        doc["rows"] = rows
    return doc


def count_rows(path: Path) -> int | None:
    """Rows of a data file, read the way reference data is (monitoring.profile.load_data), or
    from the header alone where the format has one (.npy, .parquet); None for other formats."""
    import numpy as np

    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        return int(array.shape[0]) if array.ndim else 1
    if suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            pass
        else:
            return int(pq.read_metadata(path).num_rows)
    if suffix in (".parquet", ".pq", ".csv", ".npz"):
        from monitoring.profile import load_data

        lengths = {len(a) for a in load_data(path).values() if np.ndim(a) >= 1}
        if len(lengths) > 1:
            raise ValueError(f"its columns have different lengths: {sorted(lengths)}")
        return lengths.pop() if lengths else 0
    return None


def current_commit(cwd: Path) -> str | None:
    """`git rev-parse HEAD` in `cwd`, or None outside a git work tree (or without git)."""
    try:
        result = subprocess.run(  # nosec B607 # git from PATH, as the user runs it
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=cwd, capture_output=True,
            text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and _COMMIT.fullmatch(commit) else None
