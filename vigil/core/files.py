"""Atomic file writes (a reader sees the old file or the new one, never half of one) and the
exclusive lock that writers of one file take."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Write `data` under a fresh temporary name beside `path` (created with `mode` less the
    umask; 0o600 for secrets), flush it to disk, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(path: Path, flags: int = os.O_RDWR, mode: int = 0o644) -> Iterator[int]:
    """An exclusive flock(2) on `path` (created with `mode` when missing) for the block; yields
    its file descriptor, opened with `flags`. Writers on one host, or on a shared filesystem with
    working flock, wait for one another; closing the descriptor releases the lock."""
    fd = os.open(path, flags | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


# sha256 of files by path, valid while (mtime, size, inode) stay the same: replicas check every
# version's model file on each refresh and the gate reads its held-out set on each change, each
# file hashed again only when it changed.
_digests: dict[Path, tuple[tuple[int, int, int], str]] = {}
MAX_DIGESTS = 100_000


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of the file at `path`, cached by its stamp (OSError when unreadable)."""
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _digests.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if len(_digests) >= MAX_DIGESTS:
        _digests.clear()
    _digests[path] = (stamp, digest.hexdigest())
    return digest.hexdigest()
