"""One alias change, the same from every door: the server's admin routes, the CLI without a
server, the monitor's automatic rollback. Checks it, writes the aliases and the audit entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.core import aliases, audit, repository
from vigil.core.aliases import AliasError, AliasState
from vigil.core.repository import VersionManifest

# action -> whether it needs a version
ACTIONS = {
    "promote": True,
    "rollback": False,
    "canary": True,
    "canary_cleared": False,
    "shadow": True,
    "shadow_cleared": False,
    "retire": True,
    "load": False,
    "unload": False,
}


@dataclass(frozen=True)
class Change:
    """What an action did: the aliases before and after, and the audit entry (None when the
    action changed nothing)."""

    action: str
    before: AliasState
    after: AliasState
    from_version: str | None
    to_version: str | None
    entry: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.after.model,
            "action": self.action,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "changed": self.entry is not None,
            "generation": self.after.generation,
            "aliases": self.after.to_dict(),
        }


def gate_passed(manifest: VersionManifest) -> bool:
    """Whether the version's recorded model-gate verdict (vigil.tools.model_gate) passed, for these very
    bytes."""
    verdict = manifest.lineage.get("validation")
    return (isinstance(verdict, dict) and verdict.get("passed") is True
            and verdict.get("sha256") == manifest.sha256)


def _check_gate(root: Path, model: str, version: str, force: bool, reason: str) -> None:
    """promote takes only a version that passed the gate, unless forced with a reason."""
    if force:
        if not reason.strip():
            raise AliasError("a forced promotion needs a reason (it goes to the audit log)", 400)
        return
    found = {v.manifest.version: v for v in repository.scan(Path(root), [model])[model]}
    if version in found and not gate_passed(found[version].manifest):
        verdict = found[version].manifest.lineage.get("validation")
        why = "has not been validated" if not isinstance(verdict, dict) else (
            "failed the model gate" if not verdict.get("passed")
            else "was validated for other bytes")
        raise AliasError(
            f"{model}/{version} {why}: run `vigil models validate {model} {version}`, or force "
            "the promotion with a reason", 409)


def published_versions(root: Path, model: str) -> list[str]:
    """The model's versions on disk, oldest first (404 AliasError for an unknown model)."""
    try:
        return [v.manifest.version for v in repository.scan(Path(root), [model])[model]]
    except repository.RepositoryError as exc:
        raise AliasError(str(exc), 404) from exc


def apply(
    root: Path,
    model: str,
    action: str,
    *,
    actor: str,
    reason: str = "",
    version: str | None = None,
    weight: float | None = None,
    sticky_header: str | None = None,
    details: dict[str, Any] | None = None,
    force: bool = False,
) -> Change:
    """Apply `action` to the model's aliases; raises AliasError (with its HTTP status).
    `force` lets promote take a version that has not passed the model gate (reason required)."""
    if action not in ACTIONS:
        raise AliasError(f"unknown action {action!r}; one of {sorted(ACTIONS)}", 400)
    if ACTIONS[action] and not version:
        raise AliasError(f"{action} needs a version", 400)
    if len(reason) > 2000:
        raise AliasError("reason is longer than 2000 characters", 400)
    published = published_versions(root, model)
    state = aliases.read_aliases(Path(root), model)
    current = state.production_of(published)
    # A retired or unknown version is refused by the change itself, with that reason.
    if (action == "promote" and version != current and version in published
            and version not in state.retired):
        _check_gate(root, model, str(version), force, reason)
        if force:
            details = {**(details or {}), "forced": True}

    def edit(state: AliasState) -> AliasState:
        if action == "promote":
            return aliases.promote(state, published, str(version))
        if action == "rollback":
            return aliases.rollback(state, published)
        if action == "canary":
            if weight is None:
                raise AliasError("canary needs a weight", 400)
            return aliases.set_canary(state, published, str(version), weight, sticky_header)
        if action == "canary_cleared":
            if state.canary is None:
                raise AliasError(f"model '{model}' has no canary", 409)
            if version is not None and state.canary.version != version:
                # The caller judged another canary (an operator swapped it meanwhile).
                raise AliasError(f"the canary of '{model}' is {state.canary.version}, not {version}")
            return aliases.clear_canary(state)
        if action == "shadow":
            return aliases.set_shadow(state, published, str(version))
        if action == "shadow_cleared":
            if state.shadow is None:
                raise AliasError(f"model '{model}' has no shadow", 409)
            return aliases.clear_shadow(state)
        if action == "retire":
            return aliases.retire(state, published, str(version))
        return aliases.set_loaded(state, action == "load")

    before, after = aliases.change(Path(root), model, edit)
    from_version, to_version = _versions(action, before, after, published, version)
    entry = None
    if after != before:
        entry = audit.record(
            Path(root), actor=actor, action=action, model=model, from_version=from_version,
            to_version=to_version, reason=reason, generation=after.generation, details=details,
        )
    return Change(action, before, after, from_version, to_version, entry)


def _versions(action: str, before: AliasState, after: AliasState, published: list[str],
              version: str | None) -> tuple[str | None, str | None]:
    """The from and to versions the audit log records for an action."""
    if action in ("promote", "rollback"):
        return before.production_of(published), after.production_of(published)
    if action in ("canary", "canary_cleared"):
        old = before.canary.version if before.canary else None
        new = after.canary.version if after.canary else None
        return old, new
    if action in ("shadow", "shadow_cleared"):
        return before.shadow, after.shadow
    if action == "retire":
        return version, None
    return None, None
