"""Publishing an ONNX file as a new model version: the file checked (vigil.tools.model_file),
its lineage, its reference profile and a copy of the reference data written with it, atomically,
and audited. The version needs nothing outside its folder.

onnx and onnxruntime are imported when a file is published, never when this module is imported.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.core import audit, gate_policy, repository
from vigil.core.repository import (
    MANIFEST_FILE,
    MAX_BATCH_ROWS,
    ModelVersion,
    RepositoryError,
    VersionManifest,
)
from vigil.core.tensors import TensorSpec
from vigil.tools.model_file import PublishError, read_model_file, signature

if TYPE_CHECKING:
    from vigil.tools.profiles import UnwrittenProfile

DEFAULT_MAX_MODEL_BYTES = 2 * 1024**3  # protobuf's own limit for one serialized model
_CHUNK = 1024 * 1024
_COMMIT = re.compile(r"[0-9a-fA-F]{7,64}")  # SHA-1 or SHA-256 object names, abbreviated or not


@dataclass(frozen=True)
class Published:
    """A version written by publish_file, and the audit entry that records it."""

    version: ModelVersion
    entry: dict[str, Any]
    profile_rows: int | None  # rows of the reference profile, None without --reference


@dataclass(frozen=True)
class PublishRequest:
    """What publish_file was asked to publish (see its arguments)."""

    root: Path
    source: Path
    name: str
    actor: str
    version: str | None = None
    reference: Path | None = None
    outputs_from_model: bool = False
    max_batch_rows: int | None = None
    metadata: dict[str, Any] | None = None
    training_data: Path | None = None
    code_commit: str | None = None
    params: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    progress: bool | None = None
    inherit_metadata: bool = True
    finite_inputs: tuple[str, ...] = ()


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
    finite_inputs: Iterable[str] = (),
) -> Published:
    """Publish the ONNX file `source` as `name`/`version` (default: the next whole number) in the
    repository `root`. Everything is checked before anything is written; PublishError says what
    was refused. `max_batch_rows` (1 or more) declares that rows of several requests may share a
    run; None: never. With `reference`, the version's reference profile and a copy of the data
    are inside it from the moment it becomes visible. A new version of a served model takes
    production's descriptive metadata (INHERITED_METADATA: feature names, classes, the gate's
    held-out set) unless `inherit_metadata` is off; `metadata` overrides it key by key. Inputs
    named in `finite_inputs` refuse NaN and infinities (TensorSpec.allow_non_finite off)."""
    return publish_request(PublishRequest(
        Path(root), Path(source), name, actor, version=version,
        reference=None if reference is None else Path(reference),
        outputs_from_model=outputs_from_model, max_batch_rows=max_batch_rows, metadata=metadata,
        training_data=None if training_data is None else Path(training_data),
        code_commit=code_commit, params=params, metrics=metrics, max_model_bytes=max_model_bytes,
        progress=progress, inherit_metadata=inherit_metadata, finite_inputs=tuple(finite_inputs),
    ))


def publish_request(request: PublishRequest) -> Published:
    """publish_file's work: check, read, describe, write, audit (in that order)."""
    _check_arguments(request)
    version = request.version or next_version(request.root, request.name)
    _refuse_existing(request.root, request.name, version)
    onnx_bytes = read_model_file(request.source, request.max_model_bytes)
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    inputs, outputs = signature(request.source, onnx_bytes)
    inputs = _finite(inputs, request.finite_inputs)
    published_at = datetime.now(UTC)
    lineage = _lineage(request, sha, published_at)
    metadata, parent = _metadata(request)
    if parent is not None:
        lineage["metadata_from"] = f"{request.name}/{parent}"
    try:  # the manifest checks max_batch_rows against the signature before anything is written
        manifest = VersionManifest(
            name=request.name, version=version, sha256=sha, inputs=inputs, outputs=outputs,
            created=published_at.isoformat(timespec="seconds"), metadata=metadata,
            lineage=lineage, max_batch_rows=request.max_batch_rows or 0,
        )
    except RepositoryError as exc:
        raise PublishError(f"{exc} (publish it without --max-batch-rows)") from None
    written = write_version(
        request.root, manifest, onnx_bytes, reference=request.reference,
        outputs_from_model=request.outputs_from_model, progress=request.progress,
        extra_files=_inherited_files(request, metadata, parent),
    )
    entry = audit.record(
        request.root, actor=request.actor, action="publish", model=request.name,
        to_version=version, details={"sha256": sha, "source_file": request.source.name},
    )
    return Published(written.version, entry, written.profile_rows)


