"""The model gate on real trained models: a deliberately weak version fails on quality and cannot
be promoted or canaried (unless forced, with the reason audited); a version as good as production
passes; a changed signature, a missing profile and modified bytes each fail their own check. The
policy comes from the repository or production, never the candidate; its data stays inside the
repository; a verdict counts only under the policy in force and against the production in place;
a failure while judging is still a recorded verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from vigil.core import audit, gate_policy, model_ops
from vigil.core.aliases import AliasError
from vigil.core.repository import MANIFEST_FILE, publish, read_manifest, scan
from vigil.core.tensors import TensorSpec
from vigil.tools import model_gate
from vigil.tools.examples import BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS, HOLDOUT_FILE


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


def _publish(root: Path, version: str, data: bytes, with_profile: bool = True,
             metadata: dict | None = None, outputs: tuple = BREAST_CANCER_OUTPUTS) -> None:
    one = root / "breast_cancer" / "1"
    extra = {HOLDOUT_FILE: (one / HOLDOUT_FILE).read_bytes()}
    if with_profile:
        extra |= {f: (one / f).read_bytes() for f in ("profile.json", "profile.npz")}
    publish(root, "breast_cancer", version, data, BREAST_CANCER_INPUTS, outputs,
            metadata=read_manifest(one).metadata if metadata is None else metadata,
            extra_files=extra)


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
        "promote", "incident 42: hotfix", {"forced": True, "gate": "failed the model gate"})


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
    # A margin wide enough lets it through: the margin is the operator's call. But the verdict
    # is recorded under that other policy, and does not count for traffic.
    wide = model_gate.validate(repo, "breast_cancer", "2", actor="ci", margin=0.5)
    assert wide["passed"] and wide["policy"]["source"].endswith("--margin")
    with pytest.raises(AliasError, match="validated under another policy") as info:
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.1)
    assert info.value.status == 409 and "margin 0.5" in str(info.value)


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


# ------------------------------------------------------------------ the policy is not the candidate's


def _evaluation(root: Path) -> dict:
    return dict(read_manifest(root / "breast_cancer" / "1").metadata["evaluation"])


def test_the_candidates_own_margin_and_held_out_set_are_ignored(repo: Path, tmp_path: Path) -> None:
    """A weak candidate whose model.yaml says `margin: 1` and names its own (easy) held-out set
    still fails: the policy is production's (breast_cancer/1/model.yaml)."""
    meta = read_manifest(repo / "breast_cancer" / "1").metadata
    own = {**meta, "evaluation": {**meta["evaluation"], "margin": 1, "data": "/etc/hostname"}}
    _publish(repo, "2", _trained(columns=None, shuffle=True), metadata=own)
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="pr-author")
    assert _checks(verdict)["quality"] is False and not verdict["passed"]
    policy = verdict["policy"]
    assert policy["source"] == "breast_cancer/1/model.yaml (production)"
    assert policy["content"]["margin"] == 0.01 and policy["data"] == "breast_cancer/1/holdout.parquet"


def test_repository_files_set_the_policy_and_the_models_file_wins(repo: Path) -> None:
    """Each key from the first of <model>/gate.yaml, gate.yaml, production's metadata."""
    _publish(repo, "2", _trained(columns=None))
    (repo / "gate.yaml").write_text("margin: 0.2\nmetrics: [accuracy]\n")
    (repo / "breast_cancer" / "gate.yaml").write_text("margin: 0.05\n")
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    content = verdict["policy"]["content"]
    assert (content["margin"], content["metrics"]) == (0.05, ["accuracy"])
    assert verdict["policy"]["source"] == (
        "breast_cancer/gate.yaml, gate.yaml, breast_cancer/1/model.yaml (production)")
    (repo / "breast_cancer" / "gate.yaml").unlink()
    assert model_gate.validate(repo, "breast_cancer", "2", actor="ci")["policy"]["content"][
        "margin"] == 0.2
    (repo / "gate.yaml").write_text("margin: 0.2\nmarign: 1\n")
    typo = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert _checks(typo)["policy"] is False and "unknown keys ['marign']" in str(typo["checks"])


