"""The model gate: whether a version may be promoted. It loads (sha256 verified), its signature
matches production's (or the change is declared), its reference profile exists, and on a
held-out set its quality is not worse than production's by more than a margin. The verdict is
recorded in the version's lineage (model.yaml), where `promote` reads it.

The held-out set is named in model.yaml (the candidate's, else production's):

    metadata:
      evaluation:
        data: holdout.parquet     # parquet, CSV or npz; relative to the version folder
        target: target            # the label (classification) or value (regression) column
        task: classification      # or regression
        output: probabilities     # classification: class scores (AUC) -- the label output is
                                  # found by dtype; regression: the prediction output
        margin: 0.01              # accuracy/AUC may drop this much; RMSE may grow this share
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vigil.core import aliases, audit, repository
from vigil.core.files import atomic_write
from vigil.core.repository import MANIFEST_FILE, ModelVersion, RepositoryError

DEFAULT_MARGIN = 0.01


class GateError(ValueError):
    """The gate cannot run (no such version, no held-out set, unreadable data)."""


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    data: Path
    target: str
    task: Literal["classification", "regression"]
    output: str | None
    margin: float


def validate(root: Path, name: str, version: str, *, actor: str,
             allow_signature_change: bool = False, holdout: Path | None = None,
             margin: float | None = None) -> dict[str, Any]:
    """Run every check on `name`/`version`, record the verdict in its model.yaml lineage and the
    audit log, and return it ({"passed", "checks", "metrics", ...})."""
    root = Path(root)
    try:
        versions = {v.manifest.version: v for v in repository.scan(root, [name])[name]}
    except RepositoryError as exc:
        raise GateError(str(exc)) from None
    if version not in versions:
        raise GateError(f"model '{name}' has no version '{version}'; published: {list(versions)}")
    candidate = versions[version]
    state = aliases.read_aliases(root, name)
    production_label = state.production_of(list(versions))
    production = (versions.get(production_label)
                  if production_label is not None and production_label != version else None)

    checks: list[Check] = []
    session = _load_check(candidate, checks)
    checks.append(_signature_check(candidate, production, allow_signature_change))
    checks.append(Check("reference_profile", candidate.has_profile,
                        "profile.json present" if candidate.has_profile
                        else "no reference profile: drift cannot be monitored "
                        "(publish with --reference DATA or `vigil profile build`)"))
    metrics: dict[str, Any] = {}
    evaluation = _evaluation(candidate, production, holdout, margin)
    if evaluation is None:
        checks.append(Check("quality", False, "no held-out set: give metadata.evaluation in "
                            "model.yaml or --holdout"))
    elif session is not None:
        x, y = _read_holdout(evaluation, candidate)
        try:
            metrics["candidate"] = _quality(session, candidate, x, y, evaluation)
            if production is not None:
                metrics["production"] = _quality(_session(production), production, x, y,
                                                 evaluation)
            checks.append(_compare(metrics, evaluation))
        except GateError as exc:  # a model the held-out set cannot judge fails this check
            checks.append(Check("quality", False, str(exc)))
    verdict = {
        "passed": all(c.passed for c in checks),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": actor,
        "sha256": candidate.manifest.sha256,
        "against": production.manifest.version if production is not None else None,
        "checks": [c.to_dict() for c in checks],
        "metrics": metrics,
        "margin": evaluation.margin if evaluation else None,
    }
    _record(candidate, verdict)
    audit.record(root, actor=actor, action="validate", model=name, to_version=version,
                 reason="passed" if verdict["passed"] else "failed",
                 details={"checks": {c.name: c.passed for c in checks}, "metrics": metrics})
    return verdict


def _session(version: ModelVersion) -> Any:
    from serving.runtime import cpu_session  # the gate runs in the CLI, never in the monitor

    return cpu_session(version.read_verified_bytes())


def _load_check(version: ModelVersion, checks: list[Check]) -> Any:
    try:
        data = version.model_file.read_bytes()
    except OSError as exc:
        checks.append(Check("sha256", False, str(exc)))
        return None
    digest = hashlib.sha256(data).hexdigest()
    checks.append(Check("sha256", digest == version.manifest.sha256,
                        f"file {digest[:12]}, model.yaml {version.manifest.sha256[:12]}"))
    if digest != version.manifest.sha256:
        return None
    try:
        session = _session(version)
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own reason is the detail
        checks.append(Check("loads", False, f"onnxruntime cannot load it: {exc}"))
        return None
    checks.append(Check("loads", True, "onnxruntime session built"))
    return session


def _signature(version: ModelVersion) -> tuple:
    m = version.manifest
    return tuple((s.name, s.datatype, s.shape) for s in m.inputs), tuple(
        (s.name, s.datatype, s.shape) for s in m.outputs)


def _signature_check(candidate: ModelVersion, production: ModelVersion | None,
                     allowed: bool) -> Check:
    if production is None:
        return Check("signature", True, "no other production version to compare with")
    same = _signature(candidate) == _signature(production)
    if same:
        return Check("signature", True, f"same as production {production.manifest.version}")
    detail = (f"differs from production {production.manifest.version}: "
              f"{_signature(candidate)} vs {_signature(production)}")
    if allowed:
        return Check("signature", True, f"{detail} (declared with --allow-signature-change)")
    return Check("signature", False, f"{detail}; declare it with --allow-signature-change")


def _evaluation(candidate: ModelVersion, production: ModelVersion | None,
                holdout: Path | None, margin: float | None) -> Evaluation | None:
    for version in (candidate, production):
        if version is None:
            continue
        doc = version.manifest.metadata.get("evaluation")
        if isinstance(doc, dict) and (doc.get("data") or holdout):
            data = Path(holdout) if holdout else version.path / str(doc["data"])
            if version is candidate and production is not None and not data.exists():
                continue  # inherited from production, whose folder holds the file
            task = doc.get("task", "classification")
            if task not in ("classification", "regression"):
                raise GateError(f"evaluation.task must be classification or regression, not {task!r}")
            return Evaluation(data, str(doc.get("target", "target")), task, doc.get("output"),
                              float(margin if margin is not None
                                    else doc.get("margin", DEFAULT_MARGIN)))
    if holdout is not None:
        return Evaluation(Path(holdout), "target", "classification", None,
                          margin if margin is not None else DEFAULT_MARGIN)
    return None


def _read_holdout(evaluation: Evaluation, version: ModelVersion) -> tuple[np.ndarray, np.ndarray]:
    path = evaluation.data
    if not path.exists():
        raise GateError(f"held-out set {path} does not exist")
    import pandas as pd

    if path.suffix == ".npz":
        with np.load(path) as npz:
            if evaluation.target not in npz:
                raise GateError(f"{path} has no array '{evaluation.target}'")
            y = npz[evaluation.target]
            x = np.column_stack([npz[k] for k in npz.files if k != evaluation.target])
        return x, y
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if evaluation.target not in frame.columns:
        raise GateError(f"{path} has no column '{evaluation.target}'")
    features = version.manifest.metadata.get("feature_names") or [
        c for c in frame.columns if c != evaluation.target]
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise GateError(f"{path} lacks the feature columns {missing[:5]}")
    return frame[features].to_numpy(), frame[evaluation.target].to_numpy()


def _quality(session: Any, version: ModelVersion, x: np.ndarray, y: np.ndarray,
             evaluation: Evaluation) -> dict[str, float]:
    inputs = version.manifest.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise GateError(f"{version.manifest.name}/{version.manifest.version}: the quality check "
                        "needs a model with one 2-D input")
    from vigil.core.tensors import V2_TO_NUMPY

    feed = {inputs[0].name: x.astype(V2_TO_NUMPY[inputs[0].datatype])}
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(names, feed)))
    if evaluation.task == "regression":
        name = evaluation.output or names[0]
        pred = np.asarray(out[name], dtype=np.float64).reshape(len(y), -1)[:, 0]
        return {"rmse": float(np.sqrt(np.mean((pred - y.astype(np.float64)) ** 2)))}
    labels = next((out[n] for n in names if out[n].dtype.kind in "iub"), None)
    scores = out.get(evaluation.output) if evaluation.output else next(
        (out[n] for n in names if out[n].dtype.kind == "f" and out[n].ndim == 2), None)
    if labels is None and scores is not None:
        labels = scores.argmax(axis=1)
    if labels is None:
        raise GateError("no label or score output to judge a classifier by")
    result = {"accuracy": float(np.mean(labels.reshape(-1) == y))}
    if scores is not None:
        result["auc"] = _auc(scores, y)
    return result


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC (binary), or the mean one-vs-rest AUC over classes, by ranks (Mann-Whitney U)."""
    classes = np.unique(y)
    columns = [1] if scores.shape[1] == 2 else list(range(scores.shape[1]))
    aucs = []
    for c in columns:
        positive = y == (classes[c] if len(classes) > c else c)
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if not n_pos or not n_neg:
            continue
        order = scores[:, c].argsort(kind="mergesort")
        ranks = np.empty(len(order), dtype=np.float64)
        ranks[order] = np.arange(1, len(order) + 1)
        # Ties share their mean rank.
        values = scores[order, c]
        _, first, counts = np.unique(values, return_index=True, return_counts=True)
        for start, count in zip(first, counts):
            if count > 1:
                ranks[order[start:start + count]] = start + (count + 1) / 2
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def _compare(metrics: dict[str, Any], evaluation: Evaluation) -> Check:
    candidate = metrics["candidate"]
    production = metrics.get("production")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in candidate.items())
    if production is None:
        return Check("quality", True, f"{shown} (no production version to compare with)")
    worse = []
    for key, value in candidate.items():
        base = production[key]
        if key == "rmse":
            if value > base * (1 + evaluation.margin):
                worse.append(f"rmse {value:.4f} > production {base:.4f} x {1 + evaluation.margin}")
        elif value < base - evaluation.margin:
            worse.append(f"{key} {value:.4f} < production {base:.4f} - {evaluation.margin}")
    if worse:
        return Check("quality", False, "worse than production: " + "; ".join(worse))
    against = ", ".join(f"{k} {v:.4f}" for k, v in production.items())
    return Check("quality", True, f"{shown} vs production {against}")


def _record(version: ModelVersion, verdict: dict[str, Any]) -> None:
    """The verdict into model.yaml's lineage (model.onnx, which the sha256 covers, is untouched)."""
    manifest = dataclasses.replace(
        version.manifest, lineage={**version.manifest.lineage, "validation": verdict})
    atomic_write(version.path / MANIFEST_FILE, manifest.to_yaml().encode(), 0o644)