def _check_arguments(request: PublishRequest) -> None:
    """Refuse names, batch sizes and commit ids that cannot be published."""
    for label, value in (("model name", request.name), ("version", request.version)):
        if value is not None and not repository.valid_name(value):
            raise PublishError(
                f"invalid {label} {value!r}: 1 to 128 letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
    rows = request.max_batch_rows
    if rows is not None and not 1 <= rows <= MAX_BATCH_ROWS:
        raise PublishError(
            f"--max-batch-rows must be from 1 to {MAX_BATCH_ROWS} (rows of several requests "
            f"stacked into one run), not {rows}"
        )
    commit = request.code_commit
    if commit is not None and not _COMMIT.fullmatch(commit):
        raise PublishError(f"code commit {commit!r} is not a git commit id (7 to 64 hex digits)")


def _finite(inputs: tuple[TensorSpec, ...], names: tuple[str, ...]) -> tuple[TensorSpec, ...]:
    """The inputs, those in `names` refusing non-finite values; a name not an input is refused."""
    unknown = sorted(set(names) - {s.name for s in inputs})
    if unknown:
        raise PublishError(f"finite inputs {unknown} are not inputs of the model (its inputs: "
                           f"{', '.join(s.name for s in inputs)})")
    return tuple(replace(s, allow_non_finite=False) if s.name in names else s for s in inputs)


def _refuse_existing(root: Path, name: str, version: str) -> None:
    if (root / name / version / MANIFEST_FILE).exists():
        raise PublishError(
            f"{name}/{version} already exists in {root}: versions are immutable; publish this "
            f"file as a new version (the next free one is {next_version(root, name)})"
        )


def _lineage(request: PublishRequest, sha: str, published_at: datetime) -> dict[str, Any]:
    """Where the version came from: who published which file when, from what data and code.
    Files are named, never located: a reader needs their digest, not the publisher's paths."""
    lineage: dict[str, Any] = {
        "published_by": request.actor,
        "published_at": published_at.isoformat(timespec="seconds"),
        "source_file": request.source.name,
        "source_sha256": sha,
    }
    if request.training_data is not None:
        lineage["training_data"] = describe_training_data(request.training_data)
    if request.code_commit is not None:
        lineage["code_commit"] = request.code_commit.lower()
    if request.params is not None:
        lineage["params"] = request.params
    if request.metrics is not None:
        lineage["metrics"] = request.metrics
    return lineage


def _metadata(request: PublishRequest) -> tuple[dict[str, Any], str | None]:
    """The version's metadata: production's descriptive keys overridden by the request's, key
    by key; and production's version, where they came from (None: nothing inherited)."""
    own = dict(request.metadata or {})
    if not request.inherit_metadata:
        return own, None
    inherited, parent = _production_metadata(request.root, request.name)
    return ({**inherited, **own}, parent) if parent is not None else (own, None)


@dataclass(frozen=True)
class Written:
    """A version written by write_version, and the rows of its profile (None without one)."""

    version: ModelVersion
    profile_rows: int | None


def write_version(
    root: Path,
    manifest: VersionManifest,
    onnx_bytes: bytes,
    *,
    reference: Path | None = None,
    outputs_from_model: bool = False,
    progress: bool | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Written:
    """Write the version that `manifest` describes, atomically: the model, `extra_files` and,
    with `reference`, its profile and a copy of that data, so that the version needs nothing
    outside its folder. The profile is built first; PublishError says what was refused."""
    files = dict(extra_files or {})
    profile_rows = None
    if reference is not None:
        profiled = _reference_profile(manifest, onnx_bytes, reference, outputs_from_model,
                                      progress, files)
        files.update(profiled.files)
        profile_rows = profiled.profile.rows
    try:
        version = repository.publish(
            root, manifest.name, manifest.version, onnx_bytes, manifest.inputs,
            manifest.outputs, metadata=manifest.metadata,
            created=datetime.fromisoformat(manifest.created),
            max_batch_rows=manifest.max_batch_rows, lineage=manifest.lineage, extra_files=files,
        )
    except RepositoryError as exc:
        raise PublishError(str(exc)) from None
    return Written(version, profile_rows)


INHERITED_METADATA = ("task", "feature_names", "classes", "evaluation")


def _inherited_files(request: PublishRequest, metadata: dict[str, Any],
                     parent: str | None) -> dict[str, bytes]:
    """The held-out file that inherited `evaluation` names in production's folder, copied into
    the new version under the same name: once the new version is production, the gate's policy
    reads its own metadata (vigil.core.gate_policy), and a version needs nothing outside itself."""
    evaluation = metadata.get("evaluation")
    if (parent is None or not isinstance(evaluation, dict)
            or "evaluation" in (request.metadata or {})):
        return {}
    data = evaluation.get("data")
    if not isinstance(data, str) or "/" in data or "\\" in data:
        return {}  # only a file beside production's model is copied; the gate judges the rest
    base = Path(request.root) / request.name / parent
    try:
        path = gate_policy.confined(Path(request.root), base, data, f"{request.name}/{parent}")
    except gate_policy.PolicyError:
        return {}  # missing or outside: the gate says so when it runs
    return {data: path.read_bytes()}


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


def _reference_profile(
    manifest: VersionManifest, onnx_bytes: bytes, reference: Path, outputs_from_model: bool,
    progress: bool | None, extra_files: dict[str, bytes],
) -> UnwrittenProfile:
    """The version's profile and the copy of its reference data, built before it is written
    (and its calibration, when its held-out set is among `extra_files`)."""
    from vigil.tools.profiles import profile_unwritten  # needs onnxruntime and monitoring

    if not reference.is_file():
        raise PublishError(f"reference data {reference}: no such file")
    try:
        return profile_unwritten(
            manifest, onnx_bytes, reference, outputs_from_model=outputs_from_model,
            progress=progress, extra_files=extra_files,
        )
    except (ValueError, KeyError, OSError, RepositoryError) as exc:
        raise PublishError(f"reference data {reference}: {exc}") from None


def describe_training_data(path: Path) -> dict[str, Any]:
    """{file, sha256, rows} of a training data file; rows for .csv, .parquet, .npz and .npy."""
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"training data {path}: no such file")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    # The file's name, not the publisher's path to it: the digest is what identifies it.
    doc: dict[str, Any] = {"file": path.name, "sha256": digest.hexdigest()}
    try:
        rows = count_rows(path)
    except (ValueError, OSError, KeyError) as exc:
        raise PublishError(f"training data {path}: cannot count its rows: {exc}") from None
    if rows is not None:
        doc["rows"] = rows
    return doc


def count_rows(path: Path) -> int | None:
    """Rows of a data file, read the way reference data is (monitoring.data_files.load_data), or
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
        from monitoring.data_files import load_data

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
