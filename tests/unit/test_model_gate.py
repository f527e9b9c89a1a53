"""The model gate on real trained models: a deliberately weak version fails on quality and cannot
be promoted (unless forced, with the reason audited); a version as good as production passes; a
changed signature, a missing profile and modified bytes each fail their own check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vigil.core import audit, model_ops

from vigil.tools import model_gate
from vigil.core.aliases import AliasError
from vigil.tools.examples import BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS, HOLDOUT_FILE
from vigil.core.repository import MANIFEST_FILE, publish, read_manifest, scan


def _trained(columns: int | None, shuffle: bool = False) -> bytes:
    """A logistic regression on breast cancer: on `columns` features only (the rest zero-weighted
    by training on zeros) and/or on shuffled labels — the weak kinds of model."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    if columns is not None:
        x_train = x_train.copy()
        x_train[:, columns:] = 0.0
    if shuffle:
        y_train = np.random.default_rng(1).permutation(y_train)
    clf = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("scaler", StandardScaler()), ("classifier", clf)]).fit(x_train, y_train)
    proto = convert_sklearn(
        pipe, name="breast_cancer",
        initial_types=[("input", FloatTensorType([None, 30]))],
        final_types=[("label", Int64TensorType([None])), ("probabilities", FloatTensorType([None, 2]))],
        options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return proto.SerializeToString()


@pytest.fixture
def repo(example_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root / "breast_cancer", root / "breast_cancer")
    return root


def _publish(root: Path, version: str, data: bytes, with_profile: bool = True) -> None:
    one = root / "breast_cancer" / "1"
    extra = {HOLDOUT_FILE: (one / HOLDOUT_FILE).read_bytes()}
    if with_profile:
        extra |= {f: (one / f).read_bytes() for f in ("profile.json", "profile.npz")}
    publish(root, "breast_cancer", version, data, BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS,
            metadata=read_manifest(one).metadata, extra_files=extra)


def _checks(verdict: dict) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in verdict["checks"]}


def test_a_weak_model_fails_the_gate_and_cannot_be_promoted(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=None, shuffle=True))
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert not verdict["passed"]
    assert _checks(verdict) == {"sha256": True, "loads": True, "signature": True,
                                "reference_profile": True, "quality": False}
    candidate, production = verdict["metrics"]["candidate"], verdict["metrics"]["production"]
    assert production["accuracy"] > 0.9 and production["auc"] > 0.95
    assert candidate["auc"] < production["auc"] - 0.01
    quality = next(c for c in verdict["checks"] if c["name"] == "quality")
    assert "worse than production" in quality["detail"]
    # The verdict is in model.yaml's lineage, and promote reads it.
    lineage = yaml.safe_load((repo / "breast_cancer" / "2" / MANIFEST_FILE).read_text())["lineage"]
    assert lineage["validation"]["passed"] is False and lineage["validation"]["against"] == "1"
    with pytest.raises(AliasError, match="failed the model gate") as info:
        model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2")
    assert info.value.status == 409
    forced = model_ops.apply(repo, "breast_cancer", "promote", actor="oncall", version="2",
                             force=True, reason="incident 42: hotfix")
    assert forced.to_version == "2"
    last = list(audit.entries(repo, "breast_cancer"))[-1]
    assert (last["action"], last["reason"], last["details"]) == (
        "promote", "incident 42: hotfix", {"forced": True})


def test_an_equally_good_model_passes_and_promotes(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=None))
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert verdict["passed"], verdict["checks"]
    assert verdict["metrics"]["candidate"] == pytest.approx(verdict["metrics"]["production"])
    change = model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2")
    assert (change.from_version, change.to_version) == ("1", "2")
    entries = [e["action"] for e in audit.entries(repo, "breast_cancer")]
    assert entries == ["validate", "promote"]


def test_fewer_features_is_worse_by_more_than_the_margin(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=2))
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert _checks(verdict)["quality"] is False
    # A margin wide enough lets it through: the margin is the operator's call.
    wide = model_gate.validate(repo, "breast_cancer", "2", actor="ci", margin=0.5)
    assert wide["passed"]


def test_missing_profile_and_modified_bytes_fail_their_checks(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=None), with_profile=False)
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert _checks(verdict)["reference_profile"] is False and not verdict["passed"]
    model_file = repo / "breast_cancer" / "2" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert _checks(verdict)["sha256"] is False and "loads" not in _checks(verdict)


def test_a_validated_version_whose_bytes_changed_is_refused(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=None))
    assert model_gate.validate(repo, "breast_cancer", "2", actor="ci")["passed"]
    manifest = repo / "breast_cancer" / "2" / MANIFEST_FILE
    doc = yaml.safe_load(manifest.read_text())
    doc["lineage"]["validation"]["sha256"] = "0" * 64  # validated for other bytes
    manifest.write_text(yaml.safe_dump(doc))
    with pytest.raises(AliasError, match="validated for other bytes"):
        model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2")


def test_a_changed_signature_must_be_declared(repo: Path) -> None:
    from vigil.core.tensors import TensorSpec

    spec_in = (TensorSpec("input", "FP32", (-1, 30)),)
    spec_out = (TensorSpec("output", "FP32", (-1, 30)),)
    one = repo / "breast_cancer" / "1"
    publish(repo, "breast_cancer", "2", _identity_bytes(), spec_in, spec_out,
            metadata=read_manifest(one).metadata,
            extra_files={HOLDOUT_FILE: (one / HOLDOUT_FILE).read_bytes()})
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    signature = next(c for c in verdict["checks"] if c["name"] == "signature")
    assert not signature["passed"] and "--allow-signature-change" in signature["detail"]


def _identity_bytes() -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["input"], ["output"])
    graph = helper.make_graph(
        [node], "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 30])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 30])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


def test_unknown_version_and_missing_holdout(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(model_gate.GateError, match="has no version '9'"):
        model_gate.validate(repo, "breast_cancer", "9", actor="ci")
    with pytest.raises(model_gate.GateError, match="does not exist"):
        model_gate.validate(repo, "breast_cancer", "1", actor="ci", holdout=tmp_path / "no.csv")
    assert [v.manifest.version for v in scan(repo)["breast_cancer"]] == ["1"]


def test_a_version_inheriting_production_metadata_is_judged_on_productions_holdout(
        repo: Path) -> None:
    """Published with production's metadata.evaluation but without its own held-out file: the
    gate reads production's file (the one both are compared on)."""
    one = repo / "breast_cancer" / "1"
    publish(repo, "breast_cancer", "2", _trained(columns=None), BREAST_CANCER_INPUTS,
            BREAST_CANCER_OUTPUTS, metadata=read_manifest(one).metadata,
            extra_files={f: (one / f).read_bytes() for f in ("profile.json", "profile.npz")})
    assert not (repo / "breast_cancer" / "2" / HOLDOUT_FILE).exists()
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert verdict["passed"], verdict["checks"]
