"""Reference profiles of model versions: monitoring's profile builder fed by serving's runtime."""

from __future__ import annotations

from pathlib import Path

from monitoring.profile import Profile
from monitoring.profile_builder import Tensors, build_version_profile
from serving.protocol import InferenceError
from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings
from vigil.core.repository import ModelVersion, read_manifest


def profile_version(
    version_dir: str | Path,
    data_path: str | Path,
    *,
    outputs_from_model: bool = False,
    progress: bool | None = None,
) -> Profile:
    """Build and save the profile of the version in `version_dir` from `data_path`; with
    `outputs_from_model`, its output columns are the model's answers on the reference features."""
    version_dir = Path(version_dir)
    model_outputs = None
    if outputs_from_model:
        model = OnnxModel(ModelVersion(version_dir, read_manifest(version_dir)), RuntimeSettings())

        def model_outputs(chunk: Tensors) -> Tensors:
            try:
                ready, _ = model.validate(chunk)
            except InferenceError as exc:  # say it is the reference data, not a request
                raise ValueError(f"reference data cannot be fed to the model: {exc}") from None
            return model.run(ready)

    return build_version_profile(
        version_dir, data_path, model_outputs=model_outputs, progress=progress
    )
