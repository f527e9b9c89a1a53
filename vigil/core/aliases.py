"""Which version of a model serves what traffic: production, canary (with a weight), shadow.

The state of one model lives in ``<repository>/<model>/aliases.json``, replaced atomically under a
lock, so a redeploy, a restarted replica and a new autoscaled one all read the same aliases. Every
change bumps the model's ``generation``; replicas report the generation they serve. Versions
themselves never change: retiring one only stops it being loaded.

The transitions are pure functions (state, published versions, arguments) -> new state; they
raise AliasError with the HTTP status an operator should see (404 unknown version, 409 a change
the current state does not allow).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vigil.core.files import atomic_write, locked
from vigil.core.rollout import RolloutState

ALIASES_FILE = "aliases.json"
LOCK_FILE = ".aliases.lock"
MAX_PREVIOUS = 50  # production versions remembered for rollback
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class AliasError(ValueError):
    """A change the model's versions or aliases do not allow; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class AliasFileError(AliasError):
    """The model's aliases.json cannot be read or is malformed (409: the repository is in a
    state no change can start from; the message names the file and what is wrong)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{message}; fix the file (or remove it: production becomes the newest "
                         "version)", 409)


@dataclass(frozen=True)
class Canary:
    """A version that takes `weight` of the traffic sent to the model without a version.
    With `sticky_header`, the value of that request header picks the side, so one user (one
    header value) always sees one version."""

    version: str
    weight: float
    sticky_header: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "weight": self.weight, "sticky_header": self.sticky_header}


@dataclass(frozen=True)
class AliasState:
    """A model's aliases. `production` None means "the newest version that is not retired"
    (a repository that never had an alias set behaves as before aliases existed)."""

    model: str
    generation: int = 0
    production: str | None = None
    previous: tuple[str, ...] = ()  # earlier production versions, oldest first
    canary: Canary | None = None
    shadow: str | None = None
    retired: frozenset[str] = field(default_factory=frozenset)
    unloaded: bool = False  # Triton's unload: no version of the model is served
    rollout: RolloutState | None = None  # a progressive rollout of the canary (vigil.core.rollout)

    def production_of(self, published: Sequence[str]) -> str | None:
        """The version production traffic goes to, given the published versions (oldest first)."""
        if self.production is not None:
            return self.production
        live = [v for v in published if v not in self.retired]
        return live[-1] if live else None

    def serving(self, published: Sequence[str]) -> list[str]:
        """The versions a replica keeps loaded: every published one that is not retired."""
        if self.unloaded:
            return []
        return [v for v in published if v not in self.retired]

    def roles(self, version: str, published: Sequence[str]) -> list[str]:
        """The aliases that point at `version` ("production", "canary", "shadow")."""
        out = []
        if version == self.production_of(published):
            out.append("production")
        if self.canary is not None and self.canary.version == version:
            out.append("canary")
        if self.shadow == version:
            out.append("shadow")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "generation": self.generation,
            "production": self.production,
            "previous": list(self.previous),
            "canary": None if self.canary is None else self.canary.to_dict(),
            "shadow": self.shadow,
            "retired": sorted(self.retired),
            "unloaded": self.unloaded,
            "rollout": None if self.rollout is None else self.rollout.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> AliasState:
        if not isinstance(doc, dict):
            raise AliasFileError(f"{where}: expected a JSON object")
        try:
            canary = doc.get("canary")
            return cls(
                model=str(doc["model"]),
                generation=int(doc.get("generation", 0)),
                production=_opt_str(doc.get("production")),
                previous=tuple(str(v) for v in doc.get("previous", ())),
                canary=None if canary is None else Canary(
                    str(canary["version"]), float(canary["weight"]),
                    _opt_str(canary.get("sticky_header")),
                ),
                shadow=_opt_str(doc.get("shadow")),
                retired=frozenset(str(v) for v in doc.get("retired", ())),
                unloaded=bool(doc.get("unloaded", False)),
                rollout=None if doc.get("rollout") is None
                else RolloutState.from_dict(doc["rollout"], where),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AliasFileError(f"{where}: malformed aliases ({exc!r})") from exc


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# ---------------------------------------------------------------- storage


def aliases_path(root: Path, model: str) -> Path:
    return Path(root) / model / ALIASES_FILE


def read_aliases(root: Path, model: str) -> AliasState:
    """The model's aliases; the defaults when none were ever set."""
    path = aliases_path(root, model)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return AliasState(model)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise AliasFileError(f"{path}: not JSON ({exc})") from exc
    state = AliasState.from_dict(doc, str(path))
    if state.model != model:
        raise AliasFileError(f"{path}: names model {state.model!r}, not {model!r}")
    return state


@dataclass
class ModelLock:
    """A model's lock, held: its file also carries a note across a crash. ``pending G`` is
    written before an audited change numbered G starts and cleared once its aliases are written;
    found at the next lock, it tells whether that change was made (the aliases reached G) or
    not (its audit line, if written, is void: ``void G`` until an audited change records it)."""

    fd: int

    def note(self) -> tuple[str, int] | None:
        raw = os.pread(self.fd, 64, 0).decode(errors="replace").split()
        if len(raw) == 2 and raw[0] in ("pending", "void") and raw[1].isdigit():
            return raw[0], int(raw[1])
        return None

    def write_note(self, kind: str, generation: int) -> None:
        # Not fsynced: it is read after a process dies (the page cache keeps it), and an fsync
        # would double the cost of a change.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{kind} {generation}\n".encode(), 0)

    def clear(self) -> None:
        os.ftruncate(self.fd, 0)

    def settle(self, before: AliasState) -> int | None:
        """The generation of a change a crash left unmade (None: none); the note says void
        until `clear`."""
        note = self.note()
        if note is None:
            return None
        kind, generation = note
        if kind == "pending" and before.generation >= generation:
            self.clear()  # the aliases were written: only the clearing was missed
            return None
        if kind == "pending":
            self.write_note("void", generation)
        return generation


