"""The durable outbox: alert state, events and their deliveries in one SQLite file (WAL mode).

An event and one delivery row per target that wants it are committed, together with the alert
state that produced them, before any attempt is made: a crash after the commit loses nothing, and
a crash before it loses the firing too (the next window fires it again). Delivery rows move
pending -> delivered, or pending -> dead after the last attempt (or a refusal); `retry` and
`replay` (the `vigil webhooks` commands) move them back to pending.

Retention (`prune`, run by the deliverer about once a minute): an event whose deliveries are all
delivered or dead (or that no target wanted) is deleted with its deliveries once it is older than
``max_age_s`` (since it was created and since its last delivery finished), or once more than
``max_events`` events are newer than it. An event with a pending delivery is never deleted. A
pruned event leaves a tombstone (its id and when it was pruned; the newest ``MAX_TOMBSTONES``
are kept) and is counted, so `vigil webhooks show` can say that it was pruned rather than
that it never was.

Every query the deliverer runs on each pass reads an index over pending deliveries only
(``deliveries_due``): its cost follows what is pending, not every delivery ever made. The
tables and indexes added since the first schema are created when missing (old files gain them;
an older Vigil ignores them), so the schema number did not change.

Each thread gets its own connection (SQLite connections are not shared across threads); writers
take the lock with BEGIN IMMEDIATE and wait up to ``BUSY_TIMEOUT_MS`` for one another, so the
monitor's window thread, its delivery thread and a `vigil webhooks` command may write at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # imported where used: `vigil webhooks` reads STATES without the statistics
    from monitoring.rules import AlertState

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
MAX_TOMBSTONES = 10_000  # ids of pruned events remembered (the newest), for `vigil webhooks show`
PRUNE_BATCH = 500  # events deleted per transaction: the write lock is never held long
DeliveryState = Literal["pending", "delivered", "dead"]
STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)
AlertKey = tuple[str, str, str]  # model, version, rule

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL REFERENCES events(id),
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_attempt_at REAL,
    last_status INTEGER,
    last_error TEXT,
    done_at REAL,
    round INTEGER NOT NULL DEFAULT 0,  -- +1 per retry or replay: a late attempt's result is stale
    PRIMARY KEY (event_id, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, target, next_attempt_at);
CREATE INDEX IF NOT EXISTS events_created ON events (created_at);
CREATE TABLE IF NOT EXISTS pruned (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    pruned_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    rule TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (model, version, rule)
);
"""


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


class Outbox:
    """One SQLite outbox file. Safe to use from several threads (a connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._write() as db:
            # One statement at a time: executescript() would COMMIT the BEGIN IMMEDIATE first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: outbox schema {row[0]}, this Vigil reads "
                                   f"{SCHEMA_VERSION}")

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before delivery starts
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

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
    # (monitoring.canary.settle_held). They wait in `meta` under "held:<id>": no new table, so
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

    # ------------------------------------------------------------------ retention and size

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

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

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
