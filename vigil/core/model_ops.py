"""One alias change, the same from every door: the server's admin routes, the CLI without a
server, the monitor's automatic rollback (and the coming rollout). Checks it, gates it, and
writes the change and its audit line as one step.

One step: under the model's lock the change is computed, then, holding the audit log's lock,
its audit line is appended (fsynced) and the aliases file replaced (atomically). If either write
fails, the line is taken back and the aliases stay as they were: neither happened, and the
caller gets ChangeFailed (503, naming what failed). A change is never on disk unaudited. A
process that dies between the two writes leaves a line for a change that was not made; the
model's lock file notes the change as pending before the writes, so the next change of that
model sees the aliases never reached that generation, numbers itself past it and records
``void_generation`` in its details (vigil.core.aliases.ModelLock).

The gate: an action that sends live traffic to a version (promote, canary; see
vigil.core.actions) needs a verdict that counts under vigil.core.gate_policy, or `force` with a
reason, audited as ``{"forced": true, "gate": why}``. Shadow, which answers no one, is not gated.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vigil.core import aliases, audit, gate_policy, repository, rollout
from vigil.core.actions import ENDS_ROLLOUT, AliasAction, VersionUse
from vigil.core.aliases import AliasError, AliasState
from vigil.core.gate_policy import PolicyError
from vigil.core.repository import ModelVersion
from vigil.core.repository_health import broken_aliases
from vigil.core.rollout import PlanRefused, RolloutPlan, RolloutState

MAX_REASON_CHARS = 2000
ACTIONS = tuple(AliasAction)


class ChangeFailed(RuntimeError):
    """The change could not be written; nothing changed (`status` 503)."""

    status = 503


@dataclass(frozen=True)
class ChangeRequest:
    """What a door asks for: the action, who asks and why, and the action's arguments.
    `details` go to the audit entry; `force` takes a live-traffic action past the gate."""

    action: AliasAction
    actor: str
    reason: str = ""
    version: str | None = None
    weight: float | None = None
    sticky_header: str | None = None
    details: dict[str, Any] | None = None
    force: bool = False
    plan: RolloutPlan | None = None  # rollout: the plan to start
    # The monitor's rollout steps: the state decided from (the change applies only while the
    # saved rollout is still that one) and the state to save (None: the rollout ends).
    expect: RolloutState | None = None
    rollout: RolloutState | None = None
    now: float = field(default_factory=time.time)

    @classmethod
    def of(cls, action: AliasAction | str, **fields: Any) -> ChangeRequest:
        """A request for an action named by its string (400 AliasError for an unknown one)."""
        try:
            known = AliasAction(action)
        except ValueError:
            raise AliasError(f"unknown action {action!r}; one of {sorted(a.value for a in ACTIONS)}",
                             400) from None
        return cls(known, **fields)

    def check(self) -> None:
        """400 AliasError for a request its action cannot take."""
        spec = self.action.spec
        if spec.version is VersionUse.REQUIRED and not self.version:
            raise AliasError(f"{self.action} needs a version", 400)
        if spec.weight and self.weight is None:
            raise AliasError(f"{self.action} needs a weight", 400)
        if spec.plan and self.plan is None:
            raise AliasError(f"{self.action} needs a plan", 400)
        if spec.route is None and self.expect is None:
            raise AliasError(f"{self.action} is the monitor's, from the rollout it judged", 400)
        if len(self.reason) > MAX_REASON_CHARS:
            raise AliasError(f"reason is longer than {MAX_REASON_CHARS} characters", 400)
        if self.force and spec.live_traffic and not self.reason.strip():
            raise AliasError(f"a forced {self.action} needs a reason (it goes to the audit log)",
                             400)


@dataclass(frozen=True)
class Change:
    """What an action did: the aliases before and after, and the audit entry (None when the
    action changed nothing)."""

    action: AliasAction
    before: AliasState
    after: AliasState
    from_version: str | None
    to_version: str | None
    entry: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.after.model,
            "action": str(self.action),
            "from_version": self.from_version,
            "to_version": self.to_version,
            "changed": self.entry is not None,
            "generation": self.after.generation,
            "aliases": self.after.to_dict(),
        }


# Called under the model's lock with the change about to be written; if it raises, nothing is.
Prepare = Callable[[Change], None]


def unmade_generation(root: Path, model: str) -> int | None:
    """The generation of a change whose audit line a crash may have left without its aliases
    (None: none); the next change records it void."""
    with aliases.model_lock(root, model) as lock:
        return lock.settle(aliases.read_aliases(root, model))


def published_versions(root: Path, model: str) -> list[str]:
    """The model's versions on disk, oldest first (404 AliasError for an unknown model)."""
    return list(_versions(root, model))


