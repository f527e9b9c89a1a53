"""What the example receiver accepts and keeps: signed CloudEvents, checked, stored by id, and
read back only with the receiver's own bearer token."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import (
    EmptyWebhookSecretError,
    Webhook,
    WebhookVerificationError,
)

from vigil.core.repository import valid_name

MODEL = "breast_cancer"
DRIFT_EVENT = "vigil.drift.detected"
CLOUDEVENTS_JSON = "application/cloudevents+json"
SECRET_ENV = "VIGIL_WEBHOOK_SECRET"
READ_TOKEN_ENV = "VIGIL_RECEIVER_TOKEN"
MIN_READ_TOKEN_CHARS = 16
MAX_ID_CHARS = 256  # an id is the dedup key and part of the audit's actor: a bounded one
MAX_EVENTS = 10_000  # events kept (the newest): the duplicates the receiver recognises
REALM = 'Bearer realm="vigil-receiver"'


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Refusal(Exception):
    """A request the receiver refuses: answered {"error": message} with `status` (and headers)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


# --- signatures ----------------------------------------------------------------------------------


def load_secrets(value: str | None) -> tuple[Webhook, ...]:
    """One verifier per secret in `value` (separated by commas or whitespace)."""
    found = [s for s in re.split(r"[,\s]+", value or "") if s]
    if not found:
        raise ValueError(f"no webhook secret: set {SECRET_ENV}=whsec_... (the monitor's secret)")
    verifiers = []
    for i, secret in enumerate(found, 1):
        try:
            verifiers.append(Webhook(secret))
        except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
            # The secret itself is never repeated in a message.
            raise ValueError(f"secret #{i} in {SECRET_ENV} is not whsec_<base64>") from None
    return tuple(verifiers)


def verify(verifiers: Sequence[Webhook], body: bytes, headers: Mapping[str, str]) -> str | None:
    """None when one of the secrets verifies the body and headers; otherwise why none did."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    why = "no secret configured"
    for verifier in verifiers:
        try:
            verifier.verify(text, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            why = str(exc)
        except ValueError:  # the library's parsing of a malformed webhook-signature
            why = "malformed webhook-signature header"
        else:
            return None
    return why


class ReadAccess:
    """Who may read what the receiver stored: a caller with the bearer token of $VIGIL_RECEIVER_
    TOKEN. Only its SHA-256 is kept, compared in constant time. Without a token (None or empty)
    nothing is read: every read is a 401 that says how to turn reading on."""

    def __init__(self, token: str | None) -> None:
        if token and len(token) < MIN_READ_TOKEN_CHARS:
            raise ValueError(
                f"{READ_TOKEN_ENV} is shorter than {MIN_READ_TOKEN_CHARS} characters: use a "
                "random one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self._digest = hashlib.sha256(token.encode()).digest() if token else None

    def check(self, authorization: str | None) -> None:
        """Nothing when `authorization` is 'Bearer <the token>'; Refusal 401 otherwise."""
        if self._digest is None:
            raise Refusal(401, f"reading events is off: start the receiver with {READ_TOKEN_ENV} "
                          "and send it as a bearer token", {"WWW-Authenticate": REALM})
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refusal(401, "missing bearer token", {"WWW-Authenticate": REALM})
        offered = hashlib.sha256(token.strip().encode()).digest()
        if not hmac.compare_digest(offered, self._digest):
            raise Refusal(401, "invalid bearer token",
                          {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})


# --- events --------------------------------------------------------------------------------------


def parse_event(body: bytes, content_type: str | None, webhook_id: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON event in `body`, checked; Refusal 400 if not."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != CLOUDEVENTS_JSON:
        raise Refusal(400, f"content-type {media or '(none)'}: expected {CLOUDEVENTS_JSON}")
    try:
        event = json.loads(body)
    except ValueError:
        raise Refusal(400, "the body is not JSON") from None
    if not isinstance(event, dict):
        raise Refusal(400, "a CloudEvent is a JSON object")
    if event.get("specversion") != "1.0":
        raise Refusal(400, f"specversion {event.get('specversion')!r}: expected '1.0'")
    for key in ("id", "type", "source", "subject"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise Refusal(400, f"the event needs a non-empty string {key!r}")
    if "data" not in event:
        raise Refusal(400, "the event has no 'data'")
    if len(event["id"]) > MAX_ID_CHARS:
        raise Refusal(400, f"the event's id is over {MAX_ID_CHARS} characters")
    if event["id"] != webhook_id:
        raise Refusal(400, "the webhook-id header differs from the event's id")
    return event


def drift_version(event: Mapping[str, Any]) -> str | None:
    """The breast_cancer version a drift event asks to retrain, or None for any other event."""
    if event["type"] != DRIFT_EVENT:
        return None
    model, slash, version = event["subject"].partition("/")
    return version if model == MODEL and slash and valid_name(version) else None


# --- the store -----------------------------------------------------------------------------------

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events ("
    " id TEXT PRIMARY KEY, type TEXT NOT NULL, subject TEXT NOT NULL,"
    " received_at TEXT NOT NULL, last_received_at TEXT NOT NULL,"
    " deliveries INTEGER NOT NULL, body TEXT NOT NULL, retrained TEXT)"
)
_UNFINISHED = "json_extract(retrained, '$.status') IN ('queued', 'running')"


class EventStore:
    """Accepted events in SQLite, one row per id: the deduplication key and GET /events. The
    newest `max_events` are kept (older ones pruned as new ones arrive, unless their job is
    still queued or running), so the file stays flat however long the receiver runs."""

    def __init__(self, path: str | Path, max_events: int = MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_events must be 1 or more")
        self.max_events = max_events
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
            # Jobs that were queued or running when an earlier receiver stopped died with it.
            self._db.execute(
                "UPDATE events SET retrained = json_set(retrained, '$.status', 'interrupted')"
                f" WHERE {_UNFINISHED}"
            )

    def record(self, event: Mapping[str, Any], body: str, retrained: Any = None) -> int:
        """Count one arrival of the event; stores it on the first. Returns the arrivals so far
        (1: new; more: a duplicate, whose body and job are left as they were)."""
        at = now()
        with self._lock:
            row = self._db.execute(
                "INSERT INTO events (id, type, subject, received_at, last_received_at, deliveries,"
                " body, retrained) VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET deliveries = deliveries + 1,"
                " last_received_at = excluded.last_received_at RETURNING deliveries",
                (event["id"], event["type"], event["subject"], at, at, body,
                 None if retrained is None else json.dumps(retrained)),
            ).fetchone()
            if row[0] == 1:
                self._db.execute(
                    "DELETE FROM events WHERE rowid <= (SELECT max(rowid) FROM events) - ?"
                    f" AND NOT coalesce({_UNFINISHED}, 0)", (self.max_events,),
                )
        return int(row[0])

    def seen(self, event_id: str) -> bool:
        with self._lock:
            found = self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
        return found is not None

    def set_retrained(self, event_id: str, outcome: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE events SET retrained = ? WHERE id = ?", (json.dumps(outcome), event_id)
            )

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM events").fetchone()[0])

    def list(self) -> list[dict[str, Any]]:
        """The stored events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, subject, received_at, last_received_at, deliveries, retrained,"
                " body FROM events ORDER BY rowid"
            ).fetchall()
        keys = ("id", "type", "subject", "received_at", "last_received_at", "deliveries")
        return [
            {**dict(zip(keys, r[:6], strict=True)),
             "retrained": None if r[6] is None else json.loads(r[6]), "event": json.loads(r[7])}
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
