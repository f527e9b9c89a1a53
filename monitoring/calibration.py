"""A version's calibration, fitted at publish time on its held-out set and saved in its profile,
so that the monitor estimates its quality before labels (monitoring.cbpe) and never fits anything.

Which held-out set: the one the version's metadata names under `evaluation` (`data`, a file inside
the version, and `target`, its column of true class indices); a new version of a served model
inherits production's, file included (vigil.tools.publishing), so a candidate is calibrated on
the set the model gate scores it on. Which outputs: those the join store records
(label_store.Predictions: the first 1-D output is the prediction, the first 2-D output beside it
the class probabilities). The model runs through `model_outputs`, a function the caller gives
(vigil.tools.profiles gives it serving's runtime): monitoring never loads a model.

The profile's meta then holds `calibration`: the isotonic points, the output, the data file and
its sha256, its rows, and `reference`: accuracy, f1, f1_macro and roc_auc realised on it. A
version with no such set, or that is not a classifier with probabilities, gets none, and
`calibration_skipped` says why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.cbpe import fit_calibration
from monitoring.columns import ColumnLayout
from monitoring.data_files import load_data
from monitoring.label_store import Predictions
from monitoring.labels_quality import classification_quality
from monitoring.profile import Profile
from monitoring.profile_builder import ModelOutputs, run_in_chunks
from vigil.core.repository import VersionManifest
from vigil.core.tensors import V2_TO_NUMPY


class NotCalibrated(ValueError):
    """Why a version gets no calibration (saved in the profile as `calibration_skipped`)."""


def calibrate_profile(version_dir: Path, manifest: VersionManifest, profile: Profile,
                      model_outputs: ModelOutputs) -> Profile:
    """The profile with its `calibration` fitted on the version's held-out set (or its
    `calibration_skipped` reason), saved in `version_dir`."""
    meta = {k: v for k, v in (profile.meta or {}).items()
            if k not in ("calibration", "calibration_skipped")}
    try:
        meta["calibration"] = fit_version_calibration(version_dir, manifest, profile,
                                                      model_outputs)
    except NotCalibrated as exc:
        meta["calibration_skipped"] = str(exc)
    calibrated = Profile(profile.columns, profile.rows, profile.max_exact_values, meta=meta)
    calibrated.save(version_dir)
    return calibrated


def fit_version_calibration(version_dir: Path, manifest: VersionManifest, profile: Profile,
                            model_outputs: ModelOutputs) -> dict[str, Any]:
    """The calibration of the version (Calibration.to_dict), or NotCalibrated saying why not."""
    evaluation = manifest.metadata.get("evaluation")
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("data"), str):
        raise NotCalibrated("no held-out set: metadata.evaluation names no data file")
    if evaluation.get("task", "classification") != "classification":
        raise NotCalibrated(f"task {evaluation.get('task')!r}: only classifiers are calibrated")
    layout_doc = (profile.meta or {}).get("layout")
    outputs = (Predictions.of(ColumnLayout.from_dict(layout_doc), (c.name for c in profile.outputs))
               if layout_doc else None)
    if outputs is None or outputs.probabilities is None:
        raise NotCalibrated("the profile declares no prediction with class probabilities")
    name = evaluation["data"]
    path = version_dir / name
    if "/" in name or "\\" in name or not path.is_file():
        raise NotCalibrated(f"the held-out set {name!r} is not a file inside the version")
    x, y = _holdout(path, str(evaluation.get("target", "target")), manifest)
    inputs = manifest.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise NotCalibrated("only a model with one 2-D input is calibrated")
    feed = {inputs[0].name: x.astype(V2_TO_NUMPY[inputs[0].datatype])}
    answered = run_in_chunks(model_outputs, feed, len(y))
    prediction = np.asarray(answered[outputs.prediction]).reshape(-1)
    probabilities = np.asarray(answered[outputs.probabilities], dtype=np.float64)
    if probabilities.ndim != 2 or prediction.dtype.kind not in "iu":
        raise NotCalibrated("the prediction is not class indices beside rows x classes")
    if y.dtype.kind not in "iu" or y.min() < 0 or y.max() >= probabilities.shape[1]:
        raise NotCalibrated(f"the target {evaluation.get('target', 'target')!r} is not class "
                            f"indices 0 to {probabilities.shape[1] - 1}")
    realised = classification_quality(y, prediction, probabilities)
    reference = {k: realised[k] for k in ("accuracy", "f1_macro", "roc_auc")}
    if probabilities.shape[1] == 2:
        reference["f1"] = realised["classes"].get("1", {}).get("f1", 0.0)
    meta = {"output": outputs.probabilities, "prediction": outputs.prediction, "data": name,
            "data_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "rows": int(y.size),
            "reference": reference}
    return fit_calibration(probabilities, y.astype(np.int64), meta).to_dict()


def _holdout(path: Path, target: str, manifest: VersionManifest) -> tuple[np.ndarray, np.ndarray]:
    """(features, target) of the held-out set, the features named as the model's feature_names
    (else every column but the target), as the model gate reads it."""
    try:
        columns = load_data(path)
    except (ValueError, OSError) as exc:
        raise NotCalibrated(f"the held-out set {path.name} cannot be read: {exc}") from None
    if target not in columns:
        raise NotCalibrated(f"the held-out set {path.name} has no column {target!r}")
    features = manifest.metadata.get("feature_names") or [c for c in columns if c != target]
    missing = [f for f in features if f not in columns]
    if missing or target in features:
        raise NotCalibrated(f"the held-out set {path.name} lacks the feature columns "
                            f"{missing[:5]}" if missing else "the features include the target")
    if not len(columns[target]):
        raise NotCalibrated(f"the held-out set {path.name} has no rows")
    return np.column_stack([columns[f] for f in features]), np.asarray(columns[target])
