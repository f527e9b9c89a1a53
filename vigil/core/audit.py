"""The append-only audit log of model changes: JSON lines in ``<repository>/audit.jsonl``.

One line per change: time, actor (the token's name, or who ran the CLI without a server),
action, model, from and to versions, reason, and the aliases' generation after it. Lines are
appended with O_APPEND under an exclusive lock and fsynced, so concurrent writers never
interleave and an acknowledged change is on disk. An alias change appends its line and writes the
aliases while holding that lock (vigil.core.model_ops), and takes the line back if the aliases
cannot be written.

Reading: `tail` gives a model's newest entries by reading the file backwards in blocks, so a
`history` call costs what it returns, not the file's size; `entries` reads everything (tools).

Rotation: rename the file (``mv audit.jsonl audit-2026-12.jsonl``), nothing else. Writers open
the path for each line under the lock, so the next line starts a fresh ``audit.jsonl``, and a
writer that opened the old file just before the rename puts its line in the renamed file,
complete. ``history`` then shows only what the fresh file holds; the renamed files are the
archive (read them with any JSON-lines tool). Do not copy and truncate in place: lines appended
between the copy and the truncation would be lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil.core.actions import AUDITED
from vigil.core.files import locked

AUDIT_FILE = "audit.jsonl"
ACTIONS = AUDITED  # every name an entry's action may take
BLOCK_BYTES = 64 * 1024  # read backwards this much at a time


def audit_path(root: Path) -> Path:
    return Path(root) / AUDIT_FILE


def make_entry(
    *,
    actor: str,
    action: str,
    model: str,
    from_version: str | None = None,
    to_version: str | None = None,
    reason: str = "",
    generation: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry, stamped now; raises ValueError for an action the log does not know."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "actor": actor,
        "action": str(action),
        "model": model,
        "from_version": from_version,
        "to_version": to_version,
        "reason": reason,
    }
    if generation is not None:
        entry["generation"] = generation
    if details:
        entry["details"] = details
    return entry


@dataclass
class Appender:
    """The log opened under its lock: `write` appends one fsynced line, `take_back` removes
    the line written last (the change it records did not happen)."""

    fd: int
    _start: int | None = None

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a writer died mid-line: start a fresh one
        self._start = size
        try:
            os.write(self.fd, line)
            os.fsync(self.fd)
        except BaseException:
            self.take_back()  # a short write (disk full) leaves no torn line
            raise

    def take_back(self) -> None:
        if self._start is not None:
            os.ftruncate(self.fd, self._start)
            os.fsync(self.fd)
            self._start = None


@contextmanager
def appending(root: Path) -> Iterator[Appender]:
    """The log under its exclusive lock for the block (other writers wait)."""
    with locked(audit_path(root), os.O_RDWR | os.O_APPEND) as fd:
        yield Appender(fd)


def record(root: Path, **fields: Any) -> dict[str, Any]:
    """Append one entry (make_entry's fields) and return it."""
    entry = make_entry(**fields)
    with appending(root) as log:
        log.write(entry)
    return entry


def entries(root: Path, model: str | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries, oldest first, for one model or all; a torn line (a writer that died
    mid-write) is skipped. Reads the whole file: `tail` for the newest few."""
    try:
        f = audit_path(root).open("rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            entry = _parse(raw, model)
            if entry is not None:
                yield entry


def newest(root: Path, model: str | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries, newest first, for one model or all, read backwards in blocks of
    BLOCK_BYTES: stopping early reads only the end of the file."""
    try:
        f = audit_path(root).open("rb")
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        carry = b""  # the start of a line whose beginning is in an earlier block
        while end > 0:
            start = max(0, end - BLOCK_BYTES)
            f.seek(start)
            lines = (f.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""
            for raw in reversed(lines):
                entry = _parse(raw, model)
                if entry is not None:
                    yield entry
            end = start


HISTORY_LIMIT = 100  # entries a history call returns by default
MAX_HISTORY_LIMIT = 1000  # the most one call returns (older ones: read the file itself)


def tail(root: Path, model: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The model's newest `limit` entries, oldest first, and whether older ones exist."""
    found: list[dict[str, Any]] = []
    for entry in newest(root, model):
        if len(found) == limit:
            return found[::-1], True
        found.append(entry)
    return found[::-1], False


def _parse(raw: bytes, model: str | None) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if isinstance(entry, dict) and (model is None or entry.get("model") == model):
        return entry
    return None
