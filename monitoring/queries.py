"""What a monitor HTTP request asks for (query parameters, accepted content coding), checked.

Pure functions over the decoded query pairs and header values, so every rule is tested without a
server. A query a route cannot take raises ``BadQuery`` (HTTP 400) saying what is wrong:

- ``windows``: ASCII digits only, 1..100000 (not "0", "-1", "1.5", "1e3", " 5", "²", empty);
- ``version``: a version label as the model repository accepts one (vigil.core.repository: a letter
  or digit, then letters, digits, '.', '_', '-'; at most 128 characters); whether that version
  exists is the route's question (404);
- ``labelled`` (the rows route): ``all`` (the default: every row, each with its label or null)
  or ``only`` (the labelled rows alone), exactly so (not "ONLY", "yes", "true", empty);
- a parameter given twice, or one the route does not take, is refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from vigil.core.repository import valid_name

MAX_WINDOWS = 100_000
DRIFT_PARAMETERS = frozenset({"version", "windows"})
REPORT_PARAMETERS = frozenset({"version"})
ROWS_PARAMETERS = frozenset({"version", "labelled"})
LABELLED = ("all", "only")
_WINDOWS = re.compile(r"[0-9]{1,6}")  # [0-9], not \d: "²" and other Unicode digits are refused
_SHOWN = 40  # characters of a refused value or name quoted back
_NAMES_SHOWN = 5  # unknown parameter names quoted back


class BadQuery(ValueError):
    """The request's query cannot be taken (HTTP 400); the message says why."""


@dataclass(frozen=True)
class ModelQuery:
    version: str | None  # None: the model's newest version
    windows: int | None  # None: every window kept
    labelled_only: bool = False  # the rows route: only the rows that have a label


def parse_drift_query(pairs: Iterable[tuple[str, str]]) -> ModelQuery:
    """``GET /v1/models/{m}/drift[?version=V][&windows=N]``; `pairs` as decoded, repeats kept
    (Starlette: ``request.query_params.multi_items()``)."""
    return _parse(pairs, DRIFT_PARAMETERS)


def parse_report_query(pairs: Iterable[tuple[str, str]]) -> ModelQuery:
    """``GET /v1/models/{m}/report[?version=V]``."""
    return _parse(pairs, REPORT_PARAMETERS)


def parse_rows_query(pairs: Iterable[tuple[str, str]]) -> ModelQuery:
    """``GET /v1/models/{m}/rows[?version=V][&labelled=all|only]``."""
    return _parse(pairs, ROWS_PARAMETERS)


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an Accept-Encoding header value allows gzip: "gzip" (or "x-gzip"), else "*", with a
    q-value above 0 (RFC 9110 12.5.3); an explicit gzip;q=0 wins over "*"."""
    explicit: float | None = None
    wildcard: float | None = None
    for item in (accept_encoding or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            explicit = q if explicit is None else max(explicit, q)
        elif coding == "*":
            wildcard = q
    chosen = explicit if explicit is not None else wildcard
    return chosen is not None and chosen > 0


def _parse(pairs: Iterable[tuple[str, str]], allowed: frozenset[str]) -> ModelQuery:
    given: dict[str, str] = {}
    unknown: list[str] = []
    for name, value in pairs:
        if name not in allowed:
            if name not in unknown:
                unknown.append(name)
        elif name in given:
            raise BadQuery(f"query parameter {name!r} is given more than once")
        else:
            given[name] = value
    if unknown:
        names = ", ".join(_shown(n) for n in sorted(unknown)[:_NAMES_SHOWN])
        more = f" and {len(unknown) - _NAMES_SHOWN} more" if len(unknown) > _NAMES_SHOWN else ""
        takes = ", ".join(sorted(allowed))
        raise BadQuery(f"unknown query parameter(s) {names}{more}: this route takes {takes}")
    version = given.get("version")
    if version is not None and not valid_name(version):
        raise BadQuery("version must be a version label (a letter or digit, then letters, digits, "
                       f"'.', '_', '-'; at most 128 characters), got {_shown(version)}")
    raw = given.get("windows")
    windows = None
    if raw is not None:
        if not _WINDOWS.fullmatch(raw) or not 1 <= int(raw) <= MAX_WINDOWS:
            raise BadQuery(f"windows must be a whole number from 1 to {MAX_WINDOWS} (ASCII "
                           f"digits), got {_shown(raw)}")
        windows = int(raw)
    labelled = given.get("labelled", "all")
    if labelled not in LABELLED:
        raise BadQuery(f"labelled must be 'all' or 'only', got {_shown(labelled)}")
    return ModelQuery(version=version, windows=windows, labelled_only=labelled == "only")


def _shown(text: str) -> str:
    """A caller's string quoted back, bounded: repr of at most _SHOWN characters."""
    return repr(text[:_SHOWN]) + ("..." if len(text) > _SHOWN else "")
