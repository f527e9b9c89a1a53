"""The model repository on disk: <name>/<version>/model.onnx + model.yaml, checked by sha256."""

from __future__ import annotations

import dataclasses
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import yaml

from vigil.core.exclusive import move_exclusive
from vigil.core.files import locked
from vigil.core.tensors import V2_TO_NUMPY, TensorSpec

MODEL_FILE = "model.onnx"
# A version folder may also hold its reference profile (written by monitoring.profile).
PROFILE_JSON = "profile.json"
PROFILE_NPZ = "profile.npz"
MAX_BATCH_ROWS = 1_000_000
MANIFEST_FILE = "model.yaml"
# Beside the models: held by a publisher while production is pinned and its version moved into
# place (publishing is rare; one lock for the repository keeps the models' folders clean).
PUBLISH_LOCK = ".publish.lock"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # used with fullmatch: no "1\n"


def valid_name(label: str) -> bool:
    """Whether `label` may name a model or a version: letters, digits, '.', '_', '-'."""
    return _NAME.fullmatch(label) is not None


class RepositoryError(Exception):
    """The repository or one of its versions is malformed; the message says where."""


class ModelNotFound(RepositoryError):
    """A model asked for by name has no published version in the repository."""


class VersionExists(RepositoryError):
    """The version's place is taken: by a version with other bytes, or by a folder that is no
    published version (being written, or claimed): versions are never written over."""


@dataclass(frozen=True)
class VersionManifest:
    """What model.yaml records about one immutable model version."""

    name: str
    version: str
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    created: str
    platform: str = "onnxruntime_onnx"
    metadata: dict[str, Any] = field(default_factory=dict)
    # Where the version came from: who published it and when, the source file's digest, training
    # data, code commit, parameters, evaluation figures (free-form beyond those keys).
    lineage: dict[str, Any] = field(default_factory=dict)
    # Most rows of several requests that may run together (Triton's max_batch_size). 0: the
    # model is never stacked with another request, because nothing says its rows are
    # independent (a sum or cumulative sum over the batch axis would mix clients' data).
    max_batch_rows: int = 0

    def __post_init__(self) -> None:
        if self.max_batch_rows:
            unbatchable = [s.name for s in (*self.inputs, *self.outputs) if not s.has_batch_axis]
            if unbatchable:
                raise RepositoryError(
                    f"{self.name}/{self.version} declares max_batch_rows {self.max_batch_rows}, but "
                    f"{unbatchable} have no dynamic first (batch) dimension: rows of several "
                    "requests cannot be stacked; declare max_batch_rows: 0"
                )

    def to_yaml(self) -> str:
        doc = {
            "name": self.name,
            "version": self.version,
            "platform": self.platform,
            "sha256": self.sha256,
            "created": self.created,
            "max_batch_rows": self.max_batch_rows,
            "inputs": [_spec_to_dict(s) for s in self.inputs],
            "outputs": [_spec_to_dict(s) for s in self.outputs],
            "metadata": self.metadata,
            "lineage": self.lineage,
        }
        return yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True)
class ModelVersion:
    """A version found on disk: where it lives and what its manifest says."""

    path: Path
    manifest: VersionManifest

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def has_profile(self) -> bool:
        """Whether a reference profile for drift monitoring sits beside the model."""
        return (self.path / PROFILE_JSON).exists()

    def read_verified_bytes(self) -> bytes:
        """The ONNX file's bytes, refused if they do not hash to the recorded sha256."""
        data = self.model_file.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest.sha256:
            raise RepositoryError(
                f"{self.model_file}: sha256 {digest} does not match {self.manifest.sha256} "
                f"recorded in {MANIFEST_FILE}; refusing to load a modified version"
            )
        return data


def version_metadata(manifest: VersionManifest, versions: list[str], aliases: list[str],
                     full: bool = False) -> dict[str, Any]:
    """A version's V2 model metadata, as the server and the CLI both answer it: name, versions,
    platform and signature, with the parameters a client may use (sha256, created,
    max_batch_rows, the aliases on it). `full` adds what only an operator reads (scope admin):
    the manifest's lineage (publisher, paths, training data, the gate's verdict) and metadata."""
    parameters: dict[str, Any] = {
        "sha256": manifest.sha256,
        "created": manifest.created,
        "max_batch_rows": manifest.max_batch_rows,
        "aliases": aliases,
    }
    if full:
        parameters["lineage"] = manifest.lineage
        parameters["metadata"] = manifest.metadata
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": manifest.platform,
        "inputs": [s.to_metadata() for s in manifest.inputs],
        "outputs": [s.to_metadata() for s in manifest.outputs],
        "parameters": parameters,
    }


