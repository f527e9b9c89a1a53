"""Dockerfile.gpu, requirements/gpu.lock and .dockerignore, checked without a Docker engine:
hadolint with no rule ignored, and the promises the chart and the runtime rely on, read from
the text: non-root uid 1000, the locked install with onnxruntime-gpu and never the CPU package,
the CUDA libraries on the loader's path, `ray` on PATH in KubeRay's login shell, wget for its
probes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
LOCK = ROOT / "requirements" / "gpu.lock"
DOCKERIGNORE = ROOT / ".dockerignore"
VENV = "/opt/vigil"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, args))
    return result


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement in the lock; each must be pinned."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text()):
        entry = "\n".join(
            line for line in entry.splitlines() if not line.lstrip().startswith("#")
        )
        if not entry.strip():
            continue
        first = entry.split("\\")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", first)
        assert match, f"not pinned with ==: {first!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)
        pins[canonicalize_name(match[1])] = (match[2], hashes)
    return pins


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if found is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[cpu,dev]')")
    return found


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    # Our own config, so that no .hadolint.yaml or HADOLINT_* variable can ignore rules or lower
    # the threshold: every finding fails, info included.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    done = subprocess.run(
        [hadolint(), "--config", str(config), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_ignored_rules_say_why(dockerfile: str) -> None:
    lines = dockerfile.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"hadolint\s+ignore\s*=", line):
            reason = lines[i - 1].strip() if i else ""
            assert reason.startswith("#") and "hadolint" not in reason and len(reason) > 10, (
                f"line {i + 1}: `{line.strip()}` needs a comment line above it saying why"
            )


def test_multi_stage_with_the_build_left_behind(dockerfile: str) -> None:
    build, *_, final = stages(dockerfile)
    assert len(stages(dockerfile)) >= 2
    final_runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "pip" not in final_runs and "wheel" not in final_runs
    assert not re.search(r"\b(build-essential|gcc|g\+\+|make|git)\b", final_runs)
    copied_from_build = [a for k, a in final if k == "COPY" and a.startswith("--from=")]
    assert copied_from_build == [f"--from=build {VENV} {VENV}"]


def test_runs_as_uid_1000_not_root(dockerfile: str) -> None:
    *_, final = stages(dockerfile)
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    assert uid == "1000" and gid in ("", "1000")  # the chart's runAsUser / runAsGroup
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert "useradd --uid 1000 --gid 1000" in runs  # a passwd entry and a home for uid 1000


def test_installs_the_lock_with_hashes_and_nothing_else(dockerfile: str) -> None:
    build, *_ = stages(dockerfile)
    copies = [args for keyword, args in build if keyword == "COPY"]
    assert "requirements/gpu.lock requirements/gpu.lock" in copies
    installs = [
        shlex.split(part)
        for keyword, args in build if keyword == "RUN"
        for part in args.split("&&") if " install " in part
    ]
    assert installs, "the build stage installs nothing"
    for words in installs:
        assert "--no-deps" in words, f"{words}: every install is the lock's closure or Vigil alone"
        assert all(not w.startswith(("onnxruntime", ".[", "vigil[")) for w in words), words
    (lock_install,) = [w for w in installs if "-r" in w]
    assert lock_install[lock_install.index("-r") + 1] == "requirements/gpu.lock"
    assert {"--require-hashes", "--only-binary=:all:"} <= set(lock_install)


def test_lock_pins_onnxruntime_gpu_and_ray_260_never_the_cpu_package() -> None:
    pins = locked()
    assert "onnxruntime" not in pins
    assert "onnxruntime==" not in LOCK.read_text()
    assert re.fullmatch(r"1\.\d+\.\d+", pins["onnxruntime-gpu"][0])
    assert re.fullmatch(r"2\.60\.\d+", pins["ray"][0])
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes"


def test_lock_satisfies_pyproject() -> None:
    """The lock is not stale: every dependency of vigil[gpu] is in it, in a version allowed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for text in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from requirements/gpu.lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"{req.name}=={pins[name][0]} in the lock does not satisfy {req.specifier}"
        )


def test_cuda_libraries_match_the_loader_path(dockerfile: str) -> None:
    """The nvidia-* wheels of the lock (onnxruntime-gpu's cuda and cudnn extras) put their
    libraries where LD_LIBRARY_PATH points: nvidia/cu<major>/lib and nvidia/cudnn/lib."""
    pins = locked()
    major = pins["nvidia-cuda-runtime"][0].split(".")[0]
    assert f"nvidia-cudnn-cu{major}" in pins and "nvidia-cublas" in pins
    env = " ".join(args for keyword, args in stages(dockerfile)[-1] if keyword == "ENV")
    (paths,) = re.findall(r"LD_LIBRARY_PATH=(\S+)", env)
    site = f"{VENV}/lib/python3.11/site-packages"
    assert paths.split(":") == [f"{site}/nvidia/cu{major}/lib", f"{site}/nvidia/cudnn/lib"]


def test_ray_is_on_path_in_kuberays_login_shell(dockerfile: str) -> None:
    final = stages(dockerfile)[-1]
    env = " ".join(args for keyword, args in final if keyword == "ENV")
    assert f"PATH={VENV}/bin:$PATH" in env
    # KubeRay runs `bash -lc 'ray start ...'`; Debian's /etc/profile resets PATH there.
    runs = " ".join(args for keyword, args in final if keyword == "RUN")
    assert f'echo "export PATH={VENV}/bin:\\$PATH" > /etc/profile.d/vigil.sh' in runs
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in dockerfile  # a local-machine switch only


def test_has_wget_for_kuberays_probes(dockerfile: str) -> None:
    runs = " ".join(args for keyword, args in stages(dockerfile)[-1] if keyword == "RUN")
    assert re.search(r"apt-get install [^&]*\bwget=", runs)


def test_dockerignore_is_an_allowlist_of_what_the_dockerfile_copies(dockerfile: str) -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources: set[str] = set()
    for keyword, args in instructions(dockerfile):
        if keyword == "COPY" and not args.startswith("--from="):
            *srcs, _ = args.split()
            sources.update(s.rstrip("/") for s in srcs)
    assert sources == allowed
