"""The outbox file itself: its tables, the delivery states, and the SQLite connection each thread
opens (WAL mode, writers queued behind BEGIN IMMEDIATE for up to BUSY_TIMEOUT_MS).

The tables and indexes added since the first schema are created when missing (old files gain
them; an older Vigil ignores them), so the schema number did not change.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 10_000
DeliveryState = Literal["pending", "delivered", "dead"]
STATES: tuple[DeliveryState, ...] = get_args(DeliveryState)
AlertKey = tuple[str, str, str]  # model, version, rule
WRITE_FAILURE_REASONS = ("disk_full", "io_error")

logger = logging.getLogger("vigil.outbox")


def write_failure_reason(exc: BaseException) -> str:
    """disk_full for a full disk or quota (SQLite's SQLITE_FULL, ENOSPC, EDQUOT), else io_error."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "disk_full"
    if isinstance(exc, sqlite3.Error) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or "full" in str(exc).lower()):
        return "disk_full"
    return "io_error"

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


class OutboxFile:
    """One SQLite outbox file, its schema made sure of. Safe to use from several threads (a
    connection per thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._failures: dict[str, int] = {}
        self._failures_lock = threading.Lock()
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
        """One transaction. A write the disk refuses (full, or failing) commits nothing: it is
        counted by reason (`write_failures()`, a metric), logged with the file, and raised for
        the caller, which keeps the change and tries it again."""
        try:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            reason = write_failure_reason(exc)
            with self._failures_lock:
                self._failures[reason] = self._failures.get(reason, 0) + 1
            logger.error("outbox %s: a write failed (%s): %s; nothing of it was committed",
                         self.path, reason, exc)
            raise

    def write_failures(self) -> dict[str, int]:
        """Writes that failed since this process opened the file, by reason."""
        with self._failures_lock:
            return dict(self._failures)

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])
