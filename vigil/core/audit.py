"""The append-only audit log of model changes: JSON lines in ``<repository>/audit.jsonl``.

One line per change: time, actor (the token's name, or who ran the CLI without a server),
action, model, from and to versions, reason, and the aliases' generation after it. Lines are
appended with O_APPEND under an exclusive lock and fsynced, so concurrent writers never
interleave and an acknowledged change is on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vigil.core.files import locked

AUDIT_FILE = "audit.jsonl"
ACTIONS = (
    "publish", "promote", "rollback", "canary", "canary_cleared", "shadow", "shadow_cleared",
    "retire", "load", "unload", "validate",
)


def audit_path(root: Path) -> Path:
    return Path(root) / AUDIT_FILE


def record(
    root: Path,
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
    """Append one entry and return it."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "actor": actor,
        "action": action,
        "model": model,
        "from_version": from_version,
        "to_version": to_version,
        "reason": reason,
    }
    if generation is not None:
        entry["generation"] = generation
    if details:
        entry["details"] = details
    line = json.dumps(entry, separators=(",", ":"), default=str).encode() + b"\n"
    with locked(audit_path(root), os.O_RDWR | os.O_APPEND) as fd:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a writer died mid-line: start a fresh one
        os.write(fd, line)
        os.fsync(fd)
    return entry


def entries(root: Path, model: str | None = None) -> Iterator[dict[str, Any]]:
    """The log's entries, oldest first, for one model or all; a torn last line (a writer that
    died mid-write) is skipped."""
    try:
        f = audit_path(root).open("rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if isinstance(entry, dict) and (model is None or entry.get("model") == model):
                yield entry
