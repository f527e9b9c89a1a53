"""Reference profiles of model versions: monitoring's profile builder fed by serving's runtime."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from monitoring.calibration import calibrate_profile
from monitoring.profile import Profile
from monitoring.profile_builder import Tensors, build_version_profile
from serving.protocol import InferenceError
from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings
from vigil.core.repository import (
    MANIFEST_FILE,
    MODEL_FILE,
    PROFILE_JSON,
    PROFILE_NPZ,
    ModelVersion,
    VersionManifest,
    read_manifest,
)


def profile_version(
    version_dir: str | Path,
    data_path: str | Path,
    *,
    outputs_from_model: bool = False,
    progress: bool | None = None,
) -> Profile:
    """Build and save the profile of the version in `version_dir` from `data_path` (copied into
    the version when it lies outside); with `outputs_from_model`, its output columns are the
    model's answers on the reference features. A classifier whose metadata names a held-out set
    inside the version (metadata.evaluation) is calibrated on it (monitoring.calibration)."""
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    model_outputs = _model_outputs(version_dir, manifest)
    profile = build_version_profile(
        version_dir, data_path, model_outputs=model_outputs if outputs_from_model else None,
        progress=progress,
    )
    return calibrate_profile(version_dir, manifest, profile, model_outputs)


def _model_outputs(version_dir: Path, manifest: VersionManifest) -> Callable[[Tensors], Tensors]:
    """The model's outputs on a chunk of inputs, from serving's runtime (loaded on first use)."""
    loaded: list[OnnxModel] = []

    def model_outputs(chunk: Tensors) -> Tensors:
        if not loaded:
            loaded.append(OnnxModel(ModelVersion(version_dir, manifest), RuntimeSettings()))
        try:
            ready, _ = loaded[0].validate(chunk)
        except InferenceError as exc:  # say it is the reference data, not a request
            raise ValueError(f"reference data cannot be fed to the model: {exc}") from None
        return loaded[0].run(ready)

    return model_outputs


@dataclass(frozen=True)
class UnwrittenProfile:
    """The reference profile of a version not yet written, and the files that carry it."""

    profile: Profile
    files: dict[str, bytes]  # profile.json, profile.npz and the reference data, by name inside


def profile_unwritten(
    manifest: VersionManifest,
    onnx_bytes: bytes,
    data_path: Path,
    *,
    outputs_from_model: bool = False,
    progress: bool | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> UnwrittenProfile:
    """Profile `data_path` for the version that `manifest` and `onnx_bytes` will be, in a
    scratch copy of it, so that the profile and its data are published with the version and it
    is never visible without them. The held-out set that the metadata names, when it is among
    the version's `extra_files`, calibrates it there."""
    with tempfile.TemporaryDirectory(prefix="vigil-profile-") as scratch:
        version_dir = Path(scratch)
        (version_dir / MODEL_FILE).write_bytes(onnx_bytes)
        (version_dir / MANIFEST_FILE).write_text(manifest.to_yaml())
        evaluation = manifest.metadata.get("evaluation")
        holdout = evaluation.get("data") if isinstance(evaluation, dict) else None
        if isinstance(holdout, str) and holdout in (extra_files or {}) and "/" not in holdout:
            (version_dir / holdout).write_bytes((extra_files or {})[holdout])
        profile = profile_version(
            version_dir, data_path, outputs_from_model=outputs_from_model, progress=progress
        )
        names = (PROFILE_JSON, PROFILE_NPZ, str((profile.meta or {})["data"]))
        files = {name: (version_dir / name).read_bytes() for name in names}
    return UnwrittenProfile(profile, files)