@pytest.mark.parametrize(
    ("where", "data", "says"),
    [
        ("gate.yaml", "ABSOLUTE", "is absolute"),
        ("gate.yaml", "../outside.parquet", "leaves its folder ('..')"),
        ("gate.yaml", "link.parquet", "outside the repository (a link?)"),
        ("production", "ABSOLUTE", "is absolute"),
        ("production", "../../../outside.parquet", "leaves its folder ('..')"),
    ],
)
def test_held_out_data_outside_the_repository_is_refused(repo: Path, tmp_path: Path, where: str,
                                                         data: str, says: str) -> None:
    """An absolute path, a '..' or a link out of the repository, in gate.yaml or production's
    metadata: the verdict fails (check `policy`, saying why) and canary is refused with it."""
    outside = tmp_path / "outside.parquet"
    outside.write_bytes((repo / "breast_cancer" / "1" / HOLDOUT_FILE).read_bytes())
    (repo / "breast_cancer" / "link.parquet").symlink_to(outside)
    data = str(outside) if data == "ABSOLUTE" else data
    if where == "gate.yaml":
        (repo / "breast_cancer" / "gate.yaml").write_text(yaml.safe_dump({"data": data}))
    else:
        _set_production_evaluation(repo, {**_evaluation(repo), "data": data})
    _publish(repo, "2", _trained(columns=None))
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert not verdict["passed"] and verdict["policy"] is None
    policy_check = next(c for c in verdict["checks"] if c["name"] == "policy")
    assert says in policy_check["detail"], policy_check
    with pytest.raises(AliasError, match="policy is unusable") as info:
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.1)
    assert info.value.status == 409 and says in str(info.value)


def _set_production_evaluation(root: Path, evaluation: dict) -> None:
    """Rewrite breast_cancer/1's metadata.evaluation (model.yaml is not covered by the sha256)."""
    path = root / "breast_cancer" / "1" / MANIFEST_FILE
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["evaluation"] = evaluation
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


# ------------------------------------------------------------------ what a verdict counts for


def test_canary_needs_a_verdict_shadow_does_not_and_force_is_audited(repo: Path) -> None:
    """Canary of a version that never passed: 409; forced without a reason: 400; forced with
    one: done and audited as forced with the gate's reason. A shadow answers no one: allowed."""
    _publish(repo, "2", _trained(columns=None))
    with pytest.raises(AliasError, match="has not been validated") as info:
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.99)
    assert info.value.status == 409
    with pytest.raises(AliasError, match="a forced canary needs a reason") as info:
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.5,
                        force=True)
    assert info.value.status == 400
    shadow = model_ops.apply(repo, "breast_cancer", "shadow", actor="ci", version="2")
    assert shadow.after.shadow == "2" and "details" not in shadow.entry
    forced = model_ops.apply(repo, "breast_cancer", "canary", actor="oncall", version="2",
                             weight=0.5, force=True, reason="incident 7")
    assert forced.after.canary.version == "2"
    assert forced.entry["details"] == {"forced": True, "gate": "has not been validated"}
    assert model_gate.validate(repo, "breast_cancer", "2", actor="ci")["passed"]
    done = model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.2)
    assert done.after.canary.weight == 0.2 and "details" not in done.entry


def test_a_verdict_under_another_policy_does_not_count(repo: Path) -> None:
    """Passed, then the policy tightens (a stricter margin in gate.yaml, or new held-out
    bytes): canary refused, saying under which policy it was validated; validated again, it
    goes. A verdict made with --margin equal to the policy's counts."""
    _publish(repo, "2", _trained(columns=None))
    first = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    assert first["passed"]
    (repo / "breast_cancer" / "gate.yaml").write_text("margin: 0.001\n")
    with pytest.raises(AliasError, match="validated under another policy") as info:
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2", weight=0.1)
    message = str(info.value)
    assert first["policy"]["digest"][:12] in message and "margin 0.001" in message
    same = model_gate.validate(repo, "breast_cancer", "2", actor="ci", margin=0.001)
    assert same["policy"]["digest"] != first["policy"]["digest"]
    assert model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="2",
                           weight=0.1).after.canary is not None
    # New held-out bytes make another policy too.
    holdout = repo / "breast_cancer" / "1" / HOLDOUT_FILE
    import pandas as pd

    pd.read_parquet(holdout).iloc[:100].to_parquet(holdout)
    with pytest.raises(AliasError, match="validated under another policy"):
        model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2")