def _spec_to_dict(spec: TensorSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}
    if not spec.allow_non_finite:
        doc["allow_non_finite"] = False
    return doc


def _spec_from_dict(doc: Any, where: str) -> TensorSpec:
    if not isinstance(doc, dict) or set(doc) - {"name", "datatype", "shape", "allow_non_finite"}:
        raise RepositoryError(f"{where}: expected name, datatype, shape[, allow_non_finite]")
    if not isinstance(doc.get("name"), str) or not doc["name"]:
        raise RepositoryError(f"{where}: a tensor needs a non-empty string 'name'")
    datatype = doc.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise RepositoryError(f"{where}: unknown datatype {datatype!r}")
    shape = doc.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape
    ):
        raise RepositoryError(f"{where}: shape must be a list of ints >= -1")
    return TensorSpec(
        name=str(doc.get("name")),
        datatype=datatype,
        shape=tuple(shape),
        allow_non_finite=bool(doc.get("allow_non_finite", True)),
    )


# libyaml's parser when PyYAML has it (about 10x faster: replicas re-read every manifest on each
# alias change), else the pure-Python one. Both safe.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Parsed manifests by file, valid while the file's (mtime, size, inode) stay the same.
_manifests: dict[Path, tuple[tuple[int, int, int], VersionManifest]] = {}


def read_manifest(version_dir: Path) -> VersionManifest:
    path = version_dir / MANIFEST_FILE
    try:
        st = path.stat()
    except OSError as exc:
        raise RepositoryError(f"{path}: {exc}") from exc
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _manifests.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    manifest = _parse_manifest(path)
    if len(_manifests) > 100_000:
        _manifests.clear()
    _manifests[path] = (stamp, manifest)
    return manifest


def _parse_manifest(path: Path) -> VersionManifest:
    try:
        doc = yaml.load(path.read_text(), Loader=_YAML_LOADER)  # nosec B506 # a safe loader
    except (OSError, yaml.YAMLError) as exc:
        raise RepositoryError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise RepositoryError(f"{path}: expected a mapping")
    for key in ("inputs", "outputs"):
        if key in doc and not isinstance(doc[key], list):
            raise RepositoryError(f"{path}: '{key}' must be a list")
    max_batch_rows = doc.get("max_batch_rows", 0)
    if (
        not isinstance(max_batch_rows, int)
        or isinstance(max_batch_rows, bool)
        or not 0 <= max_batch_rows <= MAX_BATCH_ROWS
    ):
        raise RepositoryError(
            f"{path}: max_batch_rows must be an integer from 0 (never batched) to {MAX_BATCH_ROWS}"
        )
    try:
        return VersionManifest(
            name=str(doc["name"]),
            version=str(doc["version"]),
            sha256=str(doc["sha256"]),
            created=str(doc.get("created", "")),
            platform=str(doc.get("platform", "onnxruntime_onnx")),
            inputs=tuple(_spec_from_dict(s, f"{path} inputs") for s in doc["inputs"]),
            outputs=tuple(_spec_from_dict(s, f"{path} outputs") for s in doc["outputs"]),
            metadata=dict(doc.get("metadata") or {}),
            lineage=dict(doc.get("lineage") or {}),
            max_batch_rows=max_batch_rows,
        )
    except KeyError as exc:
        raise RepositoryError(f"{path}: missing field {exc}") from exc


def version_order(name: str) -> tuple[int, int, str]:
    """The sort key of version labels, oldest first: numeric versions numerically, and above any
    non-numeric label (which sort by name)."""
    return (1, int(name), "") if name.isdigit() else (0, 0, name)


