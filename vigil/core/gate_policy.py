"""The model gate's policy, read from files a candidate version does not write, and whether a
recorded verdict lets a version take live traffic under it.

A policy says how a candidate is judged on a held-out set: `task` (classification or
regression), `target` (the label or value column), `output` (classification: the score output;
regression: the prediction output), `metrics` (compared with production's), `margin` (accuracy
and AUC may drop this much; RMSE may grow this share) and `data` (the held-out file). Each key
comes from the first of these that gives it:

    1. <repository>/<model>/gate.yaml    the model's policy (an operator's file)
    2. <repository>/gate.yaml            the repository's defaults
    3. production's model.yaml, under metadata.evaluation (the version serving now)
    4. the defaults: classification, target "target", the task's metrics, margin 0.01

never from the candidate's own model.yaml (in CI, the pull request's author writes that). A
gate.yaml holds those keys at its top level; an unknown key is refused. `data` is relative to the
folder of the file that names it; an absolute path, a '..' and a link that resolves outside the
repository are refused.

A policy is known by its digest, the sha256 of its content (the keys, with the held-out file's
sha256 in place of its path): a changed margin, metric or held-out file makes another policy. A
verdict counts for live traffic only if it passed, for the version's bytes, under the policy in
force now, against the version in production now (see `refusal`).

No policy (nothing names a held-out file): a model's first version, with no production, is judged
on the checks that need no baseline (it loads, its sha256, its profile); once a production
exists, the quality check fails until a gate.yaml or production's metadata names a held-out set.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from vigil.core.files import file_sha256
from vigil.core.repository import ModelVersion

POLICY_FILE = "gate.yaml"
DEFAULT_MARGIN = 0.01
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "auc"),
    "regression": ("rmse",),
}
KEYS = ("data", "target", "task", "output", "metrics", "margin")


class PolicyError(ValueError):
    """A policy that cannot be used: malformed, or naming data outside the repository."""


@dataclass(frozen=True)
class Overrides:
    """An operator's overrides on the command line (`vigil models validate --holdout --margin`):
    a verdict made with them is recorded under that other policy."""

    holdout: Path | None = None
    margin: float | None = None


@dataclass(frozen=True)
class GatePolicy:
    task: str
    target: str
    output: str | None
    metrics: tuple[str, ...]
    margin: float
    data: Path  # the held-out file, resolved
    data_sha256: str
    source: str  # the files that gave its keys

    def content(self) -> dict[str, Any]:
        """What the digest covers."""
        return {"task": self.task, "target": self.target, "output": self.output,
                "metrics": list(self.metrics), "margin": self.margin,
                "data_sha256": self.data_sha256}

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self, root: Path) -> dict[str, Any]:
        """As a verdict records it: digest, content, where it came from, the data's path."""
        real = Path(root).resolve()
        data = (self.data.relative_to(real).as_posix() if self.data.is_relative_to(real)
                else str(self.data))
        return {"digest": self.digest, "source": self.source, "data": data,
                "content": self.content()}


@dataclass(frozen=True)
class _Layer:
    source: str  # as shown: "breast_cancer/gate.yaml"
    base: Path  # where its relative `data` starts
    doc: dict[str, Any]


def current(root: Path, model: str, production: ModelVersion | None,
            overrides: Overrides = Overrides()) -> GatePolicy | None:
    """The policy in force for `model` (None: nothing names a held-out set); PolicyError when
    a file is malformed or names data it may not."""
    root = Path(root)
    layers = _layers(root, model, production)
    found: dict[str, tuple[Any, _Layer]] = {}
    for layer in layers:
        for key, value in layer.doc.items():
            found.setdefault(key, (value, layer))
    if "data" not in found and overrides.holdout is None:
        return None
    used = {id(layer) for key, (_, layer) in found.items()
            if not (key == "data" and overrides.holdout is not None)}
    sources = [layer.source for layer in layers if id(layer) in used]
    if overrides.holdout is not None:
        data = Path(overrides.holdout).expanduser().resolve()
        if not data.is_file():
            raise PolicyError(f"held-out set {overrides.holdout} does not exist")
    else:
        value, layer = found["data"]
        data = confined(root, layer.base, value, layer.source)
    sources += [f"--{name}" for name, v in (("holdout", overrides.holdout),
                                             ("margin", overrides.margin)) if v is not None]
    return _policy({k: v for k, (v, _) in found.items()}, overrides, data,
                   ", ".join(sources) or "defaults")