def _versions(root: Path, model: str) -> dict[str, ModelVersion]:
    try:
        return {v.manifest.version: v for v in repository.scan(Path(root), [model])[model]}
    except repository.ModelNotFound as exc:
        raise AliasError(str(exc), 404) from exc
    except repository.RepositoryError as exc:  # a model.yaml of it is malformed: 409, not 404
        raise AliasError(f"{exc}; fix or remove that model.yaml", 409) from exc


def apply(root: Path, model: str, action: AliasAction | str, *, actor: str, reason: str = "",
          version: str | None = None, weight: float | None = None,
          sticky_header: str | None = None, details: dict[str, Any] | None = None,
          force: bool = False, prepare: Prepare | None = None, **rollout_fields: Any) -> Change:
    """`run` with the request's fields as arguments (a rollout's: plan, expect, rollout, now)."""
    request = ChangeRequest.of(action, actor=actor, reason=reason, version=version, weight=weight,
                               sticky_header=sticky_header, details=details, force=force,
                               **rollout_fields)
    return run(root, model, request, prepare)


def run(root: Path, model: str, request: ChangeRequest, prepare: Prepare | None = None) -> Change:
    """Apply the request to the model's aliases and audit it, as one step; raises AliasError
    (with its HTTP status) for a change that is not allowed, ChangeFailed when it could not be
    written (nothing changed then)."""
    request.check()
    root = Path(root)
    versions = _versions(root, model)
    published = list(versions)
    with aliases.model_lock(root, model) as lock:
        before = aliases.read_aliases(root, model)
        gate = _gate(root, model, request, before, versions)  # production cannot move meanwhile
        after = _TRANSITIONS[request.action](before, _Context(request, published))
        ended = _ended_rollout(request, before, after)
        if ended is not None:
            after = replace(after, rollout=None)
        _refuse_broken(before, after, published)
        if after == before:
            unchanged = _FROM_TO[request.action](before, before, published, request)
            return Change(request.action, before, before, *unchanged, None)
        void = lock.settle(before)
        after = replace(after, generation=aliases.next_generation(before, void))
        from_version, to_version = _FROM_TO[request.action](before, after, published, request)
        details = {**(request.details or {}), **gate,
                   **({"void_generation": void} if void is not None else {}),
                   **({"rollout_ended": ended} if ended is not None else {})}
        entry = audit.make_entry(
            actor=request.actor, action=request.action, model=model, from_version=from_version,
            to_version=to_version, reason=request.reason, generation=after.generation,
            details=details)
        change = Change(request.action, before, after, from_version, to_version, entry)
        if prepare is not None:
            prepare(change)
        _commit(root, lock, change)
        return change


def _refuse_broken(before: AliasState, after: AliasState, published: list[str]) -> None:
    """Never write an alias that names no version: a change may leave an alias broken as it
    found it (so that other changes, and the one that mends it, still go through), never break
    one (409)."""
    was = broken_aliases(before, published)
    new = {alias: why for alias, why in broken_aliases(after, published).items()
           if was.get(alias) != why}
    if new:
        raise AliasError(f"model '{after.model}': refused, the {', '.join(sorted(new))} alias "
                         f"would be broken: {'; '.join(new.values())}", 409)


def _commit(root: Path, lock: aliases.ModelLock, change: Change) -> None:
    """The audit line, then the aliases, under the log's lock; neither if either fails."""
    assert change.entry is not None
    step = "the model's lock file"
    try:
        lock.write_note("pending", change.after.generation)
        step = "the audit log"
        with audit.appending(root) as log:
            log.write(change.entry)
            step = "aliases.json"
            try:
                aliases.write_aliases(root, change.after)
            except BaseException:
                log.take_back()
                raise
    except OSError as exc:
        lock.clear()
        raise ChangeFailed(
            f"the {change.action} of {change.after.model} was not made (nothing changed): "
            f"writing {step} failed: {exc}") from exc
    lock.clear()


