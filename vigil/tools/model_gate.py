"""The model gate: whether a version may take live traffic. It loads (its bytes hashed once and
checked against its sha256), its signature matches production's (or the change is declared), its
reference profile exists, and on a held-out set its quality is not worse than production's by
more than a margin.

How it is judged (task, target, output, metrics, margin, held-out set) is the gate's policy,
read from the repository or production's version, never from the candidate
(vigil.core.gate_policy says where from, and what a model's first version is judged on). The
verdict is recorded in the version's lineage (model.yaml) with the policy's digest and content;
canary and promote (vigil.core.model_ops) count it only for these bytes, under the policy in
force, against the production in place. Once the candidate is found, every failure (a policy it
cannot use, a held-out set it cannot be scored on, a metric one side lacks) still records a
verdict: failed, saying why.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from vigil.core import aliases, audit, gate_policy, repository
from vigil.core.files import atomic_write
from vigil.core.gate_policy import GatePolicy, Overrides, PolicyError
from vigil.core.repository import MANIFEST_FILE, ModelVersion, RepositoryError


class GateError(ValueError):
    """The gate cannot run at all (no such version, an override that cannot be used): nothing
    is recorded."""


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Metric:
    """How a quality metric compares: higher or lower is better, and whether the margin is a
    share of production's value (RMSE) or an absolute difference (accuracy, AUC)."""

    higher_is_better: bool
    relative_margin: bool


METRICS = {"accuracy": Metric(True, False), "auc": Metric(True, False),
           "rmse": Metric(False, True)}


def validate(root: Path, name: str, version: str, *, actor: str,
             allow_signature_change: bool = False, holdout: Path | None = None,
             margin: float | None = None) -> dict[str, Any]:
    """Run every check on `name`/`version`, record the verdict in its model.yaml lineage and the
    audit log, and return it ({"passed", "checks", "metrics", "policy", ...})."""
    root = Path(root)
    candidate, production = _pair(root, name, version)
    if holdout is not None and not Path(holdout).is_file():
        raise GateError(f"held-out set {holdout} does not exist (--holdout)")
    if margin is not None and not (math.isfinite(margin) and 0 <= margin <= 1):
        raise GateError(f"--margin must be from 0 to 1, not {margin}")
    verdict = {
        **_judge(root, candidate, production, Overrides(holdout, margin), allow_signature_change),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": actor,
    }
    _record(candidate, verdict)
    policy = verdict["policy"]
    audit.record(root, actor=actor, action="validate", model=name, to_version=version,
                 reason="passed" if verdict["passed"] else "failed",
                 details={"checks": {c["name"]: c["passed"] for c in verdict["checks"]},
                          "metrics": verdict["metrics"],
                          "policy": policy["digest"] if policy else None})
    return verdict


def _pair(root: Path, name: str, version: str) -> tuple[ModelVersion, ModelVersion | None]:
    """The candidate and the production version it is judged against (None: none, or itself)."""
    try:
        versions = {v.manifest.version: v for v in repository.scan(root, [name])[name]}
    except RepositoryError as exc:
        raise GateError(str(exc)) from None
    if version not in versions:
        raise GateError(f"model '{name}' has no version '{version}'; published: {list(versions)}")
    label = aliases.read_aliases(root, name).production_of(list(versions))
    production = versions.get(label) if label is not None and label != version else None
    return versions[version], production


