""".ci/model-gate, the model gate over a git change, run as CI runs it: bash, in a real git
repository (tmp_path), with the real `vigil` console script on PATH. A version added since the
base commit that is as good as production passes; a weak one fails the job with a GitHub error
annotation; a change that adds no version, and a base that is not a commit, are told apart."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_model_gate import _trained
from vigil.tools.examples import BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS, HOLDOUT_FILE
from vigil.core.repository import publish, read_manifest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "model-gate"
VENV_BIN = Path(sys.executable).parent  # where the `vigil` console script is installed


def _env(tmp_path: Path) -> dict[str, str]:
    """The environment of git and the script: vigil on PATH, no user or system git config."""
    assert (VENV_BIN / "vigil").exists(), f"no vigil console script in {VENV_BIN}"
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Vigil Tests",
        "GIT_AUTHOR_EMAIL": "tests@vigil.invalid",
        "GIT_COMMITTER_NAME": "Vigil Tests",
        "GIT_COMMITTER_EMAIL": "tests@vigil.invalid",
        "HOME": str(tmp_path),
    }


class GitRepo:
    """A git repository in tmp_path whose models/ holds breast_cancer/1 at the base commit."""

    def __init__(self, path: Path, env: dict[str, str]) -> None:
        self.path, self.env = path, env
        self.models = path / "models"

    def git(self, *args: str) -> str:
        done = subprocess.run(["git", *args], cwd=self.path, env=self.env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def commit(self, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "--quiet", "--no-verify", "-m", message)
        return self.git("rev-parse", "HEAD")

    def gate(self, *args: str) -> subprocess.CompletedProcess[str]:
        """bash .ci/model-gate ARGS, from the repository's root, stdout and stderr together."""
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=self.path, env=self.env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=240)

    def publish(self, version: str, onnx_bytes: bytes) -> None:
        """breast_cancer/<version> published as vigil publishes it, with version 1's metadata,
        profile and held-out set."""
        one = self.models / "breast_cancer" / "1"
        extra = {f: (one / f).read_bytes() for f in ("profile.json", "profile.npz", HOLDOUT_FILE)}
        publish(self.models, "breast_cancer", version, onnx_bytes, BREAST_CANCER_INPUTS,
                BREAST_CANCER_OUTPUTS, metadata=read_manifest(one).metadata, extra_files=extra)


@pytest.fixture
def repo(example_root: Path, tmp_path: Path) -> tuple[GitRepo, str]:
    """The git repository and its base commit (breast_cancer/1 only)."""
    repo = GitRepo(tmp_path / "work", _env(tmp_path))
    shutil.copytree(example_root / "breast_cancer", repo.models / "breast_cancer")
    repo.git("init", "--quiet")
    return repo, repo.commit("base: breast_cancer/1")


