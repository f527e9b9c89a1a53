"""`vigil models rollout`: start with a plan in percent (every refusal before anything is sent,
exit 2), status in words (the plan, the step, the last checks, what happens next and when),
pause, resume and abort; here against the repository itself (no server at --url)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cli_support import nowhere, run_cli, validated_repo
from vigil.core import aliases, model_ops, rollout
from vigil.core.rollout import CheckResult
from vigil.tools.rollout_output import status_lines


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return validated_repo(tmp_path / "repo")


def cli(capsys, repo: Path, *argv: str) -> tuple[int, str, str]:
    return run_cli(capsys, "models", "rollout", *argv, "--url", nowhere(), "--repository",
                   str(repo))


@pytest.mark.parametrize("argv, says", [
    (("m", "2", "--steps", "10,5"), "steps must strictly increase"),
    (("m", "2", "--steps", "0,50"), "step 1 sends 0"),
    (("m", "2", "--steps", "50,100"), "below 1 (100%)"),
    (("m", "2", "--steps", "a,b"), "'a' is not a number of percent"),
    (("m", "2", "--step-deadline-s", "0"), "step_deadline_s must be between"),
    (("m",), "name the version to roll out"),
    (("status",), "rollout status needs the model's name"),
    (("m", "2", "--force"), "rollout --force needs --reason"),
])
def test_a_plan_that_cannot_promote_is_refused_before_anything_is_sent(capsys, repo, argv,
                                                                        says) -> None:
    code, _, err = cli(capsys, repo, *argv)
    assert code == 2 and says in err
    assert aliases.read_aliases(repo, "m").rollout is None


def test_start_status_pause_resume_abort(capsys, repo: Path) -> None:
    code, out, _ = cli(capsys, repo, "m", "2", "--steps", "5,25,50", "--windows-per-step", "3",
                       "--reason", "retrained on drift")
    assert code == 0 and "rollout of 2 started: step 1 of 3 at 5%" in out
    state = aliases.read_aliases(repo, "m")
    assert state.canary.weight == 0.05 and state.rollout.plan.windows_per_step == 3

    code, out, _ = cli(capsys, repo, "status", "m")
    assert code == 0
    assert "m: rollout of version 2, running, step 1 of 3 (5% of unversioned requests)" in out
    assert "plan: 5% -> 25% -> 50% then promote; 3 passing window(s) per step" in out
    assert "next: 3 more passing window(s) advances to 25%" in out

    code, out, _ = cli(capsys, repo, "pause", "m", "--reason", "look first")
    assert code == 0 and "paused" in out
    code, out, _ = cli(capsys, repo, "resume", "m", "--reason", "fine")
    assert code == 0 and "resumed" in out
    code, _, err = cli(capsys, repo, "m", "3", "--force", "--reason", "another")
    assert code == 1 and "already has a rollout of version 2" in err
    code, out, _ = cli(capsys, repo, "abort", "m", "--reason", "not today")
    assert code == 0 and "rollout of 2 ended (rollout_aborted); production is 1" in out
    code, out, _ = cli(capsys, repo, "status", "m")
    assert out.strip().endswith("m: no rollout")


def test_an_ungated_version_needs_force_and_a_reason(capsys, tmp_path: Path) -> None:
    repo = validated_repo(tmp_path / "repo")
    manifest = repo / "m" / "3" / "model.yaml"
    manifest.write_text(manifest.read_text().replace("passed: true", "passed: false"))
    code, _, err = cli(capsys, repo, "m", "3")
    assert code == 1 and "validate" in err
    code, out, _ = cli(capsys, repo, "m", "3", "--force", "--reason", "hotfix")
    assert code == 0 and "started" in out


def test_status_says_what_the_last_checks_found_and_what_happens_next() -> None:
    plan = rollout.make_plan((0.1, 0.5), windows_per_step=2, step_deadline_s=300)
    state = rollout.start("2", plan, 1000.0)
    checks = (CheckResult("error_ratio", "pass", 0.0, 0.01, "server errors 0 against 0"),
              CheckResult("latency_p99", "fail", 1.6, 1.25, "p99 16 ms against 10 ms"))
    state = rollout.decide(state, 4, checks, 1100.0).state
    text = "\n".join(status_lines("m", state.to_dict(), now=1100.0))
    assert "last judged window 4:" in text
    assert "fail       latency_p99      1.6 (bound 1.25) p99 16 ms against 10 ms" in text
    assert "1 failed round(s) so far" in text
    assert "2 more passing window(s) advances to 50%" in text and "(in 200 s), it halts" in text
    halted = rollout.tick(state, 1400.0).state
    assert "halted (step 1 (0.1) did not pass within 300 s" in "\n".join(
        status_lines("m", halted.to_dict(), now=1400.0))
    paused = rollout.pause(rollout.start("2", plan, 1000.0))
    assert "nothing until `vigil models rollout resume`" in "\n".join(
        status_lines("m", paused.to_dict()))
    assert model_ops  # the CLI's changes go through model_ops (tested in test_rollout_ops)
