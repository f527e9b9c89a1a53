"""The durable outbox: alert state, events and their deliveries in one SQLite file (WAL mode).

An event and one delivery row per target that wants it are committed, together with the alert
state that produced them, before any attempt is made: a crash after the commit loses nothing, and
a crash before it loses the firing too (the next window fires it again). Delivery rows move
pending -> delivered, or pending -> dead after the last attempt (or a refusal); `retry` and
`replay` (the `vigil webhooks` commands) move them back to pending.

Retention and size: monitoring.outbox_retention; the file, its tables and connections:
monitoring.outbox_schema.

Every query the deliverer runs on each pass reads an index over pending deliveries only
(``deliveries_due``): its cost follows what is pending, not every delivery ever made.

Each thread gets its own connection (SQLite connections are not shared across threads); writers
take the lock with BEGIN IMMEDIATE and wait up to ``BUSY_TIMEOUT_MS`` for one another, so the
monitor's window thread, its delivery thread and a `vigil webhooks` command may write at once.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from monitoring.outbox_retention import (  # re-exported: the outbox's vocabulary
    OutboxSize as OutboxSize,
    PrunedEvent as PrunedEvent,
    Pruning as Pruning,
    RetainedOutboxFile,
    Retention as Retention,
)
from monitoring.outbox_schema import STATES as STATES  # re-exported: `vigil webhooks` choices
from monitoring.outbox_schema import AlertKey as AlertKey
from monitoring.outbox_schema import DeliveryState

if TYPE_CHECKING:  # imported where used: `vigil webhooks` reads STATES without the statistics
    from monitoring.rules import AlertState


@dataclass(frozen=True)
class Delivery:
    """One event's delivery to one target."""

    event_id: str
    target: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    done_at: float | None
    round: int = 0  # bumped by retry and replay; record_attempt of an older round is ignored
    type: str = ""
    subject: str = ""
    created_at: float = 0.0
    body: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "body"}


@dataclass(frozen=True)
class NewEvent:
    """An event to commit: its CloudEvent fields, exact body, and the targets that want it."""

    id: str
    type: str
    subject: str
    created_at: float
    body: bytes
    targets: tuple[str, ...]