def _policy(values: dict[str, Any], overrides: Overrides, data: Path, source: str) -> GatePolicy:
    task = values.get("task", "classification")
    if task not in TASK_METRICS:
        raise PolicyError(f"task must be one of {sorted(TASK_METRICS)}, not {task!r} ({source})")
    target = values.get("target", "target")
    output = values.get("output")
    if not isinstance(target, str) or not target or not (output is None or isinstance(output, str)):
        raise PolicyError(f"target and output must be names ({source})")
    metrics = values.get("metrics", TASK_METRICS[task])
    if (isinstance(metrics, str) or not isinstance(metrics, list | tuple) or not metrics
            or not set(metrics) <= set(TASK_METRICS[task])):
        raise PolicyError(f"metrics must be a non-empty list of {list(TASK_METRICS[task])} for "
                          f"{task}, not {metrics!r} ({source})")
    margin = overrides.margin if overrides.margin is not None else values.get(
        "margin", DEFAULT_MARGIN)
    if (isinstance(margin, bool) or not isinstance(margin, int | float)
            or not math.isfinite(margin) or not 0 <= margin <= 1):
        raise PolicyError(f"margin must be a number from 0 to 1, not {margin!r} ({source})")
    return GatePolicy(task, target, output, tuple(dict.fromkeys(metrics)), float(margin), data,
                      file_sha256(data), source)


def _layers(root: Path, model: str, production: ModelVersion | None) -> list[_Layer]:
    layers = []
    for base, shown in ((root / model, f"{model}/{POLICY_FILE}"), (root, POLICY_FILE)):
        path = base / POLICY_FILE
        if path.exists():
            layers.append(_Layer(shown, base, _read_policy_file(path, shown)))
    if production is not None:
        doc = production.manifest.metadata.get("evaluation")
        if doc is not None and not isinstance(doc, dict):
            raise PolicyError(f"production {model}/{production.manifest.version}: "
                              "metadata.evaluation must be a mapping")
        if doc:
            layers.append(_Layer(f"{model}/{production.manifest.version}/model.yaml "
                                 "(production)", production.path,
                                 {k: v for k, v in doc.items() if k in KEYS}))
    return layers


def _read_policy_file(path: Path, shown: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"{shown}: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise PolicyError(f"{shown}: expected a mapping of {list(KEYS)}")
    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise PolicyError(f"{shown}: unknown keys {unknown}; known: {list(KEYS)}")
    return doc


def confined(root: Path, base: Path, value: Any, source: str) -> Path:
    """`value` (a relative path from `base`) as an existing file inside the repository; a clear
    PolicyError for anything else."""
    if not isinstance(value, str) or not value.strip():
        raise PolicyError(f"{source}: data must be a relative path, not {value!r}")
    parts = PurePosixPath(value).parts
    if PurePosixPath(value).is_absolute() or Path(value).is_absolute():
        raise PolicyError(f"{source}: data {value!r} is absolute; name a file inside the "
                          "repository, relative to the file that names it")
    if ".." in parts or "\\" in value:
        raise PolicyError(f"{source}: data {value!r} leaves its folder ('..'); name a file "
                          "inside the repository")
    path = (base / value).resolve()
    if not path.is_relative_to(Path(root).resolve()):
        raise PolicyError(f"{source}: data {value!r} resolves to {path}, outside the repository "
                          "(a link?)")
    if not path.is_file():
        raise PolicyError(f"{source}: held-out set {value!r} does not exist")
    return path


def refusal(verdict: Any, sha256: str, policy: GatePolicy | None,
            production: str | None) -> str | None:
    """Why a recorded verdict does not let its version take traffic now (None: it does), as
    '<model>/<version> ...' would continue."""
    if not isinstance(verdict, dict):
        return "has not been validated"
    if verdict.get("sha256") != sha256:
        return "was validated for other bytes"
    if verdict.get("passed") is not True:
        return "failed the model gate"
    if "policy" not in verdict:
        return "was validated before the gate recorded its policy"
    recorded = verdict["policy"]
    now = None if policy is None else policy.digest
    then = recorded.get("digest") if isinstance(recorded, dict) else None
    if then != now:
        in_force = "none" if policy is None else _shown(
            {"digest": now, "source": policy.source, "content": policy.content()})
        return (f"was validated under another policy ({_shown(recorded)}) than the one in force "
                f"({in_force})")
    if verdict.get("against") != production:
        return (f"was validated against production {verdict.get('against')}, and production is "
                f"now {production}")
    return None


def _shown(doc: Any) -> str:
    if not isinstance(doc, dict):
        return "none"
    margin = (doc.get("content") or {}).get("margin")
    return f"{str(doc.get('digest'))[:12]} from {doc.get('source')}, margin {margin}"
