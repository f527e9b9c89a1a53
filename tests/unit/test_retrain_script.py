"""examples/retrain.py, the one-shot retraining that .github/workflows/retrain.yml runs, as a real
subprocess against the stand-in for the monitor's rows endpoint of test_receiver (uvicorn on
127.0.0.1): the outcome as JSON on stdout, the next version published, production left where it
was; exit 1 with the reason on stderr and nothing published when it cannot retrain."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.test_receiver import TOKEN, WINDOW_ROWS, StandInMonitorRows
from vigil.core import audit
from vigil.core.aliases import read_aliases
from vigil.core.repository import read_manifest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(example_root: Path, tmp_path: Path) -> Path:
    """A repository of its own (retraining adds versions to it): breast_cancer/1 only."""
    root = tmp_path / "models"
    shutil.copytree(example_root / "breast_cancer" / "1", root / "breast_cancer" / "1")
    return root


@pytest.fixture
def monitor(models: Path) -> Iterator[StandInMonitorRows]:
    stand_in = StandInMonitorRows(models / "breast_cancer" / "1")
    yield stand_in
    stand_in.close()


def retrain(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """python -m examples.retrain ARGS from the project root, the token in VIGIL_TOKEN."""
    env = {k: v for k, v in os.environ.items() if k != "VIGIL_TOKEN"}
    if token is not None:
        env["VIGIL_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "examples.retrain", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def _versions(models: Path) -> list[str]:
    """The version folders, a claimed but unpublished one or a staging folder included."""
    return sorted(p.name for p in (models / "breast_cancer").iterdir() if p.is_dir())


def test_retrains_the_drifted_version_into_the_next_one(models, monitor):
    done = retrain("--models-dir", str(models), "--monitor-url", monitor.url, "--version", "1",
                   "--event-id", "evt-42", "--actor", "github:retrain#7")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["version"] == "2"
    assert outcome["window_rows"] == WINDOW_ROWS and outcome["window_rows_dropped"] == 0
    assert monitor.calls and monitor.calls[0].endswith("/v1/models/breast_cancer/rows?version=1")
    assert _versions(models) == ["1", "2"]
    manifest = read_manifest(models / "breast_cancer" / "2")
    assert manifest.metadata["trained_from_event"] == "evt-42"
    assert manifest.metadata["parent_version"] == "1"
    # The new version takes no traffic: production stays on 1 until the gate and a promote.
    assert read_aliases(models, "breast_cancer").production == "1"
    # Published through vigil.tools.publishing: audited, with the event in the actor.
    [entry] = [e for e in audit.entries(models, "breast_cancer") if e["action"] == "publish"]
    assert (entry["actor"], entry["to_version"]) == ("github:retrain#7:evt-42", "2")
    assert manifest.lineage["published_by"] == "github:retrain#7:evt-42"


def test_an_unknown_version_exits_1_and_publishes_nothing(models, monitor):
    done = retrain("--models-dir", str(models), "--monitor-url", monitor.url, "--version", "7")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "breast_cancer/7" in done.stderr
    assert monitor.calls == []
    assert _versions(models) == ["1"]


def test_the_token_comes_from_vigil_token(models, monitor):
    """Without VIGIL_TOKEN the monitor refuses the rows (401): exit 1, nothing published."""
    done = retrain("--models-dir", str(models), "--monitor-url", monitor.url, "--version", "1",
                   token=None)
    assert done.returncode == 1 and done.stdout == ""
    assert "answered 401" in done.stderr
    assert len(monitor.calls) == 1
    assert _versions(models) == ["1"]


def test_an_unreachable_monitor_exits_1_and_publishes_nothing(models):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = retrain("--models-dir", str(models), "--monitor-url",
                   f"http://127.0.0.1:{port}/monitor", "--version", "1")
    assert done.returncode == 1 and done.stdout == ""
    assert "cannot be reached" in done.stderr
    assert _versions(models) == ["1"]
