"""One virtual environment per peer server (pinned PyPI installs, reused when present)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CACHE = Path(
    os.environ.get("VIGIL_BENCH_PEERS_CACHE", Path.home() / ".cache" / "vigil-bench-peers")
)
_STAMP = ".bench-peers-spec.json"


def _vigil_version(package: str) -> str:
    """The version Vigil's own environment has, so that every peer runs the same one."""
    return metadata.version(package)


@dataclass(frozen=True)
class PeerEnv:
    """A peer framework, its pinned version and what else its environment needs."""

    name: str
    version: str
    extra: tuple[str, ...]
    why: str  # why the extra pins are there (printed with the settings)

    @property
    def path(self) -> Path:
        return CACHE / f"{self.name}-{self.version}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    def requirements(self) -> list[str]:
        return [f"{self.name}=={self.version}", *self.extra]


def peer_envs() -> dict[str, PeerEnv]:
    """The pins. onnxruntime, numpy's major line and the HTTP speed-ups follow Vigil's .venv."""
    ort = f"onnxruntime=={_vigil_version('onnxruntime')}"
    uvloop, httptools = _vigil_version("uvloop"), _vigil_version("httptools")
    return {
        "mlserver": PeerEnv(
            "mlserver", "1.7.1", (ort, "uvloop==0.21.0"),
            "uvloop 0.21.0: with 0.23 MLServer's inference worker dies ('no current event loop')",
        ),
        "litserve": PeerEnv(
            "litserve", "0.2.19", (ort, f"uvloop=={uvloop}", f"httptools=={httptools}"),
            "uvloop and httptools at Vigil's versions (uvicorn picks them up)",
        ),
        "bentoml": PeerEnv(
            "bentoml", "1.4.40", (ort, f"uvloop=={uvloop}", f"httptools=={httptools}"),
            "uvloop and httptools at Vigil's versions: pip does not bring them for BentoML",
        ),
    }  # fmt: skip


def _base_python() -> str:
    """The interpreter Vigil's .venv was made from (the same Python for every peer)."""
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return str(exe if exe.exists() else sys.executable)


def ready(env: PeerEnv) -> bool:
    """Present and installed from exactly these requirements."""
    try:
        stamp = json.loads((env.path / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("requirements") == env.requirements() and env.python.exists()


def ensure(env: PeerEnv, log, timeout_s: float = 1200.0) -> str | None:
    """Create or reuse the environment; returns None when usable, else why not."""
    if ready(env):
        return None
    started = time.monotonic()
    log(f"{env.name}: creating {env.path} (pip install {' '.join(env.requirements())})")
    env.path.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [_base_python(), "-m", "venv", "--clear", str(env.path)],
        [str(env.python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(env.python), "-m", "pip", "install", "--quiet", *env.requirements()],
    ]
    for step in steps:
        left = timeout_s - (time.monotonic() - started)
        try:
            done = subprocess.run(
                ["nice", "-n", "10", *step], check=False, capture_output=True, text=True,
                timeout=max(left, 1), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"install timed out after {timeout_s:.0f}s"
        if done.returncode != 0:
            return f"`{' '.join(step[2:5])} ...` failed: {(done.stderr or done.stdout)[-600:]}"
    (env.path / _STAMP).write_text(json.dumps({"requirements": env.requirements()}))
    log(f"{env.name}: installed in {time.monotonic() - started:.0f}s")
    return None


def installed(env: PeerEnv, packages: tuple[str, ...]) -> dict[str, str | None]:
    """Versions of `packages` inside the peer's environment (None where absent)."""
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = metadata.version(p)\n"
        "    except metadata.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    try:
        done = subprocess.run([str(env.python), "-c", code, *packages], check=True,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return {p: None for p in packages}