def test_a_verdict_against_another_production_does_not_count(repo: Path) -> None:
    _publish(repo, "2", _trained(columns=None))
    _publish(repo, "3", _trained(columns=None))
    assert model_gate.validate(repo, "breast_cancer", "2", actor="ci")["passed"]
    assert model_gate.validate(repo, "breast_cancer", "3", actor="ci")["passed"]
    model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2")
    with pytest.raises(AliasError, match="validated against production 1, and production is "
                       "now 2"):
        model_ops.apply(repo, "breast_cancer", "canary", actor="ci", version="3", weight=0.1)


def test_a_first_version_without_a_policy_is_judged_on_what_needs_no_baseline(
        repo: Path) -> None:
    """breast_cancer/1 alone (production itself, nothing to compare with): its own
    metadata.evaluation is not a policy; with no gate.yaml quality is not judged and the rest
    passes. A repository gate.yaml naming a held-out set scores it."""
    verdict = model_gate.validate(repo, "breast_cancer", "1", actor="ci")
    assert verdict["passed"] and verdict["policy"] is None and verdict["against"] is None
    quality = next(c for c in verdict["checks"] if c["name"] == "quality")
    assert quality["detail"].startswith("not judged: no production and no gate policy")
    (repo / "gate.yaml").write_text("data: breast_cancer/1/holdout.parquet\n")
    scored = model_gate.validate(repo, "breast_cancer", "1", actor="ci")
    assert scored["passed"] and scored["metrics"]["candidate"]["auc"] > 0.95
    assert scored["policy"]["source"] == "gate.yaml"


# ------------------------------------------------------------------ failures are verdicts


def _labels_only_bytes() -> bytes:
    """A classifier with a label output and no scores: label = sum(row) > 4000."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    threshold = helper.make_tensor("threshold", TensorProto.FLOAT, [], [4000.0])
    nodes = [helper.make_node("ReduceSum", ["input", "axes"], ["sum"], keepdims=0),
             helper.make_node("Greater", ["sum", "threshold"], ["big"]),
             helper.make_node("Cast", ["big"], ["label"], to=TensorProto.INT64)]
    graph = helper.make_graph(
        nodes, "labels_only", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 30])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])], [axes, threshold])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=8).SerializeToString()


def test_a_metric_production_lacks_is_a_failed_verdict_not_a_crash(repo: Path) -> None:
    """Production reports no AUC (labels only), the candidate does: the verdict is recorded,
    failed, saying production has no AUC to compare with (this was a KeyError: no verdict)."""
    _publish(repo, "2", _labels_only_bytes(), outputs=(TensorSpec("label", "INT64", (-1,)),))
    model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2", force=True,
                    reason="a labels-only production")
    _publish(repo, "3", _trained(columns=None))
    verdict = model_gate.validate(repo, "breast_cancer", "3", actor="ci",
                                  allow_signature_change=True)
    assert not verdict["passed"] and verdict["against"] == "2"
    quality = next(c for c in verdict["checks"] if c["name"] == "quality")
    assert "production has no defined auc to compare with" in quality["detail"]
    assert "auc" not in verdict["metrics"]["production"]
    recorded = read_manifest(repo / "breast_cancer" / "3").lineage["validation"]
    assert recorded["passed"] is False and recorded["checks"] == verdict["checks"]
    # With a policy comparing accuracy only, it is judged on that.
    (repo / "breast_cancer" / "gate.yaml").write_text("metrics: [accuracy]\n")
    assert model_gate.validate(repo, "breast_cancer", "3", actor="ci",
                               allow_signature_change=True)["passed"]


def test_an_auc_the_held_out_set_cannot_define_fails(repo: Path) -> None:
    """A held-out set with one class: AUC is not a number, and NaN compared with anything
    passed before. Now the check fails, saying so."""
    import pandas as pd

    frame = pd.read_parquet(repo / "breast_cancer" / "1" / HOLDOUT_FILE)
    frame[frame["target"] == 1].to_parquet(repo / "breast_cancer" / "one_class.parquet")
    (repo / "breast_cancer" / "gate.yaml").write_text("data: one_class.parquet\n")
    _publish(repo, "2", _trained(columns=None, shuffle=True))
    verdict = model_gate.validate(repo, "breast_cancer", "2", actor="ci")
    quality = next(c for c in verdict["checks"] if c["name"] == "quality")
    assert not quality["passed"] and "has no defined auc" in quality["detail"]


def test_the_model_file_is_hashed_once(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 check and the session share one read: the candidate's bytes are hashed once
    (twice before, and the second read could see other bytes than the first)."""
    import hashlib

    _publish(repo, "2", _trained(columns=None))
    data = (repo / "breast_cancer" / "2" / "model.onnx").read_bytes()
    real = hashlib.sha256
    seen: list[bytes] = []

    def counting(*args, **kwargs):
        if args:
            seen.append(bytes(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting)
    assert model_gate.validate(repo, "breast_cancer", "2", actor="ci")["passed"]
    assert sum(1 for b in seen if b == data) == 1


# ------------------------------------------------------------------ AUC, by scipy


def test_auc_numbers_on_tiny_inputs_with_ties() -> None:
    """Binary: positives [0.4, 0.8, 0.4] against negatives [0.1, 0.4]: 5 of 6 pairs, ties
    half."""
    scores = np.array([[0.9, 0.1], [0.6, 0.4], [0.6, 0.4], [0.2, 0.8], [0.6, 0.4]])
    assert model_gate.auc(scores, np.array([0, 0, 1, 1, 1])) == pytest.approx(5 / 6, abs=1e-12)
    perfect = np.array([[0.9, 0.1], [0.1, 0.9]])
    assert model_gate.auc(perfect, np.array([0, 1])) == 1.0
    assert model_gate.auc(perfect, np.array([1, 0])) == 0.0
    assert np.isnan(model_gate.auc(perfect, np.array([1, 1])))


def test_auc_columns_follow_the_labels_when_a_class_is_missing() -> None:
    """Three score columns, a held-out set with labels 0 and 2 only: column 2 scores label 2
    (the old code paired it with the second label present). One-vs-rest: column 0 1.0, column 1
    skipped (no positives), column 2 0.75."""
    scores = np.array([[0.7, 0.2, 0.1], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6]])
    assert model_gate.auc(scores, np.array([0, 0, 2, 2])) == pytest.approx(0.875, abs=1e-12)
    with pytest.raises(model_gate.GateError, match="cannot tell which"):
        model_gate.auc(scores, np.array(["a", "a", "b", "b"]))


