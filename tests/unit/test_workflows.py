"""The GitHub Actions workflows (.github/workflows) and the locks CI installs, checked offline:
actionlint (a pinned binary, tests/actionlint.py) and check-jsonschema's bundled GitHub workflow
schema find nothing; the test job runs exactly the README's test command; every job's permissions
are minimal; a version tag builds and pushes the GPU image (provenance, SBOM) and the Helm chart;
requirements/cpu.lock and requirements/dev.lock are complete, hashed and not stale."""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.actionlint import actionlint_binary
from tests.helm_chart import HELM_VERSION

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
CI = ROOT / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def ci() -> dict[str, Any]:
    return yaml.safe_load(CI.read_text())


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true


def run_lines(job: dict[str, Any]) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def uses(job: dict[str, Any], action: str) -> dict[str, Any]:
    (step,) = [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]
    return step


def readme_test_command() -> str:
    """The `make test` line of the README's first code block, its comment cut off."""
    block = re.search(r"```\w*\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no code block"
    commands = [line.split("#")[0].strip() for line in block[1].splitlines()]
    (command,) = [c for c in commands if re.fullmatch(r"make\s+test\b.*", c)]
    return command


# ---------------------------------------------------------------- linters


def test_there_are_workflows() -> None:
    assert CI in WORKFLOWS


def test_actionlint_finds_nothing() -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the pinned actionlint is a linux/amd64 binary")
    # No shellcheck or pyflakes from PATH: the same result on every machine (the workflow's lint
    # job runs upstream actionlint with the runner's shellcheck).
    result = subprocess.run(
        [str(actionlint_binary()), "-no-color", "-shellcheck=", "-pyflakes=",
         *map(str, WORKFLOWS)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_githubs_schema() -> None:
    """check-jsonschema's GitHub workflow schema is bundled with it: no network, no cache."""
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
         *map(str, WORKFLOWS)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- what runs when


def test_runs_on_pull_requests_pushes_to_main_and_version_tags(ci: dict[str, Any]) -> None:
    on = triggers(ci)
    assert "pull_request" in on
    assert on["push"]["branches"] == ["main"]
    assert on["push"]["tags"] == ["v*"]
    assert "${{ github.ref }}" in ci["concurrency"]["group"]


def test_test_job_runs_exactly_the_readme_command(ci: dict[str, Any]) -> None:
    command = readme_test_command()
    assert command == "make test"
    job = ci["jobs"]["test"]
    assert run_lines(job) == [command]
    assert uses(job, "actions/setup-python")["with"]["python-version"] in (
        "3.11", "${{ env.PYTHON_VERSION }}")
    assert ci["env"]["PYTHON_VERSION"] == "3.11"
    # .ci/run, what this project's own CI runs, is the same command.
    ci_run = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert ci_run[-1] == command


def test_lint_job_runs_make_lint_on_the_locked_environment(ci: dict[str, Any]) -> None:
    lines = run_lines(ci["jobs"]["lint"])
    assert lines.index("make install-locked") < lines.index("make lint")


def test_supply_chain_audits_every_lock_and_uploads_an_sbom(ci: dict[str, Any]) -> None:
    job = ci["jobs"]["supply-chain"]
    script = "\n".join(run_lines(job))
    assert "pip-audit" in script
    for lock in ("gpu", "cpu", "dev"):
        assert f"requirements/{lock}.lock" in script
    assert "make sbom" in script and "cyclonedx-py" in script
    assert "sbom/" in uses(job, "actions/upload-artifact")["with"]["path"]


def test_the_tag_job_pushes_the_image_and_the_chart(ci: dict[str, Any]) -> None:
    job = ci["jobs"]["release"]
    assert "refs/tags/v" in job["if"]
    assert set(job["needs"]) == set(ci["jobs"]) - {"release"}
    build = uses(job, "docker/build-push-action")["with"]
    assert build["file"] == "Dockerfile.gpu"
    assert build["push"] is True
    assert build["provenance"] == "mode=max"
    assert build["sbom"] is True
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    images = uses(job, "docker/metadata-action")["with"]["images"]
    assert images == "${{ steps.version.outputs.image }}"
    version_step = "\n".join(run_lines(job))
    assert 'image=ghcr.io/${GITHUB_REPOSITORY,,}' in version_step  # ghcr.io/<owner>/<repo>
    assert uses(job, "actions/attest-sbom")["with"]["sbom-path"].endswith(".cdx.json")
    assert uses(job, "azure/setup-helm")["with"]["version"] == HELM_VERSION
    assert re.search(r"helm package helm/vigil\b", version_step)
    assert re.search(r'helm push \S+ "oci://ghcr\.io/', version_step)


# ---------------------------------------------------------------- least privilege, pinned actions


def test_permissions_are_read_only_but_for_the_release(ci: dict[str, Any]) -> None:
    assert ci["permissions"] == {"contents": "read"}
    for name, job in ci["jobs"].items():
        assert "permissions" in job, f"job {name} sets no permissions of its own"
        writes = {scope for scope, level in job["permissions"].items() if level == "write"}
        if name == "release":
            assert writes == {"packages", "id-token", "attestations"}
        else:
            assert job["permissions"] == {"contents": "read"}, name


def test_every_action_is_pinned_to_a_version() -> None:
    for path in WORKFLOWS:
        for ref in re.findall(r"uses:\s*(\S+)", path.read_text()):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", ref), ref


# ---------------------------------------------------------------- the locks CI installs


def locked(lock: Path) -> dict[str, str]:
    """name -> version of every requirement in a pip-compile lock; each pinned and hashed."""
    pins = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", lock.read_text()):
        entry = "\n".join(line for line in entry.splitlines()
                          if not line.lstrip().startswith("#"))
        if not entry.strip():
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", entry.split("\\")[0].strip())
        assert match, f"{lock.name}: not pinned with ==: {entry.splitlines()[0]!r}"
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{lock.name}: {match[1]} unhashed"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.mark.parametrize(("lock", "extras"), [
    ("cpu.lock", ("cpu",)),
    ("dev.lock", ("cpu", "dev", "examples", "observe", "docs")),
])
def test_lock_is_complete_and_satisfies_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    path = ROOT / "requirements" / lock
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked(path)
    wanted = [*project["dependencies"],
              *(r for extra in extras for r in project["optional-dependencies"][extra])]
    for text in wanted:
        req = Requirement(text)
        if canonicalize_name(req.name) == "vigil":
            continue  # the dev extra names vigil's own extras
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is missing from requirements/{lock} (make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} in requirements/{lock} does not satisfy {req.specifier} "
            "(make lock)")
    assert "onnxruntime-gpu" not in pins
    header = path.read_text().split("\n\n")[0]
    assert "--generate-hashes" in header
    for extra in extras:
        assert f"--extra={extra}" in header