def _gate(root: Path, model: str, request: ChangeRequest, state: AliasState,
          versions: dict[str, ModelVersion]) -> dict[str, Any]:
    """The audit details the gate adds ({} when it passed or does not apply); 409 AliasError
    when it refuses and the request is not forced."""
    version = request.version
    published = list(versions)
    current = state.production_of(published)
    if (not request.action.spec.live_traffic or version not in versions
            or version in state.retired or version == current):
        return {}  # not gated, or refused (unknown, retired) or a no-op by the change itself
    candidate = versions[version]
    try:
        policy = gate_policy.current(root, model, versions.get(current) if current else None)
        why = gate_policy.refusal(candidate.manifest.lineage.get("validation"),
                                  candidate.manifest.sha256, policy, current)
    except PolicyError as exc:
        why = f"cannot be judged, the gate's policy is unusable: {exc}"
    if why is None:
        return {}
    if request.force:
        return {"forced": True, "gate": why}
    raise AliasError(
        f"{model}/{version} {why}: run `vigil models validate {model} {version}`, or force the "
        f"{request.action} with a reason", 409)


def _ended_rollout(request: ChangeRequest, before: AliasState, after: AliasState) -> str | None:
    """Why another change (an operator's, or a rule's canary rollback) ends the model's running
    rollout (None: it does not)."""
    running = before.rollout
    if running is None or request.action not in ENDS_ROLLOUT or after == before:
        return None
    return (f"the rollout of {running.version} (step {running.step + 1} of "
            f"{len(running.plan.steps)}, {running.status}) ended by {request.action} "
            f"({request.actor})")


# ---------------------------------------------------------------- the transitions, by action


@dataclass(frozen=True)
class _Context:
    request: ChangeRequest
    published: list[str]

    @property
    def version(self) -> str:
        return str(self.request.version)


def _canary(state: AliasState, c: _Context) -> AliasState:
    assert c.request.weight is not None  # ChangeRequest.check
    return aliases.set_canary(state, c.published, c.version, c.request.weight,
                              c.request.sticky_header)


def _clear_canary(state: AliasState, c: _Context) -> AliasState:
    if state.canary is None:
        raise AliasError(f"model '{state.model}' has no canary", 409)
    if c.request.version is not None and state.canary.version != c.request.version:
        # The caller judged another canary (an operator swapped it meanwhile).
        raise AliasError(f"the canary of '{state.model}' is {state.canary.version}, "
                         f"not {c.request.version}")
    return aliases.clear_canary(state)


def _clear_shadow(state: AliasState, c: _Context) -> AliasState:
    if state.shadow is None:
        raise AliasError(f"model '{state.model}' has no shadow", 409)
    return aliases.clear_shadow(state)


def _start_rollout(state: AliasState, c: _Context) -> AliasState:
    assert c.request.plan is not None  # ChangeRequest.check
    plan = c.request.plan
    production = state.production_of(c.published)
    try:
        # The gate was judged before (_gate): a refusal there raised unless forced.
        rollout.check_startable(state.model, c.version, production, state.rollout,
                                gate_passed=True)
    except PlanRefused as exc:
        raise AliasError(str(exc), exc.status) from None
    if state.canary is not None and state.canary.version != c.version:
        raise AliasError(f"{state.model} has a canary of version {state.canary.version}: clear "
                         "it before a rollout of another version")
    started = aliases.set_canary(state, c.published, c.version, plan.steps[0], plan.sticky_header)
    return replace(started, rollout=rollout.start(c.version, plan, c.request.now))


def _running(state: AliasState, c: _Context) -> RolloutState:
    """The model's rollout, of the version the request names when it names one (409 else)."""
    if state.rollout is None:
        raise AliasError(f"model '{state.model}' has no rollout", 409)
    if c.request.version is not None and state.rollout.version != c.request.version:
        raise AliasError(f"the rollout of '{state.model}' is of version "
                         f"{state.rollout.version}, not {c.request.version}")
    if c.request.expect is not None and state.rollout != c.request.expect:
        raise AliasError(f"the rollout of '{state.model}' changed since it was judged "
                         "(an operator paused, resumed or replaced it): decision dropped")
    return state.rollout


def _control(step: Callable[[RolloutState, float], RolloutState]) -> Transition:
    def transition(state: AliasState, c: _Context) -> AliasState:
        try:
            return replace(state, rollout=step(_running(state, c), c.request.now))
        except PlanRefused as exc:
            raise AliasError(str(exc), exc.status) from None
    return transition