def _verdict(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_change_that_adds_no_version_passes(repo: tuple[GitRepo, str]) -> None:
    git, base = repo
    (git.models / "README.md").write_text("the model repository\n")
    (git.path / "notes").mkdir()
    (git.path / "notes" / "model.yaml").write_text("not under models/\n")
    git.commit("docs, no version")
    done = git.gate(base)  # REPOSITORY and OUT by default: models, gate-verdicts
    assert done.returncode == 0, done.stdout
    assert "no version added" in done.stdout
    assert list((git.path / "gate-verdicts").iterdir()) == []


def test_a_version_as_good_as_production_passes(repo: tuple[GitRepo, str]) -> None:
    git, base = repo
    git.publish("2", (git.models / "breast_cancer" / "1" / "model.onnx").read_bytes())
    git.commit("breast_cancer/2")
    out = git.path / "verdicts"
    done = git.gate(base, "models", str(out))
    assert done.returncode == 0, done.stdout
    assert "breast_cancer/2 passed" in done.stdout and "::error::" not in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["breast_cancer-2.json"]
    verdict = _verdict(out / "breast_cancer-2.json")
    assert verdict["passed"] is True and verdict["against"] == "1"
    assert all(check["passed"] for check in verdict["checks"]), verdict["checks"]


def test_a_weak_version_fails_the_job(repo: tuple[GitRepo, str]) -> None:
    git, base = repo
    git.publish("2", (git.models / "breast_cancer" / "1" / "model.onnx").read_bytes())
    with_two = git.commit("breast_cancer/2")
    git.publish("3", _trained(columns=None, shuffle=True))  # trained on shuffled labels
    git.commit("breast_cancer/3")

    out = git.path / "verdicts"
    done = git.gate(base, "models", str(out))
    assert done.returncode == 1, done.stdout
    assert "::error::breast_cancer/3" in done.stdout
    assert "breast_cancer/2 passed" in done.stdout  # a failure does not stop the others
    assert "::error::breast_cancer/2" not in done.stdout
    assert _verdict(out / "breast_cancer-2.json")["passed"] is True
    weak = _verdict(out / "breast_cancer-3.json")
    assert weak["passed"] is False
    assert {c["name"]: c["passed"] for c in weak["checks"]}["quality"] is False

    # From the commit that added 2, only 3 is new.
    only = git.path / "only-3"
    done = git.gate(with_two, "models", str(only))
    assert done.returncode == 1 and "::error::breast_cancer/3" in done.stdout
    assert sorted(p.name for p in only.iterdir()) == ["breast_cancer-3.json"]


def test_a_version_that_cannot_be_judged_fails_the_job(repo: tuple[GitRepo, str]) -> None:
    git, base = repo
    broken = git.models / "breast_cancer" / "4"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: breast_cancer\nversion: '4'\n")  # no model
    git.commit("a broken breast_cancer/4")
    done = git.gate(base, "models", str(git.path / "verdicts"))
    assert done.returncode == 1, done.stdout
    assert "::error::breast_cancer/4" in done.stdout


def test_a_base_that_is_not_a_commit_fails_instead_of_passing(repo: tuple[GitRepo, str]) -> None:
    """A base missing from the clone (a shallow checkout) must not read as 'no version added'."""
    git, _ = repo
    git.publish("3", _trained(columns=None, shuffle=True))
    git.commit("breast_cancer/3")
    done = git.gate("0123456789abcdef0123456789abcdef01234567")
    assert done.returncode != 0, done.stdout
    assert "no version added" not in done.stdout
    assert "::error::" in done.stdout


@pytest.mark.parametrize("edit", ["policy", "production_manifest", "held_out_data"])
def test_a_version_added_with_a_weaker_yardstick_fails_before_it_is_judged(
    repo: tuple[GitRepo, str], edit: str
) -> None:
    """The pull request that adds a version cannot also change what it is judged by: a gate.yaml
    (margin 1 passes anything), production's model.yaml (its metadata.evaluation is the policy's
    fallback) or production's held-out data. The job fails before validating, naming the file."""
    git, base = repo
    one = git.models / "breast_cancer" / "1"
    if edit == "policy":
        (git.models / "breast_cancer" / "gate.yaml").write_text("margin: 1\n")
        touched = "models/breast_cancer/gate.yaml"
    elif edit == "production_manifest":
        text = (one / "model.yaml").read_text().replace("margin: 0.01", "margin: 1")
        (one / "model.yaml").write_text(text + "\n")
        touched = "models/breast_cancer/1/model.yaml"
    else:
        (one / HOLDOUT_FILE).write_bytes((one / HOLDOUT_FILE).read_bytes()[:-8])
        touched = f"models/breast_cancer/1/{HOLDOUT_FILE}"
    git.publish("2", _trained(columns=None, shuffle=True))  # a weak version the gate refuses
    git.commit("a weak version, and a weaker yardstick")
    done = git.gate(base)
    assert done.returncode == 1, done.stdout
    assert f"::error file={touched}::model gate: this change adds versions and also changes" \
        in done.stdout
    assert not (git.path / "gate-verdicts" / "breast_cancer-2.json").exists()