def _judge(root: Path, candidate: ModelVersion, production: ModelVersion | None,
           overrides: Overrides, allow_signature_change: bool) -> dict[str, Any]:
    checks: list[Check] = []
    session = _load_check(candidate, checks)
    checks.append(_signature_check(candidate, production, allow_signature_change))
    checks.append(Check("reference_profile", candidate.has_profile,
                        "profile.json present" if candidate.has_profile
                        else "no reference profile: drift cannot be monitored "
                        "(publish with --reference DATA or `vigil profile build`)"))
    policy: GatePolicy | None = None
    metrics: dict[str, Any] = {}
    try:
        policy = gate_policy.current(root, candidate.manifest.name, production, overrides)
    except PolicyError as exc:
        checks.append(Check("policy", False, f"the gate's policy cannot be used: {exc}"))
    else:
        checks.append(_quality_check(session, candidate, production, policy, metrics))
    return {
        "passed": all(c.passed for c in checks),
        "sha256": candidate.manifest.sha256,
        "against": production.manifest.version if production is not None else None,
        "policy": policy.to_dict(root) if policy is not None else None,
        "checks": [c.to_dict() for c in checks],
        "metrics": metrics,
        "margin": policy.margin if policy is not None else None,
    }


def _session(data: bytes) -> Any:
    from serving.runtime import cpu_session  # the gate runs in the CLI, never in the monitor

    return cpu_session(data)


def _load_check(version: ModelVersion, checks: list[Check]) -> Any:
    """The sha256 check and an onnxruntime session built from the very bytes it hashed."""
    try:
        data = version.read_verified_bytes()
    except (OSError, RepositoryError) as exc:
        checks.append(Check("sha256", False, str(exc)))
        return None
    checks.append(Check("sha256", True, f"file and model.yaml: {version.manifest.sha256[:12]}"))
    try:
        session = _session(data)
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


def _quality_check(session: Any, candidate: ModelVersion, production: ModelVersion | None,
                   policy: GatePolicy | None, metrics: dict[str, Any]) -> Check:
    """Candidate and production scored on the policy's held-out set (into `metrics`) and
    compared; whatever stops the scoring fails this check, saying why."""
    if policy is None:
        if production is None:
            return Check("quality", True, "not judged: no production and no gate policy to "
                         "compare with (a gate.yaml naming a held-out set scores first versions)")
        return Check("quality", False, "no held-out set: write <repository>/<model>/gate.yaml or "
                     "give production's metadata.evaluation a data file")
    if session is None:
        return Check("quality", False, "not judged: the version does not load")
    try:
        # Features as production names them: the candidate does not choose its own exam.
        x, y = _read_holdout(policy, production or candidate)
        metrics["candidate"] = _quality(session, candidate, x, y, policy)
        if production is not None:
            metrics["production"] = _quality(_session(production.read_verified_bytes()),
                                             production, x, y, policy)
        return _compare(metrics, policy)
    except Exception as exc:  # noqa: BLE001 - recorded as the failed check, not a crash
        return Check("quality", False, f"could not be judged: {type(exc).__name__}: {exc}")


def _read_holdout(policy: GatePolicy, version: ModelVersion) -> tuple[np.ndarray, np.ndarray]:
    """(features, target) of the held-out set, read as reference data is (data_files). An npz
    holds the target and, in its other arrays, the features; a table names them by the version's
    feature_names (else every column but the target)."""
    from monitoring.data_files import load_data

    path, target = policy.data, policy.target
    columns = load_data(path)
    if target not in columns:
        raise GateError(f"{path.name} has no column '{target}'")
    if path.suffix == ".npz":
        features = [k for k in columns if k != target]
    else:
        features = version.manifest.metadata.get("feature_names") or [
            c for c in columns if c != target]
    if target in features:
        raise GateError(f"feature_names of {version.manifest.version} include the target "
                        f"'{target}'")
    missing = [f for f in features if f not in columns]
    if missing:
        raise GateError(f"{path.name} lacks the feature columns {missing[:5]}")
    return np.column_stack([columns[f] for f in features]), columns[target]


