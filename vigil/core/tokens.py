"""Scoped bearer tokens: the tokens file (names, scopes, SHA-256 digests only) and token checks.

The file is YAML, written atomically with mode 0600 by `vigil tokens` and read by both apps:

    version: 1
    tokens:
      - {name: ci, scopes: [infer, monitor], sha256: <hex digest of the token>, created: <iso time>}

A token is shown once, when it is created; only its digest is stored, so a leaked file reveals no
token. Checks hash the presented token and compare it with every stored digest in constant time.

Scopes, least privilege first (SCOPES): `metrics` scrapes the monitor's Prometheus endpoint and
nothing else; `infer` runs models and reads their metadata; `feedback` posts ground-truth labels
for served requests (`admin` grants it too); `monitor` reads what the monitor has
seen (drift JSON, HTML reports, sampled rows, status, the replicas' batching state) and, as
before `metrics` existed, scrapes; `admin` changes model versions and aliases. A scope grants only
what IMPLIED says besides itself: files written before `metrics` or `feedback` existed keep every
right they had (a `monitor` token still scrapes) and gain none but labelling for `admin` tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vigil.core.files import atomic_write, locked

logger = logging.getLogger("vigil.core.tokens")

SCOPES = ("metrics", "infer", "feedback", "monitor", "admin")
# scope -> the other scopes it grants; nothing else is implied
IMPLIED: dict[str, frozenset[str]] = {"monitor": frozenset({"metrics"}),
                                      "admin": frozenset({"feedback"})}
FORMAT_VERSION = 1
TOKEN_PREFIX = "vigil_"  # nosec B105 # a public prefix
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_HEADER = "# Vigil bearer tokens (`vigil tokens`): names, scopes and SHA-256 digests, never tokens.\n"


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class TokenRecord:
    name: str
    scopes: frozenset[str]
    sha256: str
    created: str

    def to_dict(self) -> dict[str, Any]:
        scopes = [s for s in SCOPES if s in self.scopes]
        return {"name": self.name, "scopes": scopes, "sha256": self.sha256, "created": self.created}

    def grants(self, scope: str) -> bool:
        """Whether this token may call a route that needs `scope`."""
        return scope in self.scopes or any(scope in IMPLIED.get(s, ()) for s in self.scopes)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """'infer,monitor' (or a list) -> the scopes; unknown or no scope is a ValueError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = frozenset(s.strip() for s in items if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of {list(SCOPES)}, got {text!r}")
    return scopes


# ---------------------------------------------------------------- the file


def read_tokens(path: Path) -> list[TokenRecord]:
    """Every record of the file; TokensFileError when it is malformed."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TokensFileError(f"{path}: {exc}") from None
    if doc is None:
        doc = {"version": FORMAT_VERSION, "tokens": []}
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise TokensFileError(f"{path}: expected a mapping with version: {FORMAT_VERSION}")
    raw = doc.get("tokens")
    raw = [] if raw is None else raw  # "tokens:" with nothing under it
    if not isinstance(raw, list) or set(doc) - {"version", "tokens"}:
        raise TokensFileError(f"{path}: expected only 'version' and a list 'tokens'")
    records, names = [], set()
    for i, item in enumerate(raw):
        where = f"{path}: tokens[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "scopes", "sha256", "created"}:
            raise TokensFileError(f"{where}: expected name, scopes, sha256, created")
        name, sha = item.get("name"), item.get("sha256")
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            raise TokensFileError(f"{where}: missing, invalid or repeated name {name!r}")
        if not isinstance(sha, str) or not _DIGEST.match(sha):
            raise TokensFileError(f"{where}: sha256 must be 64 lowercase hex digits")
        try:
            scopes = parse_scopes(item.get("scopes") or [])
        except ValueError as exc:
            raise TokensFileError(f"{where}: {exc}") from None
        names.add(name)
        records.append(TokenRecord(name, scopes, sha, str(item.get("created", ""))))
    return records


def _write_tokens(path: Path, records: list[TokenRecord]) -> None:
    """Atomically, with mode 0600 (readers never see half a file, nor other users any of it)."""
    text = _HEADER + yaml.safe_dump(
        {"version": FORMAT_VERSION, "tokens": [r.to_dict() for r in records]}, sort_keys=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), mode=0o600)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[list[TokenRecord]]:
    """The records under an exclusive lock, so two `vigil tokens` runs never lose an update."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.with_name(f".{path.name}.lock")):
        yield read_tokens(path) if path.exists() else []


def create_token(path: Path, name: str, scopes: frozenset[str]) -> str:
    """Add a token named `name`; returns the token itself (the only time it exists in clear)."""
    if not _NAME.match(name):
        raise ValueError(f"invalid token name {name!r}: letters, digits, '.', '_', '-' (64 at most)")
    scopes = parse_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _locked(path) as records:
        if any(r.name == name for r in records):
            raise ValueError(f"a token named {name!r} exists in {path}; revoke it first")
        created = datetime.now(UTC).isoformat(timespec="seconds")
        _write_tokens(path, [*records, TokenRecord(name, scopes, digest(token), created)])
    return token


def revoke_token(path: Path, name: str) -> None:
    with _locked(path) as records:
        kept = [r for r in records if r.name != name]
        if len(kept) == len(records):
            raise ValueError(f"no token named {name!r} in {path}")
        _write_tokens(path, kept)


# ---------------------------------------------------------------- checking


@dataclass(frozen=True)
class Decision:
    """The outcome of a check: allowed, or the status (401, 403) and a message for the client."""

    allowed: bool
    status: int = 200
    message: str = ""
    token_name: str | None = None


class TokenVerifier:
    """Checks bearer tokens against a tokens file and notices changes to it without a restart
    (it looks at most once per `recheck_s`). A file that vanishes or turns malformed after it
    was read keeps the last good tokens in force (logged): removing it never opens the server."""

    def __init__(self, path: Path | None, recheck_s: float = 1.0) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self._records: tuple[TokenRecord, ...] | None = None  # None: no tokens file seen yet
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        self.refresh(strict=True)

    @property
    def enabled(self) -> bool:
        """Whether a tokens file is in force (then every protected route needs a token)."""
        self._maybe_refresh()
        return self._records is not None

    def refresh(self, strict: bool = False) -> None:
        """Re-read the file if it changed. strict: a malformed file raises (at start)."""
        self._checked_at = time.monotonic()
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._records is not None and self._stamp is not None:
                logger.error("tokens file %s vanished; the last tokens read stay in force", self.path)
                self._stamp = None
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            records = read_tokens(self.path)
        except TokensFileError:
            if strict:
                raise
            logger.exception("tokens file %s is unusable; the last tokens read stay in force",
                             self.path)
            self._stamp = stamp
            return
        self._stamp = stamp
        self._records = tuple(records)
        logger.info("tokens file %s: %d tokens", self.path, len(records))

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._checked_at >= self.recheck_s:
            self.refresh()

    def check(self, authorization: str | None, scope: str | None) -> Decision:
        """Whether an Authorization header value grants `scope` (None: any valid token). With no
        tokens file read, nothing is granted: who may call without a token is the caller's
        decision (vigil.adapters.web.BearerGuard), never a default of this check."""
        self._maybe_refresh()
        records = self._records
        if records is None:
            return Decision(False, 401, f"no tokens file ({self.path}) is in force: no token is valid")
        token = _bearer_token(authorization)
        if token is None:
            return Decision(False, 401, "this route needs a bearer token (Authorization: Bearer ...)")
        presented = digest(token).encode()
        match = None
        for record in records:  # every digest is compared: the time taken does not say which
            if hmac.compare_digest(presented, record.sha256.encode()):
                match = record
        if match is None:
            return Decision(False, 401, "the bearer token is not valid")
        if scope is not None and not match.grants(scope):
            return Decision(
                False, 403, f"token {match.name!r} lacks the {scope!r} scope this route needs",
                match.name,
            )
        return Decision(True, token_name=match.name)


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