@contextmanager
def model_lock(root: Path, model: str) -> Iterator[ModelLock]:
    """The model's exclusive lock (writers on one host, or on a shared filesystem with working
    flock, never lose each other's changes); 404 AliasError for a model not in the repository."""
    model_dir = Path(root) / model
    if not model_dir.is_dir():
        raise AliasError(f"model '{model}' is not in the repository {root}", 404)
    with locked(model_dir / LOCK_FILE) as fd:
        yield ModelLock(fd)


def next_generation(before: AliasState, void: int | None) -> int:
    """The generation a change of `before` gets: past any number a void change took."""
    return max(before.generation, void or 0) + 1


def write_aliases(root: Path, state: AliasState) -> None:
    """Replace the model's aliases file atomically (call under its lock)."""
    data = json.dumps(state.to_dict(), indent=2).encode() + b"\n"
    atomic_write(aliases_path(root, state.model), data, 0o644)


def change(
    root: Path, model: str, edit: Callable[[AliasState], AliasState]
) -> tuple[AliasState, AliasState]:
    """Apply `edit` to the model's aliases under its lock and write the result atomically with
    the generation bumped, unaudited (publishing's pin; audited changes go through
    vigil.core.model_ops). Returns (before, after); an edit that changes nothing writes nothing
    and returns the same state twice."""
    with model_lock(root, model) as lock:
        before = read_aliases(root, model)
        after = edit(before)
        if after == before:
            return before, before
        after = replace(after, generation=next_generation(before, lock.settle(before)))
        write_aliases(root, after)
        return before, after


# ---------------------------------------------------------------- transitions


def _published(state: AliasState, published: Sequence[str], version: str) -> None:
    if version not in published:
        raise AliasError(
            f"model '{state.model}' has no version '{version}'; published: {list(published)}", 404
        )
    if version in state.retired:
        raise AliasError(f"{state.model}/{version} is retired and cannot serve traffic again")


def promote(state: AliasState, published: Sequence[str], version: str) -> AliasState:
    """Make `version` production. The old production is remembered for rollback; a canary or
    shadow on `version` ends, since it now takes all the traffic."""
    _published(state, published, version)
    current = state.production_of(published)
    previous = state.previous
    if current is not None and current != version:
        previous = (*previous, current)[-MAX_PREVIOUS:]
    canary = None if state.canary and state.canary.version == version else state.canary
    shadow = None if state.shadow == version else state.shadow
    return replace(state, production=version, previous=previous, canary=canary, shadow=shadow,
                   unloaded=False)


def rollback(state: AliasState, published: Sequence[str]) -> AliasState:
    """Production back to the previous production version (skipping retired ones)."""
    previous = list(state.previous)
    current = state.production_of(published)
    while previous:
        candidate = previous.pop()
        if candidate in published and candidate not in state.retired and candidate != current:
            canary = state.canary if state.canary and state.canary.version != candidate else None
            shadow = None if state.shadow == candidate else state.shadow
            return replace(state, production=candidate, previous=tuple(previous), canary=canary,
                           shadow=shadow)
    raise AliasError(
        f"model '{state.model}' has no earlier production version to roll back to "
        f"(production is {current})"
    )


def set_canary(
    state: AliasState, published: Sequence[str], version: str, weight: float,
    sticky_header: str | None = None,
) -> AliasState:
    """Send `weight` (0 < weight < 1) of unversioned traffic to `version`."""
    _published(state, published, version)
    if not 0.0 < weight < 1.0:
        raise AliasError(f"canary weight must be above 0 and below 1, not {weight}", 400)
    if version == state.production_of(published):
        raise AliasError(f"{state.model}/{version} is already production")
    if sticky_header is not None and (
        not sticky_header or not set(sticky_header) <= _HEADER_CHARS
    ):
        raise AliasError(f"sticky_header {sticky_header!r} is not an HTTP header name", 400)
    header = sticky_header.lower() if sticky_header else None
    return replace(state, canary=Canary(version, float(weight), header))


def clear_canary(state: AliasState) -> AliasState:
    return replace(state, canary=None)


def set_shadow(state: AliasState, published: Sequence[str], version: str) -> AliasState:
    """Copy each unversioned request to `version` after answering it from production."""
    _published(state, published, version)
    if version == state.production_of(published):
        raise AliasError(f"{state.model}/{version} is production; a shadow must be another version")
    return replace(state, shadow=version)


def clear_shadow(state: AliasState) -> AliasState:
    return replace(state, shadow=None)


def retire(state: AliasState, published: Sequence[str], version: str) -> AliasState:
    """Stop loading `version` anywhere (its files stay: versions are immutable)."""
    if version not in published:
        raise AliasError(
            f"model '{state.model}' has no version '{version}'; published: {list(published)}", 404
        )
    roles = state.roles(version, published)
    if roles:
        raise AliasError(
            f"{state.model}/{version} is {' and '.join(roles)}; move that alias to another "
            "version before retiring it"
        )
    return replace(state, retired=state.retired | {version})


def set_loaded(state: AliasState, loaded: bool) -> AliasState:
    return replace(state, unloaded=not loaded)