def test_a_published_version_carries_the_held_out_set_it_inherits(repo: Path) -> None:
    """publish_file copies the held-out file that production's inherited `evaluation` names into
    the new version: once that version is production, the gate's policy reads it from there
    (before, the file stayed only in version 1's folder, and the next candidate could not be
    judged: 'held-out set does not exist'). The policy, known by the file's digest, stays the
    same policy."""
    from vigil.tools.publishing import publish_file

    one = repo / "breast_cancer" / "1"
    before = gate_policy.current(repo, "breast_cancer", scan(repo)["breast_cancer"][0])
    assert before is not None
    publish_file(repo, one / "model.onnx", "breast_cancer", actor="ci", version="2")
    two = repo / "breast_cancer" / "2"
    assert (two / HOLDOUT_FILE).read_bytes() == (one / HOLDOUT_FILE).read_bytes()
    assert read_manifest(two).metadata["evaluation"] == read_manifest(one).metadata["evaluation"]
    model_ops.apply(repo, "breast_cancer", "promote", actor="ci", version="2", force=True,
                    reason="the test's production")
    publish_file(repo, one / "model.onnx", "breast_cancer", actor="ci", version="3",
                 reference=one / "reference.parquet")
    verdict = model_gate.validate(repo, "breast_cancer", "3", actor="ci")
    assert verdict["passed"], verdict["checks"]
    assert verdict["against"] == "2" and verdict["policy"]["digest"] == before.digest


def test_a_version_naming_its_own_evaluation_gets_no_copy(repo: Path) -> None:
    """Metadata the publisher gives replaces the inherited key, and nothing is copied for it
    (the candidate's own evaluation is never the gate's policy while it is a candidate)."""
    from vigil.tools.publishing import publish_file

    one = repo / "breast_cancer" / "1"
    publish_file(repo, one / "model.onnx", "breast_cancer", actor="ci", version="2",
                 metadata={"evaluation": {"data": "mine.parquet", "margin": 1}})
    assert not (repo / "breast_cancer" / "2" / HOLDOUT_FILE).exists()