def scan(root: Path, only: list[str] | None = None) -> dict[str, list[ModelVersion]]:
    """Every model under root with its versions, oldest first. Malformed versions raise."""
    if not root.is_dir():
        raise RepositoryError(f"model repository {root} does not exist")
    found: dict[str, list[ModelVersion]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if only is not None and model_dir.name not in only:
            continue
        versions = []
        for version_dir in sorted(
            (p for p in model_dir.iterdir() if p.is_dir() and valid_name(p.name)),
            key=lambda p: version_order(p.name),
        ):
            if not (version_dir / MANIFEST_FILE).exists():
                continue
            manifest = read_manifest(version_dir)
            if (manifest.name, manifest.version) != (model_dir.name, version_dir.name):
                raise RepositoryError(
                    f"{version_dir}: manifest says {manifest.name}/{manifest.version}"
                )
            versions.append(ModelVersion(version_dir, manifest))
        if versions:
            found[model_dir.name] = versions
    missing = set(only or ()) - set(found)
    if missing:
        raise ModelNotFound(f"models not found in {root}: {sorted(missing)}")
    return found


def publish(
    root: Path,
    name: str,
    version: str,
    onnx_bytes: bytes,
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    metadata: dict[str, Any] | None = None,
    created: datetime | None = None,
    max_batch_rows: int = 0,
    lineage: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> ModelVersion:
    """Write a new version. Versions are immutable: an existing one with other bytes is refused.

    The version is written in a hidden folder beside its final place and moved into it by an
    exclusive rename (vigil.core.exclusive), so a half-written version is never visible and
    anything already at that place, an empty folder included, makes it VersionExists. Publishing
    never moves traffic: when the model had versions and no production alias yet (the newest one
    served), production is pinned to that newest one just before the new one appears."""
    for label in (name, version):
        if not valid_name(label):
            raise RepositoryError(f"invalid name {label!r}: letters, digits, '.', '_', '-' only")
    version_dir = root / name / version
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    if (same := _same_version(version_dir, sha)) is not None:
        return same
    manifest = VersionManifest(  # checked before anything is written
        name=name,
        version=version,
        sha256=sha,
        inputs=inputs,
        outputs=outputs,
        created=(created or datetime.now(UTC)).isoformat(timespec="seconds"),
        metadata=metadata or {},
        max_batch_rows=max_batch_rows,
        lineage=lineage or {},
    )
    files = {MODEL_FILE: onnx_bytes, **(extra_files or {}), MANIFEST_FILE: manifest.to_yaml().encode()}
    staging = _stage_or_refuse(root, name, version, files)
    try:
        try:
            with locked(root / PUBLISH_LOCK):  # publishers, one at a time
                pin_production(root, name)
                move_exclusive(staging, version_dir)
        except FileExistsError:
            if (same := _same_version(version_dir, sha)) is not None:
                return same  # a racing publisher wrote these very bytes
            raise VersionExists(_taken(name, version, version_dir)) from None
        _fsync_dir(root / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone once moved; a leftover otherwise
    return ModelVersion(version_dir, manifest)


def _stage_or_refuse(root: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """_stage, or RepositoryError when the files cannot be written (a full disk, a quota, a
    read-only mount), leaving nothing: not even the model's folder if it was made for this."""
    new_model = not (root / name).exists()
    try:
        return _stage(root / name, version, files)
    except OSError as exc:
        if new_model:
            with contextlib.suppress(OSError):
                (root / name).rmdir()  # the model's folder, made for this version, still empty
        raise RepositoryError(
            f"could not write {name}/{version} under {root}: {exc.strerror or exc}; nothing was "
            "published (free space, then publish again)") from exc


def _stage(model_dir: Path, version: str, files: dict[str, bytes]) -> Path:
    """A hidden folder beside the version's place (a name scan skips), holding `files`, each
    synced to disk."""
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=model_dir))
    try:
        for file_name, data in files.items():
            _write_synced(staging / file_name, data)
        # mkdtemp makes it 0700; a version is read by every replica and the monitor.
        os.chmod(staging, 0o755)  # nosec B103 # a folder of public model files
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _same_version(version_dir: Path, sha: str) -> ModelVersion | None:
    """The version already published at `version_dir` with these bytes; None when there is
    none; VersionExists when it holds other bytes."""
    if not (version_dir / MANIFEST_FILE).exists():
        return None
    existing = read_manifest(version_dir)
    if existing.sha256 != sha:
        raise VersionExists(
            f"{existing.name}/{existing.version} already exists with other contents"
        )
    return ModelVersion(version_dir, existing)


def _taken(name: str, version: str, version_dir: Path) -> str:
    if (version_dir / MANIFEST_FILE).exists():
        return f"{name}/{version} already exists"
    return (
        f"{name}/{version} already exists as a folder without {MANIFEST_FILE} ({version_dir}): "
        "a version being written or a claim; remove it if nothing writes it, or publish "
        "another version"
    )


def pin_production(root: Path, name: str) -> None:
    """Before a new version appears: a model served without a production alias (its newest
    version) gets that newest one pinned, so the new version takes no traffic until promoted."""
    from vigil.core import aliases  # aliases imports nothing of this module's users

    if not any(
        valid_name(p.name) and (p / MANIFEST_FILE).exists() for p in (root / name).iterdir()
    ):
        return  # the first version: nothing serves yet (a staging folder is no version)
    published = [v.manifest.version for v in scan(root, [name])[name]]
    current = aliases.read_aliases(root, name).production_of(published)
    if current is not None:
        aliases.change(
            root, name,
            lambda s: s if s.production else dataclasses.replace(s, production=current),
        )


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