def _quality(session: Any, version: ModelVersion, x: np.ndarray, y: np.ndarray,
             policy: GatePolicy) -> dict[str, float]:
    inputs = version.manifest.inputs
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise GateError(f"{version.manifest.name}/{version.manifest.version}: the quality check "
                        "needs a model with one 2-D input")
    from vigil.core.tensors import V2_TO_NUMPY

    feed = {inputs[0].name: x.astype(V2_TO_NUMPY[inputs[0].datatype])}
    names = [o.name for o in session.get_outputs()]
    out = dict(zip(names, session.run(names, feed)))
    if policy.task == "regression":
        name = policy.output or names[0]
        pred = np.asarray(out[name], dtype=np.float64).reshape(len(y), -1)[:, 0]
        return {"rmse": float(np.sqrt(np.mean((pred - y.astype(np.float64)) ** 2)))}
    labels = next((out[n] for n in names if out[n].dtype.kind in "iub"), None)
    scores = out.get(policy.output) if policy.output else next(
        (out[n] for n in names if out[n].dtype.kind == "f" and out[n].ndim == 2), None)
    if labels is None and scores is not None:
        labels = scores.argmax(axis=1)
    if labels is None:
        raise GateError("no label or score output to judge a classifier by")
    result = {"accuracy": float(np.mean(labels.reshape(-1) == y))}
    if scores is not None:
        result["auc"] = auc(np.asarray(scores, dtype=np.float64).reshape(len(y), -1), y)
    return result


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney U statistic (scipy; ties count half): of the second column
    for two, else the mean one-vs-rest AUC over the classes both present and absent in `y`
    (NaN when there is none). Column c scores the c-th of y's sorted labels when all appear,
    else (integer labels) label c."""
    from scipy.stats import mannwhitneyu

    columns = scores.shape[1]
    labels = np.unique(y)
    if len(labels) == columns:
        column_labels = labels
    elif y.dtype.kind in "iu" and labels.min() >= 0 and labels.max() < columns:
        column_labels = np.arange(columns)
    else:
        raise GateError(f"cannot tell which of the {columns} score columns scores which of the "
                        f"labels {labels[:10].tolist()}")
    aucs = []
    for c in [1] if columns == 2 else range(columns):
        positive = y == column_labels[c]
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            u = mannwhitneyu(scores[positive, c], scores[~positive, c]).statistic
            aucs.append(float(u) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def _compare(metrics: dict[str, Any], policy: GatePolicy) -> Check:
    """The policy's metrics, candidate against production; one that either side lacks, or that
    is not a number (AUC on a set with one class), fails."""
    candidate, production = metrics["candidate"], metrics.get("production")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in candidate.items())
    lacking = [m for m in policy.metrics if not math.isfinite(candidate.get(m, math.nan))]
    if lacking:
        return Check("quality", False, f"the candidate has no defined {', '.join(lacking)} on "
                     f"the held-out set (policy metrics {list(policy.metrics)}): {shown}")
    if production is None:
        return Check("quality", True, f"{shown} (no production version to compare with)")
    worse = []
    for key in policy.metrics:
        value, base = candidate[key], production.get(key, math.nan)
        if not math.isfinite(base):
            worse.append(f"production has no defined {key} to compare with")
        elif METRICS[key].relative_margin and not METRICS[key].higher_is_better:
            if value > base * (1 + policy.margin):
                worse.append(f"{key} {value:.4f} > production {base:.4f} x {1 + policy.margin}")
        elif value < base - policy.margin:
            worse.append(f"{key} {value:.4f} < production {base:.4f} - {policy.margin}")
    if worse:
        return Check("quality", False, "worse than production: " + "; ".join(worse))
    against = ", ".join(f"{k} {v:.4f}" for k, v in production.items())
    return Check("quality", True, f"{shown} vs production {against}")


def _record(version: ModelVersion, verdict: dict[str, Any]) -> None:
    """The verdict into model.yaml's lineage (model.onnx, which the sha256 covers, is untouched)."""
    manifest = dataclasses.replace(
        version.manifest, lineage={**version.manifest.lineage, "validation": verdict})
    atomic_write(version.path / MANIFEST_FILE, manifest.to_yaml().encode(), 0o644)