class Outbox(RetainedOutboxFile):
    """One SQLite outbox: alert state, events and their deliveries. Safe to use from several
    threads (a connection per thread)."""

    # ------------------------------------------------------------------ alert state

    def load_alerts(self) -> dict[AlertKey, AlertState]:
        from monitoring.rules import AlertState  # numpy and scipy, which the CLI does without

        rows = self._db.execute("SELECT model, version, rule, state FROM alerts").fetchall()
        return {(r[0], r[1], r[2]): AlertState.from_dict(json.loads(r[3])) for r in rows}

    def commit(self, alerts: Mapping[AlertKey, AlertState | None], events: Iterable[NewEvent]) -> None:
        """Alert states (None: forget it) and new events with their deliveries, atomically."""
        with self._write() as db:
            _insert(db, alerts, events)

    # Held events: an event about a change made elsewhere (a canary cleared in the repository) is
    # committed held before the change, then released (deliverable) or dropped after it, so it
    # is sent if and only if the change happened; a restart reconciles what is still held
    # (monitoring.changes.settle_held). They wait in `meta` under "held:<id>": no new table, so
    # files of either schema need no migration.

    def hold(self, event: NewEvent, alerts: Mapping[AlertKey, AlertState | None],
             change: Mapping[str, Any]) -> None:
        """Commit `event` held, with the alert states its release commits and `change`, what
        it announces (to reconcile against after a restart)."""
        doc = {"event": {**event.__dict__, "body": event.body.decode(), "targets": event.targets},
               "alerts": [[*key, None if st is None else st.to_dict()] for key, st in alerts.items()],
               "change": dict(change)}
        with self._write() as db:
            db.execute("INSERT INTO meta VALUES (?, ?)", (_HELD + event.id, json.dumps(doc)))

    def held(self) -> list[HeldEvent]:
        rows = self._db.execute("SELECT value FROM meta WHERE key LIKE 'held:%' ORDER BY key")
        return [_held(json.loads(r[0])) for r in rows.fetchall()]

    def release(self, event_id: str) -> bool:
        """The held event and its alert states committed as `commit` does, atomically; False
        when it is not held (released or dropped already)."""
        with self._write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (_HELD + event_id,)).fetchone()
            if row is None:
                return False
            held = _held(json.loads(row[0]))
            _insert(db, held.alerts, [held.event])
            db.execute("DELETE FROM meta WHERE key = ?", (_HELD + event_id,))
        return True

    def drop(self, event_id: str) -> None:
        """Forget a held event: the change it announces did not happen."""
        with self._write() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (_HELD + event_id,))

    # ------------------------------------------------------------------ delivery

    def due(self, target: str, now: float, limit: int, skip: Iterable[str] = ()) -> list[Delivery]:
        """Pending deliveries to `target` whose time has come, oldest first (not those in `skip`,
        the event ids already in flight)."""
        if limit <= 0:
            return []
        skip = list(skip)
        marks = ",".join("?" * len(skip))
        # bandit B608 (nosec below and further down): the SQL strings here interpolate only "?"
        # placeholders and fixed column names; every value is a bound parameter.
        rows = self._db.execute(
            f"SELECT d.*, e.type, e.subject, e.created_at, e.body FROM deliveries d "  # nosec B608
            f"JOIN events e ON e.id = d.event_id WHERE d.state = 'pending' AND d.target = ? "
            f"AND d.next_attempt_at <= ? {'AND d.event_id NOT IN (' + marks + ')' if skip else ''} "
            f"ORDER BY d.next_attempt_at, e.created_at LIMIT ?",
            (target, now, *skip, limit),
        ).fetchall()
        return [_delivery(r) for r in rows]

    def next_due(self, targets: Iterable[str],
                 skip: Mapping[str, Iterable[str]] | None = None) -> float | None:
        """The earliest next attempt among pending deliveries to these targets (not those in
        `skip`: target -> the event ids already in flight to it)."""
        names = list(targets)
        if not names:
            return None
        clauses, args = [], []
        for name in names:
            ids = list((skip or {}).get(name, ()))
            clauses.append("(target = ?" + (
                f" AND event_id NOT IN ({','.join('?' * len(ids))}))" if ids else ")"))
            args += [name, *ids]
        row = self._db.execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending' "  # nosec B608
            f"AND ({' OR '.join(clauses)})", args,
        ).fetchone()
        return row[0]

    def record_attempt(
        self,
        event_id: str,
        target: str,
        *,
        state: DeliveryState,
        now: float,
        status: int | None,
        error: str | None,
        next_attempt_at: float | None = None,
        round: int | None = None,
    ) -> None:
        """One attempt's result: delivered, dead, or pending again at next_attempt_at. With
        `round` (the delivery's when the attempt started), a result for a delivery that was
        retried or replayed meanwhile is dropped: the requeued delivery still goes out."""
        with self._write() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, last_attempt_at=?, "
                "last_status=?, last_error=?, next_attempt_at=COALESCE(?, next_attempt_at), "
                "done_at=? WHERE event_id=? AND target=? AND state='pending' "
                "AND (? IS NULL OR round = ?)",
                (state, now, status, error, next_attempt_at,
                 None if state == "pending" else now, event_id, target, round, round),
            )

    def pending(self) -> dict[str, int]:
        """Target -> pending deliveries: a range of the deliveries_due index (state first), so
        its cost follows the pending rows, not every delivery ever made."""
        rows = self._db.execute(
            "SELECT target, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY target"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def counts(self) -> dict[tuple[str, DeliveryState], int]:
        """(target, state) -> deliveries (every row: for operators and tests, not per pass)."""
        rows = self._db.execute(
            "SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state"
        ).fetchall()
        return {(r[0], r[1]): r[2] for r in rows}

    # ------------------------------------------------------------------ operators (vigil webhooks)

    def deliveries(
        self,
        *,
        state: DeliveryState | None = None,
        target: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        """Deliveries, newest event first, filtered."""
        where, args = [], []
        for column, value in (("d.state", state), ("d.target", target), ("d.event_id", event_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = ("SELECT d.*, e.type, e.subject, e.created_at, e.body FROM deliveries d "  # nosec B608
               "JOIN events e ON e.id = d.event_id "
               + (f"WHERE {' AND '.join(where)} " if where else "")
               + "ORDER BY e.created_at DESC, d.target LIMIT ?")
        return [_delivery(r) for r in self._db.execute(sql, (*args, limit)).fetchall()]

    def event(self, event_id: str) -> dict[str, Any] | None:
        """The stored CloudEvent (as sent), or None."""
        row = self._db.execute("SELECT body FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def has_event(self, event_id: str) -> bool:
        """Whether the event was committed here (stored, or pruned since and remembered)."""
        row = self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
        return row is not None or self.pruned(event_id) is not None

    def retry(self, *, event_ids: Iterable[str] = (), target: str | None = None,
              now: float | None = None) -> int:
        """Dead deliveries (of these events, or all; to one target, or all) pending again, with
        a fresh attempt budget. Returns how many."""
        return self._requeue("state = 'dead'", event_ids, target, now)

    def replay(self, event_ids: Iterable[str], targets: Iterable[str], now: float | None = None) -> int:
        """Send these events again, same id and body, to these targets (whatever their delivery
        state; a target that never had the event gets a new delivery). Returns how many."""
        now = time.time() if now is None else now
        ids, names = list(event_ids), list(targets)
        with self._write() as db:
            known = {r[0] for r in db.execute(
                f"SELECT id FROM events WHERE id IN ({','.join('?' * len(ids))})", ids)}  # nosec B608
            missing = sorted(set(ids) - known)
            if missing:
                raise KeyError(f"no such event: {', '.join(missing)}")
            for event_id in ids:
                for target in names:
                    db.execute(
                        "INSERT INTO deliveries (event_id, target, state, next_attempt_at) "
                        "VALUES (?, ?, 'pending', ?) ON CONFLICT (event_id, target) DO UPDATE SET "
                        "state='pending', attempts=0, next_attempt_at=excluded.next_attempt_at, "
                        "done_at=NULL, round=round+1",
                        (event_id, target, now),
                    )
        return len(ids) * len(names)

    def _requeue(self, condition: str, event_ids: Iterable[str], target: str | None,
                 now: float | None) -> int:
        now = time.time() if now is None else now
        ids = list(event_ids)
        where, args = [condition], []
        if ids:
            where.append(f"event_id IN ({','.join('?' * len(ids))})")
            args += ids
        if target is not None:
            where.append("target = ?")
            args.append(target)
        with self._write() as db:
            cur = db.execute(
                "UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?, done_at=NULL, "  # nosec B608
                "round=round+1 "
                f"WHERE {' AND '.join(where)}", (now, *args),
            )
            return cur.rowcount


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row


_HELD = "held:"


@dataclass(frozen=True)
class HeldEvent:
    """An event committed held, the alert states its release commits, and what it announces."""

    event: NewEvent
    alerts: dict[AlertKey, AlertState | None]
    change: dict[str, Any]


def _held(doc: dict[str, Any]) -> HeldEvent:
    from monitoring.rules import AlertState  # as in load_alerts: the CLI imports this module

    e = doc["event"]
    event = NewEvent(e["id"], e["type"], e["subject"], e["created_at"], e["body"].encode(),
                     tuple(e["targets"]))
    alerts = {(m, v, r): None if st is None else AlertState.from_dict(st)
              for m, v, r, st in doc["alerts"]}
    return HeldEvent(event, alerts, doc["change"])


def _insert(db: sqlite3.Connection, alerts: Mapping[AlertKey, AlertState | None],
            events: Iterable[NewEvent]) -> None:
    """Alert states (None: forget it), and events with a pending delivery per target."""
    for (model, version, rule), state in alerts.items():
        if state is None:
            db.execute("DELETE FROM alerts WHERE model=? AND version=? AND rule=?",
                       (model, version, rule))
        else:
            db.execute("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?)",
                       (model, version, rule, json.dumps(state.to_dict())))
    for e in events:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                   (e.id, e.type, e.subject, e.created_at, e.body))
        db.executemany(
            "INSERT INTO deliveries (event_id, target, state, next_attempt_at) "
            "VALUES (?, ?, 'pending', ?)",
            [(e.id, t, e.created_at) for t in e.targets],
        )
