"""Each model's state on a refresh against its repository entry: the versions it routes on (those
a reload cannot replace kept from memory), its repository faults, and one log line and a gauge
for each fault that comes or goes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from serving.metrics import replica_metrics
from serving.router import ModelRoutes
from serving.served import ServedModel
from vigil.core.aliases import AliasState
from vigil.core import repository
from vigil.core.repository import ModelNotFound, ModelVersion, RepositoryError, version_order
from vigil.core.repository_health import (
    Fault,
    FaultKind,
    alias_faults,
    counts,
    file_fault,
    unreadable,
)

logger = logging.getLogger("vigil.models")
MEMORY = "served from memory: "  # what a fault's detail starts with while the version serves


def _label(version: ModelVersion) -> str:
    return version.manifest.version


def scan(root: Path, only: list[str] | None
         ) -> tuple[dict[str, list[ModelVersion]], dict[str, Fault]]:
    """The repository model by model: one malformed version makes only its model unreadable,
    never the whole repository. A model folder without any version is found empty."""
    if not root.is_dir():
        return {}, {}
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and repository.valid_name(p.name))
    found: dict[str, list[ModelVersion]] = {}
    faults: dict[str, Fault] = {}
    for name in names:
        if only is not None and name not in only:
            continue
        try:
            found[name] = repository.scan(root, [name])[name]
        except ModelNotFound:
            found[name] = []  # no version (yet, or any more: see routable)
        except RepositoryError as exc:
            faults[name] = unreadable(name, exc)
    return found, faults


def routable(root: Path, name: str, on_disk: Sequence[ModelVersion], aliases: AliasState,
             current: ModelRoutes[ServedModel] | None) -> tuple[list[ModelVersion], list[Fault]]:
    """The versions the model routes on: those on disk, and each version loaded here whose
    folder is gone but which an alias still names (production, canary, shadow): a reload that
    cannot replace it keeps it, from memory, with a `missing` fault. Oldest first."""
    disk = {_label(v) for v in on_disk}
    gone = {label: served.version for label, served in (current.versions.items() if current
                                                         else ()) if label not in disk}
    if not gone:
        return list(on_disk), []
    candidates = sorted(disk | set(gone), key=version_order)
    named = {aliases.production_of(candidates), aliases.shadow,
             aliases.canary.version if aliases.canary else None}
    held = {label: v for label, v in gone.items()
            if label in named and label in aliases.serving(candidates)}
    faults = [Fault(name, FaultKind.MISSING, label,
                    f"{MEMORY}{Path(root) / name / label} is gone from the repository; publish "
                    "it again, or move its alias to another version")
              for label in sorted(held, key=version_order)]
    return sorted([*on_disk, *held.values()], key=lambda v: version_order(_label(v))), faults


def unreadable_routes(fault: Fault, current: ModelRoutes[ServedModel] | None
                      ) -> ModelRoutes[ServedModel]:
    """The routes of a model whose entry cannot be read: what it served, kept; a model that
    served nothing is unavailable, with why."""
    if current is not None and current.versions:
        return current
    return ModelRoutes({}, AliasState(fault.model), unavailable=fault.describe())


def file_faults(on_disk: Sequence[ModelVersion], loaded: Mapping[str, object]
                ) -> dict[str, Fault]:
    """By version: what a fresh load would find wrong with its model.onnx; for a version loaded
    here the fault says it serves from memory (what it loaded then matched)."""
    out = {}
    for version in on_disk:
        fault = file_fault(version)
        if fault is None:
            continue
        if _label(version) in loaded:
            fault = Fault(fault.model, fault.kind, fault.subject, MEMORY + fault.detail)
        out[_label(version)] = fault
    return out


def model_faults(aliases: AliasState, routes_on: Sequence[str], held: list[Fault],
                 files: Mapping[str, Fault]) -> tuple[Fault, ...]:
    """Every fault of a readable model, in a stable order."""
    return tuple(sorted([*held, *files.values(), *alias_faults(aliases, routes_on)]))


class FaultBook:
    """The faults the last refresh found, by model: each that appears is logged once (an error,
    with what to do), each that clears once (info), and vigil_model_repository_faults follows
    them. A fault is known by its model, kind and subject, whatever its wording."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str, str], Fault] = {}

    def update(self, faults: Mapping[str, tuple[Fault, ...]]) -> None:
        now = {f.key: f for fs in faults.values() for f in fs}
        with self._lock:
            before, self._keys = self._keys, now
        for key in sorted(now.keys() - before.keys()):
            logger.error("repository fault: %s", now[key].describe())
        for key in sorted(before.keys() - now.keys()):
            logger.info("repository fault cleared: %s/%s %s", key[0], key[2] or "*", key[1])
        if now.keys() != before.keys():
            replica_metrics().repository_faults(counts(now.values()))
