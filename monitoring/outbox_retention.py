"""Outbox retention: delivered and dead events deleted by age and count, their tombstones, and the
outbox's size (rows and bytes) for the metrics.

`prune` (run by the deliverer about once a minute): an event whose deliveries are all delivered
or dead (or that no target wanted) is deleted with its deliveries once it is older than
``max_age_s`` (since it was created and since its last delivery finished), or once more than
``max_events`` events are newer than it. An event with a pending delivery is never deleted. A
pruned event leaves a tombstone (its id and when it was pruned; the newest ``MAX_TOMBSTONES``
are kept) and is counted, so `vigil webhooks show` can say that it was pruned rather than that
it never was. Deletion goes in transactions of PRUNE_BATCH events, found through the
events_created index.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monitoring.outbox_schema import STATES, DeliveryState, OutboxFile

MAX_TOMBSTONES = 10_000  # ids of pruned events remembered (the newest), for `vigil webhooks show`
PRUNE_BATCH = 500  # events deleted per transaction: the write lock is never held long


@dataclass(frozen=True)
class Retention:
    """How long delivered and dead events stay (pending ones always do)."""

    max_age_s: float  # since created and since their last delivery finished
    max_events: int  # events kept at most, the newest (more while that many are pending)


@dataclass(frozen=True)
class PrunedEvent:
    """A tombstone: an event deleted by retention."""

    id: str
    created_at: float
    pruned_at: float


@dataclass(frozen=True)
class Pruning:
    """What retention has done to this file: for operators who look for an event."""

    events: int  # events pruned since the file was created
    last_at: float | None  # when an event was last pruned
    retention: Retention | None  # the retention of the last prune that deleted anything


@dataclass(frozen=True)
class OutboxSize:
    """The outbox's rows and bytes (the size metrics)."""

    events: int
    deliveries: Mapping[DeliveryState, int]  # every state, zeros included
    bytes: int  # the file and its write-ahead log
    pruned_events: int  # since the file was created


class RetainedOutboxFile(OutboxFile):
    """An outbox file with its retention: what the Outbox adds events and deliveries to."""

    def prune(self, retention: Retention, now: float, max_batches: int = 20) -> int:
        """Delete delivered and dead events beyond the retention, with their deliveries, at most
        `max_batches` * PRUNE_BATCH of them (the next call goes on). Returns how many."""
        total = 0
        for _ in range(max_batches):
            with self._write() as db:
                doomed = self._beyond(db, retention, now)
                if doomed:
                    self._delete(db, doomed, retention, now)
            if not doomed:
                break
            total += len(doomed)
        return total

    def _beyond(self, db: sqlite3.Connection, retention: Retention,
                now: float) -> list[tuple[str, float]]:
        """(id, created_at) of the oldest finished events beyond the count or the age, at most
        PRUNE_BATCH, found through the events_created index."""
        # Finished: no delivery pending, none done at or after :cutoff (a delivery retried and
        # done lately keeps its event for max_age_s more; +inf: done whenever).
        finished = ("NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id "
                    "AND (d.state = 'pending' OR d.done_at >= :cutoff))")
        row = db.execute("SELECT created_at FROM events ORDER BY created_at DESC LIMIT 1 "
                         "OFFSET :keep", {"keep": retention.max_events}).fetchone()
        if row is not None:  # more than max_events: the oldest finished ones go, however recent
            found = db.execute(
                "SELECT e.id, e.created_at FROM events e WHERE e.created_at <= :edge AND "  # nosec B608
                f"{finished} ORDER BY e.created_at LIMIT :n",
                {"edge": row[0], "cutoff": math.inf, "n": PRUNE_BATCH}).fetchall()
            if found:
                return [(r[0], r[1]) for r in found]
        cutoff = now - retention.max_age_s
        found = db.execute(
            "SELECT e.id, e.created_at FROM events e WHERE e.created_at < :cutoff AND "  # nosec B608
            f"{finished} ORDER BY e.created_at LIMIT :n",
            {"cutoff": cutoff, "n": PRUNE_BATCH}).fetchall()
        return [(r[0], r[1]) for r in found]

    def _delete(self, db: sqlite3.Connection, doomed: list[tuple[str, float]],
                retention: Retention, now: float) -> None:
        ids = [event_id for event_id, _ in doomed]
        marks = ",".join("?" * len(ids))
        db.execute(f"DELETE FROM deliveries WHERE event_id IN ({marks})", ids)  # nosec B608
        db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids)  # nosec B608
        db.executemany("INSERT OR REPLACE INTO pruned VALUES (?, ?, ?)",
                       [(event_id, created, now) for event_id, created in doomed])
        db.execute("DELETE FROM pruned WHERE rowid <= (SELECT rowid FROM pruned "
                   "ORDER BY rowid DESC LIMIT 1 OFFSET ?)", (MAX_TOMBSTONES,))
        total = self._meta(db, "pruned_events")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("pruned_events", str(int(total or 0) + len(ids))),
            ("pruned_last_at", repr(now)),
            ("retention", json.dumps(dataclasses.asdict(retention))),
        ])

    def pruned(self, event_id: str) -> PrunedEvent | None:
        """The tombstone of a pruned event, or None (never here, or pruned long ago)."""
        row = self._db.execute("SELECT id, created_at, pruned_at FROM pruned WHERE id = ?",
                               (event_id,)).fetchone()
        return None if row is None else PrunedEvent(row[0], row[1], row[2])

    def pruning(self) -> Pruning:
        db = self._db
        last, retention = self._meta(db, "pruned_last_at"), self._meta(db, "retention")
        return Pruning(
            events=int(self._meta(db, "pruned_events") or 0),
            last_at=None if last is None else float(last),
            retention=None if retention is None else Retention(**json.loads(retention)),
        )

    def size(self) -> OutboxSize:
        """Rows by state and bytes on disk: one pass over the deliveries_due index (bounded by
        the retention), for the size metrics, not for every delivery pass."""
        db = self._db
        states = dict.fromkeys(STATES, 0)
        for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            states[state] = n
        events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return OutboxSize(events, states, size, int(self._meta(db, "pruned_events") or 0))
