"""The example builder: signatures, determinism, working models, reference data, reuse."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from monitoring.profile import Profile
from vigil.core.tensors import TensorSpec
from vigil.tools.examples import HOLDOUT_FILE, REFERENCE_FILE, build_examples
from vigil.core.repository import PROFILE_JSON, RepositoryError, scan


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_examples(root)
    return root


def _version(root: Path, name: str):
    (version,) = scan(root, only=[name])[name]
    return version


def _session(root: Path, name: str) -> ort.InferenceSession:
    data = _version(root, name).read_verified_bytes()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def test_scan_finds_both_with_signatures(built: Path) -> None:
    found = scan(built)
    assert sorted(found) == ["breast_cancer", "mlp"]
    cancer = found["breast_cancer"][0].manifest
    assert cancer.version == "1"
    assert cancer.inputs == (TensorSpec("input", "FP32", (-1, 30), allow_non_finite=False),)
    assert cancer.outputs == (
        TensorSpec("label", "INT64", (-1,)),
        TensorSpec("probabilities", "FP32", (-1, 2)),
    )
    assert cancer.metadata["classes"] == ["malignant", "benign"]
    assert len(cancer.metadata["feature_names"]) == 30
    mlp = found["mlp"][0].manifest
    assert mlp.version == "1"
    assert mlp.inputs == (TensorSpec("input", "FP32", (-1, 256)),)
    assert mlp.outputs == (
        TensorSpec("logits", "FP32", (-1, 10)),
        TensorSpec("probabilities", "FP32", (-1, 10)),
    )
    assert mlp.metadata["hidden_layers"] == [1024, 1024, 1024]


def test_sessions_match_manifest_signatures(built: Path) -> None:
    for name, version in ((n, v[0]) for n, v in scan(built).items()):
        session = _session(built, name)
        assert [i.name for i in session.get_inputs()] == [s.name for s in version.manifest.inputs]
        assert [o.name for o in session.get_outputs()] == [s.name for s in version.manifest.outputs]


def test_rebuild_is_bit_identical(built: Path, tmp_path: Path) -> None:
    again = {v.manifest.name: v.manifest.sha256 for v in build_examples(tmp_path)}
    first = {n: v[0].manifest.sha256 for n, v in scan(built).items()}
    assert again == first
    assert (tmp_path / "breast_cancer" / "1" / REFERENCE_FILE).read_bytes() == (
        built / "breast_cancer" / "1" / REFERENCE_FILE
    ).read_bytes()


def test_breast_cancer_classifies_the_test_split(built: Path) -> None:
    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    _, x_test, _, y_test = train_test_split(
        x, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    label, proba = _session(built, "breast_cancer").run(None, {"input": x_test})
    assert label.dtype == np.int64 and label.shape == (len(x_test),)
    assert proba.dtype == np.float32 and proba.shape == (len(x_test), 2)
    accuracy = float((label == y_test).mean())
    assert accuracy > 0.9
    assert accuracy == pytest.approx(
        _version(built, "breast_cancer").manifest.metadata["test_accuracy"], abs=1e-4
    )
    np.testing.assert_array_equal(label, proba.argmax(axis=1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_mlp_runs_on_a_small_batch(built: Path) -> None:
    x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    logits, proba = _session(built, "mlp").run(None, {"input": x})
    assert logits.shape == (3, 10) and logits.dtype == np.float32
    assert proba.shape == (3, 10)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_reference_parquet_is_the_training_split(built: Path) -> None:
    version = _version(built, "breast_cancer")
    frame = pq.read_table(version.path / REFERENCE_FILE).to_pandas()
    features = version.manifest.metadata["feature_names"]
    assert list(frame.columns) == [*features, "target"]
    assert frame.shape[1] == 31
    assert all(frame[c].dtype == np.float32 for c in features)
    assert frame["target"].dtype == np.int64
    assert len(frame) == version.manifest.metadata["training_rows"]


def test_existing_versions_are_reused_without_rewriting(built: Path) -> None:
    files = sorted(p for p in built.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    first = {n: v[0] for n, v in scan(built).items()}
    again = build_examples(built)
    assert {p: p.stat().st_mtime_ns for p in files} == before
    assert sorted(p for p in built.rglob("*") if p.is_file()) == files
    assert {v.manifest.name: v for v in again} == first


def test_force_rebuilds_to_the_same_bytes(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(built, root)
    stale = root / "mlp" / "1" / "leftover.txt"
    stale.write_text("from an older build")
    again = {v.manifest.name: v.manifest.sha256 for v in build_examples(root, force=True)}
    assert again == {n: v[0].manifest.sha256 for n, v in scan(built).items()}
    assert not stale.exists()


def test_tampered_model_is_refused(built: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(built, root)
    version = _version(root, "breast_cancer")
    data = bytearray(version.model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    version.model_file.write_bytes(bytes(data))
    with pytest.raises(RepositoryError, match="sha256"):
        version.read_verified_bytes()


def test_an_unusable_profile_is_rebuilt(built: Path, tmp_path: Path) -> None:
    # A profile an older Vigil wrote (or one cut short) is rebuilt, not kept beside the model.
    root = tmp_path / "models"
    shutil.copytree(built, root)
    profile_json = root / "breast_cancer" / "1" / PROFILE_JSON
    doc = json.loads(profile_json.read_text())
    doc["format_version"] = 1
    profile_json.write_text(json.dumps(doc))
    with pytest.raises(ValueError):
        Profile.load(profile_json.parent)
    build_examples(root)
    assert Profile.load(profile_json.parent).rows == 426
    assert profile_json.read_bytes() == (built / "breast_cancer" / "1" / PROFILE_JSON).read_bytes()


def test_the_version_is_written_whole_with_its_data_and_profile(built: Path) -> None:
    """breast_cancer/1 is one publish: model, reference data, held-out set and profile appear
    together (they were added one by one after the version was visible), and the profile names
    the data by its name inside the version, with its sha256."""
    version_dir = built / "breast_cancer" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == [
        HOLDOUT_FILE, "model.onnx", "model.yaml", PROFILE_JSON, "profile.npz", REFERENCE_FILE]
    meta = Profile.load(version_dir).meta or {}
    digest = hashlib.sha256((version_dir / REFERENCE_FILE).read_bytes()).hexdigest()
    assert (meta["data"], meta["data_sha256"]) == (REFERENCE_FILE, digest)


def test_a_version_an_older_build_left_incomplete_is_rebuilt_whole(built: Path, tmp_path: Path
                                                                     ) -> None:
    """A breast_cancer/1 with its model but without the held-out set (an interrupted older
    build) is not reused: it is built again, whole, to the same bytes."""
    root = tmp_path / "models"
    shutil.copytree(built, root)
    version_dir = root / "breast_cancer" / "1"
    (version_dir / HOLDOUT_FILE).unlink()
    (version_dir / "leftover.txt").write_text("from an interrupted build")
    build_examples(root)
    assert not (version_dir / "leftover.txt").exists()
    for name in (HOLDOUT_FILE, REFERENCE_FILE, PROFILE_JSON):
        assert (version_dir / name).read_bytes() == (built / "breast_cancer" / "1" / name
                                                     ).read_bytes()
