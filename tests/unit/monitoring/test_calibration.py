"""A version's calibration, fitted on its held-out set when it is published or its profile
built, saved in its profile; and why a version gets none."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression

from monitoring.cbpe import Calibration
from monitoring.profile import Profile
from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings
from vigil.core.repository import MANIFEST_FILE, ModelVersion, read_manifest
from vigil.tools.profiles import profile_version


def test_the_example_is_calibrated_on_its_held_out_set(example_root: Path) -> None:
    path = example_root / "breast_cancer" / "1"
    meta = Profile.load(path).meta
    assert "calibration_skipped" not in meta
    calibration = Calibration.from_dict(meta["calibration"])
    holdout = pd.read_parquet(path / "holdout.parquet")
    manifest = read_manifest(path)
    model = OnnxModel(ModelVersion(path, manifest), RuntimeSettings())
    x = holdout[manifest.metadata["feature_names"]].to_numpy(np.float32)
    out = model.run(model.validate({"input": x})[0])
    y = holdout["target"].to_numpy()
    # the calibrator is scikit-learn's isotonic regression of the truth on the score
    score = out["probabilities"][:, 1].astype(np.float64)
    theirs = IsotonicRegression(out_of_bounds="clip").fit(score, y)
    probe = np.linspace(0, 1, 501)
    np.testing.assert_allclose(calibration.calibrators[0](probe), theirs.predict(probe), atol=1e-15)
    reference = meta["calibration"]["reference"]
    assert reference["accuracy"] == float(np.mean(out["label"] == y))
    assert meta["calibration"]["rows"] == len(y) == 143


def _rebuilt(example_root: Path, tmp_path: Path, change) -> dict:
    version_dir = tmp_path / "1"
    shutil.copytree(example_root / "breast_cancer" / "1", version_dir)
    change(version_dir)
    return profile_version(version_dir, version_dir / "reference.parquet",
                           outputs_from_model=True).meta


def _metadata(version_dir: Path, **changes) -> None:
    manifest = read_manifest(version_dir)
    metadata = {k: v for k, v in manifest.metadata.items() if k not in changes}
    metadata.update({k: v for k, v in changes.items() if v is not None})
    manifest = dataclasses.replace(manifest, metadata=metadata)
    (version_dir / MANIFEST_FILE).write_text(manifest.to_yaml())


@pytest.mark.parametrize(("change", "reason"), [
    (lambda d: _metadata(d, evaluation=None), "no held-out set"),
    (lambda d: (d / "holdout.parquet").unlink(), "is not a file inside the version"),
    (lambda d: _metadata(d, evaluation={"data": "holdout.parquet", "task": "regression"}),
     "only classifiers"),
    (lambda d: _metadata(d, evaluation={"data": "holdout.parquet", "target": "mean radius"}),
     "features include the target"),
])
def test_a_version_without_a_usable_held_out_set_is_not_calibrated(
        example_root: Path, tmp_path: Path, change, reason: str) -> None:
    meta = _rebuilt(example_root, tmp_path, change)
    assert "calibration" not in meta and reason in meta["calibration_skipped"]
