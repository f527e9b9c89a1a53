"""What every `vigil` command prints the same way: refusals, tables, JSON, one-line text."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any


def say(message: str) -> None:
    """A notice on stderr, as `vigil: ...` (stdout stays the command's answer)."""
    print(f"vigil: {message}", file=sys.stderr)


def refuse(message: str, code: int = 2) -> int:
    """Say why, and return the exit code (2: a bad command line)."""
    say(message)
    return code


def warn(message: str) -> None:
    say(f"warning: {message}")


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Rows of cells (the first is the header), left-aligned in columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def one_line(text: Any, width: int | None = None) -> str:
    """Whitespace runs as single spaces; cut to `width` with '...' when given."""
    flat = " ".join(str(text or "").split())
    if width is None or len(flat) <= width:
        return flat
    return flat[: width - 3] + "..."


def error_text(raw: bytes) -> str:
    """What an error answer says: its {"error": ...} message, else its text (at most 500
    characters), else "(no body)"."""
    text = raw.decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(no body)"
