"""vigil.core.exclusive.move_exclusive: a rename that never replaces what is at the target."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.core import exclusive
from vigil.core.exclusive import move_exclusive


@pytest.fixture(params=["renameat2", "check-then-rename"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The kernel's renameat2(RENAME_NOREPLACE), and the check and rename used where libc lacks
    it (a libc without renameat2, which this host's is not, is the fake)."""
    if request.param == "renameat2":
        assert exclusive._renameat2() is not None, "this host's libc has renameat2"
    else:
        monkeypatch.setattr(exclusive, "_renameat2", lambda: None)
    return str(request.param)


def _folder(path: Path, content: bytes = b"new") -> Path:
    path.mkdir()
    (path / "file").write_bytes(content)
    return path


def test_a_free_name_is_taken(tmp_path: Path, way: str) -> None:
    source = _folder(tmp_path / ".staging")
    move_exclusive(source, tmp_path / "1")
    assert not source.exists() and (tmp_path / "1" / "file").read_bytes() == b"new"


@pytest.mark.parametrize("there", ["empty folder", "folder", "file", "dangling link"])
def test_anything_at_the_target_is_kept_and_refused(tmp_path: Path, way: str, there: str) -> None:
    """An empty folder (which rename(2) would replace), a folder, a file or a dangling link at
    the target: FileExistsError, the target as it was, the source where it was."""
    target = tmp_path / "1"
    if there == "empty folder":
        target.mkdir()
    elif there == "folder":
        _folder(target, b"old")
    elif there == "file":
        target.write_bytes(b"old")
    else:
        target.symlink_to(tmp_path / "nowhere")
    source = _folder(tmp_path / ".staging")
    with pytest.raises(FileExistsError):
        move_exclusive(source, target)
    assert (source / "file").read_bytes() == b"new"
    if there == "empty folder":
        assert list(target.iterdir()) == []
    elif there == "folder":
        assert (target / "file").read_bytes() == b"old"
    elif there == "file":
        assert target.read_bytes() == b"old"
    else:
        assert target.is_symlink()