def _rollout_step(state: AliasState, c: _Context) -> AliasState:
    """A judged window recorded, a step advanced or halted: the state the monitor decided; the
    canary's weight follows the step."""
    _running(state, c)
    decided = c.request.rollout
    if decided is None:
        raise AliasError(f"{c.request.action} needs the rollout's new state", 400)
    canary = state.canary
    if canary is None or canary.version != decided.version:
        raise AliasError(f"the canary of '{state.model}' is no longer {decided.version}")
    return replace(state, rollout=decided, canary=replace(canary, weight=decided.weight))


def _end_rollout(promote: bool) -> Transition:
    def transition(state: AliasState, c: _Context) -> AliasState:
        running = _running(state, c)
        if promote:
            after = aliases.promote(state, c.published, running.version)
        else:
            after = (aliases.clear_canary(state) if state.canary is not None
                     and state.canary.version == running.version else state)
        return replace(after, rollout=None)
    return transition


Transition = Callable[[AliasState, _Context], AliasState]
_TRANSITIONS: dict[AliasAction, Transition] = {
    AliasAction.PROMOTE: lambda s, c: aliases.promote(s, c.published, c.version),
    AliasAction.ROLLBACK: lambda s, c: aliases.rollback(s, c.published),
    AliasAction.CANARY: _canary,
    AliasAction.CANARY_CLEARED: _clear_canary,
    AliasAction.SHADOW: lambda s, c: aliases.set_shadow(s, c.published, c.version),
    AliasAction.SHADOW_CLEARED: _clear_shadow,
    AliasAction.RETIRE: lambda s, c: aliases.retire(s, c.published, c.version),
    AliasAction.LOAD: lambda s, c: aliases.set_loaded(s, True),
    AliasAction.UNLOAD: lambda s, c: aliases.set_loaded(s, False),
    AliasAction.ROLLOUT: _start_rollout,
    AliasAction.ROLLOUT_PAUSED: _control(lambda r, now: rollout.pause(r)),
    AliasAction.ROLLOUT_RESUMED: _control(rollout.resume),
    AliasAction.ROLLOUT_ABORTED: _end_rollout(promote=False),
    AliasAction.ROLLOUT_HELD: _rollout_step,
    AliasAction.ROLLOUT_ADVANCED: _rollout_step,
    AliasAction.ROLLOUT_HALTED: _rollout_step,
    AliasAction.ROLLOUT_PROMOTED: _end_rollout(promote=True),
    AliasAction.ROLLOUT_ROLLED_BACK: _end_rollout(promote=False),
}

# The from and to versions the audit log records for an action.
FromTo = Callable[[AliasState, AliasState, list[str], ChangeRequest], tuple[str | None, str | None]]


def _production(before: AliasState, after: AliasState, published: list[str],
                _: ChangeRequest) -> tuple[str | None, str | None]:
    return before.production_of(published), after.production_of(published)


def _canary_versions(before: AliasState, after: AliasState, _: list[str],
                     __: ChangeRequest) -> tuple[str | None, str | None]:
    return (before.canary.version if before.canary else None,
            after.canary.version if after.canary else None)


_FROM_TO: dict[AliasAction, FromTo] = {
    AliasAction.PROMOTE: _production,
    AliasAction.ROLLBACK: _production,
    AliasAction.CANARY: _canary_versions,
    AliasAction.CANARY_CLEARED: _canary_versions,
    AliasAction.SHADOW: lambda b, a, p, r: (b.shadow, a.shadow),
    AliasAction.SHADOW_CLEARED: lambda b, a, p, r: (b.shadow, a.shadow),
    AliasAction.RETIRE: lambda b, a, p, r: (r.version, None),
    AliasAction.LOAD: lambda b, a, p, r: (None, None),
    AliasAction.UNLOAD: lambda b, a, p, r: (None, None),
    AliasAction.ROLLOUT: _canary_versions,
    AliasAction.ROLLOUT_PAUSED: _canary_versions,
    AliasAction.ROLLOUT_RESUMED: _canary_versions,
    AliasAction.ROLLOUT_ABORTED: _canary_versions,
    AliasAction.ROLLOUT_HELD: _canary_versions,
    AliasAction.ROLLOUT_ADVANCED: _canary_versions,
    AliasAction.ROLLOUT_HALTED: _canary_versions,
    AliasAction.ROLLOUT_PROMOTED: _production,
    AliasAction.ROLLOUT_ROLLED_BACK: _canary_versions,
}
