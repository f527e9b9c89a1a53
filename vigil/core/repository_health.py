"""What is wrong with one model's entry in the repository: an unreadable model.yaml, a corrupt
aliases.json, a served version whose folder is gone or whose model.onnx changed, an alias that
names no version. Each fault names its model, what it is about and why, for the index, the
metric and the log alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from vigil.core import repository
from vigil.core.aliases import AliasError, AliasState, read_aliases
from vigil.core.files import file_sha256
from vigil.core.repository import ModelVersion, RepositoryError


class FaultKind(StrEnum):
    """The kinds of repository fault (the `reason` label of vigil_model_repository_faults)."""

    UNREADABLE = "unreadable"  # a model.yaml of the model cannot be read or is malformed
    ALIASES = "aliases"  # the model's aliases.json cannot be read or is malformed
    MISSING = "missing"  # a served version's folder (or its model.onnx) is gone
    MODIFIED = "modified"  # a version's model.onnx no longer hashes to its recorded sha256
    BROKEN_ALIAS = "broken_alias"  # an alias names a version that is not published (or retired)


# Faults that leave the whole model without a readable entry (vs. one version or one alias).
MODEL_WIDE = frozenset({FaultKind.UNREADABLE, FaultKind.ALIASES})


@dataclass(frozen=True, order=True)
class Fault:
    """One fault: `subject` is the version (missing, modified), the alias (broken_alias) or ''
    (the whole model)."""

    model: str
    kind: FaultKind
    subject: str
    detail: str

    @property
    def key(self) -> tuple[str, str, str]:
        """What a fault is about, whatever its wording: a transition is a key that comes or goes."""
        return self.model, str(self.kind), self.subject

    def describe(self) -> str:
        where = f"{self.model}/{self.subject}" if self.kind in (
            FaultKind.MISSING, FaultKind.MODIFIED) else self.model
        alias = f" alias {self.subject}" if self.kind is FaultKind.BROKEN_ALIAS else ""
        return f"{where}{alias}: {self.kind}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": str(self.kind), "subject": self.subject,
                "detail": self.detail}


def unreadable(model: str, error: Exception) -> Fault:
    return Fault(model, FaultKind.UNREADABLE, "", f"{error}; fix or remove that model.yaml")


def aliases_unreadable(model: str, error: Exception) -> Fault:
    return Fault(model, FaultKind.ALIASES, "", str(error))


def broken_aliases(state: AliasState, published: Sequence[str]) -> dict[str, str]:
    """Each alias that names a version no request can go to, with why: production (set
    explicitly), canary or shadow on a version that is not published, or is retired."""
    named = {"production": state.production, "shadow": state.shadow,
             "canary": state.canary.version if state.canary else None}
    broken = {}
    for alias, version in named.items():
        if version is None:
            continue
        if version not in published:
            broken[alias] = (f"names version {version}, which is not in the repository "
                             f"(published: {', '.join(published) or 'none'}); no request goes "
                             "to it")
        elif version in state.retired:
            broken[alias] = f"names version {version}, which is retired; no request goes to it"
    return broken


def alias_faults(state: AliasState, published: Sequence[str]) -> list[Fault]:
    return [Fault(state.model, FaultKind.BROKEN_ALIAS, alias, why)
            for alias, why in sorted(broken_aliases(state, published).items())]


def file_fault(version: ModelVersion) -> Fault | None:
    """What a fresh load of `version` would find wrong with its model.onnx: gone (missing) or
    other bytes than its model.yaml records (modified); None when it matches."""
    manifest = version.manifest
    try:
        digest = file_sha256(version.model_file)
    except FileNotFoundError:
        return Fault(manifest.name, FaultKind.MISSING, manifest.version,
                     f"{version.model_file} is gone")
    except OSError as exc:
        return Fault(manifest.name, FaultKind.MISSING, manifest.version,
                     f"{version.model_file} cannot be read: {exc}")
    if digest != manifest.sha256:
        return Fault(manifest.name, FaultKind.MODIFIED, manifest.version,
                     f"{version.model_file}: sha256 {digest} does not match "
                     f"{manifest.sha256} recorded in {repository.MANIFEST_FILE}")
    return None


def folder_gone(model: str, version: str, root: Path) -> Fault:
    return Fault(model, FaultKind.MISSING, version,
                 f"{Path(root) / model / version} is gone from the repository")


def disk_faults(root: Path, model: str) -> list[Fault]:
    """The model's faults as its files alone show them (no server: nothing is held in memory,
    so a version named by an alias but gone from disk is a broken alias)."""
    try:
        versions = repository.scan(Path(root), [model])[model]
    except repository.ModelNotFound:
        return []
    except RepositoryError as exc:
        return [unreadable(model, exc)]
    faults = [f for v in versions if (f := file_fault(v)) is not None]
    try:
        state = read_aliases(Path(root), model)
    except AliasError as exc:
        return [aliases_unreadable(model, exc), *faults]
    return [*faults, *alias_faults(state, [v.manifest.version for v in versions])]


def counts(faults: Iterable[Fault]) -> dict[tuple[str, str], int]:
    """How many faults of each (model, kind)."""
    out: dict[tuple[str, str], int] = {}
    for fault in faults:
        key = (fault.model, str(fault.kind))
        out[key] = out.get(key, 0) + 1
    return out
