"""Moving a file or folder to a name only if nothing has that name: an exclusive create."""

from __future__ import annotations

import ctypes
import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100  # linux/fcntl.h: paths relative to the working directory


def move_exclusive(source: Path, target: Path) -> None:
    """Rename `source` to `target` unless something is there (FileExistsError), an empty folder
    included: plain rename(2) replaces an empty folder, so two writers could both win.

    renameat2(RENAME_NOREPLACE) makes the check and the move one step of the kernel. Where the
    kernel, libc or filesystem lacks it, the check and the rename are two steps: the caller holds
    a lock that every writer of `target` takes (the repository's publish lock), so only a writer
    that bypasses it could slip a folder in between."""
    if not _rename_noreplace(source, target):
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
        os.rename(source, target)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's renameat2 (glibc 2.28+, musl 1.2.5+), or None where libc lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[..., int], function)


def _rename_noreplace(source: Path, target: Path) -> bool:
    """renameat2(source, target, RENAME_NOREPLACE): True when renamed, FileExistsError when
    target exists, False where the kernel or the filesystem cannot (nothing was renamed)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target),
                _RENAME_NOREPLACE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # no such system call (old kernel, seccomp), or a filesystem without it
    raise OSError(code, os.strerror(code), str(target))  # EEXIST makes a FileExistsError
