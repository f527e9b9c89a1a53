"""`make demo`'s loop as CI runs it (`--short`: 10-s windows, one clean window, one rollout
step), on a private Ray cluster of its own, as `make demo` starts it: drift is detected, the
receiver retrains and publishes, the gate passes, the rollout promotes, drift settles; and, with
a worse candidate forced past the gate, the rollout rolls it back. No request fails in either.
Each run exits 0 only if every step happened within its bound (load_tests/demo_timeline.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 280  # < pytest-timeout (300 s); a short run takes about two minutes here

GOOD = ["drift", "published", "gated", "rollout", "promoted", "settled"]
BAD = ["drift", "published", "forced", "rollout", "rolled_back"]


@pytest.mark.slow
@pytest.mark.parametrize("bad", [False, True], ids=["good candidate", "worse candidate"])
def test_the_loop_closes_itself(bad: bool, tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "load_tests.demo", "--short", "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k not in ("DEMO_BAD", "RAY_ADDRESS")}
    try:
        done = subprocess.run([*argv, *(["--bad"] if bad else [])], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=LIMIT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the demo ran past {LIMIT_S} s; its output: {exc.stdout!r:.4000}")
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-3000:]}"
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert timeline["passed"] and timeline["failed_requests"] == 0
    assert timeline["requests"] > 1000  # traffic ran throughout
    reached = timeline["steps"]
    assert list(reached) == (BAD if bad else GOOD)
    # each reached, in at most its bound after the one before (the gate's verdict is read from
    # the receiver's event, so it may be seen a moment after the rollout it allowed)
    assert all(reached[step] is not None for step in reached), reached
    assert (tmp_path / "timeline.png").stat().st_size > 0
    print(done.stdout[-2500:])  # the timeline and summary, with `pytest -s`
