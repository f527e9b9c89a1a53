"""The one place where the monitor's decisions become changes: a rollout's step, promotion or
rollback (monitoring.rollouts) and a rollback rule's canary rollback (monitoring.canary) are each
one audited change through vigil.core.model_ops, announced by events written in the same step.

Under the model's lock, before the change is written, its events are committed *held* in the
outbox (with the alert states they carry); after the change they are released, and if the change
was refused or failed they are dropped. Their ids are in the audit entry's details
(``event_id``/``event_ids``), so `settle_held` (at start, and after a release that failed) tells
for each event still held whether its change happened: released if so, dropped if not. Nothing
is lost, and nothing is sent for a change that was not made. After a change the serving
replicas are told (``on_change(model)``: the Monitor deployment bumps the alias board; this
module knows no Ray). Runs on the monitor's window thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.outbox import AlertKey, HeldEvent, NewEvent, Outbox
from monitoring.rules import AlertState
from vigil.core import audit, model_ops
from vigil.core.actions import AliasAction
from vigil.core.aliases import AliasError

logger = logging.getLogger("vigil.changes")


@dataclass(frozen=True)
class Announcement:
    """One event announcing a change, and the alert states its release commits."""

    event: NewEvent
    alerts: Mapping[AlertKey, AlertState | None]


# Builds a change's announcements from the change about to be written (its generation and the
# aliases after it); called under the model's lock.
Announce = Callable[[model_ops.Change], list[Announcement]]


@dataclass(frozen=True)
class Written:
    """A change that was made, and whether its events were all released (False: some wait held
    until `settle` releases them)."""

    change: model_ops.Change
    event_ids: tuple[str, ...]
    released: bool


class ChangeWriter:
    """Writes the monitor's changes to one repository, with their events in one outbox."""

    def __init__(self, repository: Path, outbox: Outbox,
                 on_change: Callable[[str], None] | None = None,
                 notify: Callable[[], None] | None = None) -> None:
        self.repository = Path(repository)
        self.outbox = outbox
        # `is None`: a callable object may be falsy (an empty list that records calls)
        self.on_change = (lambda model: None) if on_change is None else on_change
        self.notify = (lambda: None) if notify is None else notify

    def write(self, model: str, action: AliasAction, *, actor: str, reason: str,
              version: str, details: dict[str, Any], announce: Announce,
              **fields: Any) -> Written:
        """Apply one change (model_ops.apply with `fields`: expect, rollout, now...) with its
        announcements. Raises AliasError when it was refused (e.g. the state it was decided
        from changed meanwhile) and whatever made it fail; its held events are dropped then."""
        held: list[str] = []

        def prepare(change: model_ops.Change) -> None:
            for item in announce(change):
                self.outbox.hold(item.event, item.alerts, {
                    "model": model, "version": version, "generation": change.after.generation,
                    "event_id": item.event.id})
                held.append(item.event.id)

        try:
            change = model_ops.apply(self.repository, model, action, actor=actor, reason=reason,
                                     version=version, details=details, prepare=prepare, **fields)
        except BaseException:  # refused or failed: the caller says why, in its own terms
            self._drop(held)
            raise
        released = True
        for event_id in held:
            try:
                self.outbox.release(event_id)
            except Exception:  # noqa: BLE001 - held: `settle` releases it later
                logger.exception("releasing event %s failed (it stays held, released later)",
                                 event_id)
                released = False
        if held:
            self.notify()
        self.tell(model)
        return Written(change, tuple(held), released)

    def tell(self, model: str) -> None:
        """Tell the serving replicas that `model`'s aliases changed."""
        try:
            self.on_change(model)
        except Exception:  # noqa: BLE001 - replicas also re-read the aliases on their own
            logger.exception("telling the replicas that %s's aliases changed failed", model)

    def settle(self) -> list[HeldEvent]:
        """Release each held event whose change happened, drop the others (a crash, or a
        release that failed); returns the released ones, whose models' replicas are told."""
        released = settle_held(self.outbox, self.repository)
        for held in released:
            self.tell(str(held.change["model"]))
        if released:
            self.notify()
        return released

    def _drop(self, event_ids: list[str]) -> None:
        for event_id in event_ids:
            try:
                self.outbox.drop(event_id)
            except Exception:  # noqa: BLE001 - settle drops it (no audit entry names it)
                logger.exception("dropping held event %s failed", event_id)


def settle_held(outbox: Outbox, repository: Path) -> list[HeldEvent]:
    """Release each held event whose change happened (its audit entry exists and no later entry
    voids it), drop the others; returns the released ones."""
    released = []
    for held in outbox.held():
        if _happened(Path(repository), held.change):
            if outbox.release(held.event.id):
                released.append(held)
        else:
            logger.warning("dropping held event %s: the change of %s/%s it announces did not "
                           "happen", held.event.id, held.change.get("model"),
                           held.change.get("version"))
            outbox.drop(held.event.id)
    return released


def _happened(repository: Path, change: dict[str, Any]) -> bool:
    model = str(change.get("model"))
    try:
        unmade = model_ops.unmade_generation(repository, model)  # a crash before the aliases
    except AliasError as exc:
        if exc.status == 404:
            return False  # the model is gone from the repository
        raise
    voided: set[int] = set() if unmade is None else {unmade}
    for entry in audit.newest(repository, model):
        generation = entry.get("generation")
        if isinstance(generation, int) and generation < change["generation"]:
            break  # older than the change: it was never written
        details = entry.get("details") or {}
        if isinstance(details.get("void_generation"), int):
            voided.add(details["void_generation"])
        ids = details.get("event_ids") or [details.get("event_id")]  # a rollout's: several
        if change["event_id"] in ids:
            return generation not in voided
    return False