# ---------------------------------------------------------------- the model gate and retraining

MODEL_GATE = ROOT / ".github" / "workflows" / "model-gate.yml"
RETRAIN = ROOT / ".github" / "workflows" / "retrain.yml"


@pytest.fixture(scope="module")
def model_gate() -> dict[str, Any]:
    return yaml.safe_load(MODEL_GATE.read_text())


@pytest.fixture(scope="module")
def retrain() -> dict[str, Any]:
    return yaml.safe_load(RETRAIN.read_text())


def steps_running(job: dict[str, Any], text: str) -> list[int]:
    """The indexes of the job's steps whose run script contains `text`."""
    return [i for i, step in enumerate(job["steps"]) if text in step.get("run", "")]


@pytest.mark.parametrize("path", [MODEL_GATE, RETRAIN], ids=lambda p: p.name)
def test_gate_and_retrain_workflows_are_read_only(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    assert path in WORKFLOWS
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}, name


@pytest.mark.parametrize("path", [MODEL_GATE, RETRAIN], ids=lambda p: p.name)
def test_no_run_script_splices_event_fields(path: Path) -> None:
    """Script injection: what the event carries reaches a shell only through env."""
    workflow = yaml.safe_load(path.read_text())
    for job in workflow["jobs"].values():
        for script in run_lines(job):
            assert not re.search(r"\$\{\{\s*github\.event", script), script


def test_model_gate_runs_on_pull_requests_that_touch_models(model_gate: dict[str, Any]) -> None:
    on = triggers(model_gate)
    assert set(on) == {"pull_request"}
    paths = on["pull_request"]["paths"]
    assert paths and all(p.startswith("models/") for p in paths)
    assert model_gate["env"]["MODEL_REPOSITORY"] == "models"


def test_model_gate_passes_the_base_sha_to_the_script_through_env(
    model_gate: dict[str, Any],
) -> None:
    (job,) = model_gate["jobs"].values()
    (index,) = steps_running(job, ".ci/model-gate")
    step = job["steps"][index]
    names = [k for k, v in step.get("env", {}).items()
             if re.fullmatch(r"\$\{\{\s*github\.event\.pull_request\.base\.sha\s*\}\}", v)]
    assert len(names) == 1, step.get("env")
    script = step["run"]
    assert "${{" not in script
    assert re.search(rf'\.ci/model-gate\s+"\${names[0]}"', script), script
    # The diff against the base needs the base's history in the clone.
    assert uses(job, "actions/checkout").get("with", {}).get("fetch-depth") == 0


def test_retrain_runs_on_the_drift_dispatches_only(retrain: dict[str, Any]) -> None:
    on = triggers(retrain)
    assert set(on) == {"repository_dispatch"}
    assert sorted(on["repository_dispatch"]["types"]) == [
        "vigil.drift.detected", "vigil.prediction_drift.detected"]


def test_retrain_retrains_then_gates_then_starts_a_rollout(retrain: dict[str, Any]) -> None:
    (job,) = retrain["jobs"].values()
    (trained,) = steps_running(job, "-m examples.retrain")
    (gated,) = steps_running(job, "vigil models validate")
    (rolled,) = steps_running(job, "vigil models rollout")
    assert trained < gated < rolled
    assert "--force" not in str(job["steps"][rolled]["run"])  # the gate's verdict stands
    # A failed gate stops the job before the rollout: no always() or failure() override.
    for index in (gated, rolled):
        condition = str(job["steps"][index].get("if", ""))
        assert "always()" not in condition and "failure()" not in condition, condition
    # The event's fields arrive in the retraining step's environment.
    env = job["steps"][trained]["env"]
    assert any("github.event.client_payload.version" in str(v) for v in env.values()), env
