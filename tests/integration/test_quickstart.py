"""The quick start works as written (issue 21): the shell and Python blocks of the docs' Getting
started page, "First requests" (the README's own examples, included by snippet), run against a
real `make serve` and print the answers their comments show.

`make serve` runs as tests/integration/test_lifecycle.py runs it: the Makefile's recipe on its
own local Ray and ports, serving the example models built into a temp dir, without a tokens file
(so it answers its own host without tokens, as on a laptop). The blocks are run as written but
for the server's address (this run's port, not 8000) and `.venv/bin/` (the test's interpreter's
folder). A block fails on a non-zero exit or when an answer its comments show is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docs_blocks import ROOT, Block, blocks, expanded, section
from tests.integration.test_lifecycle import (
    READY_WITHIN_S,
    _config,
    _kill_what_is_left,
    _Run,
    _start_make_serve,
    _tail,
)

BLOCK_TIMEOUT_S = 120
STOP_WITHIN_S = 20


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    from vigil.tools.examples import build_examples

    models = tmp_path_factory.mktemp("quickstart") / "models"
    build_examples(models, progress=False)
    return models


def quick_start_blocks() -> list[Block]:
    page = expanded(ROOT / "docs" / "getting-started.md")
    return [b for b in blocks(section(page, "First requests"))
            if b.lang in ("bash", "python") and not b.runs_make()]


def _as_here(code: str, port: int) -> str:
    bin_dir = Path(sys.executable).parent
    return code.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(".venv/bin/", f"{bin_dir}/")


def _run(block: Block, port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    code = _as_here(block.code, port)
    command = (["bash", "-euo", "pipefail", "-c", code] if block.lang == "bash"
               else [sys.executable, "-c", code])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)


def _stop(run: _Run) -> None:
    """SIGINT to make's group, as Ctrl-C does; whatever is left after STOP_WITHIN_S is killed."""
    if run.make.poll() is None:
        os.killpg(run.make.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_WITHIN_S
    while run.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    _kill_what_is_left(run)


@pytest.mark.slow
@pytest.mark.timeout(2 * READY_WITHIN_S + 4 * BLOCK_TIMEOUT_S + 60)
@pytest.mark.skipif(not Path(sys.executable).with_name("serve").exists(),
                    reason="needs Ray Serve's `serve` beside the test interpreter")
def test_the_quick_start_runs_against_make_serve(models_dir: Path, tmp_path: Path) -> None:
    runnable = quick_start_blocks()
    assert [b.lang for b in runnable] == ["bash", "python"]
    config, port = _config(models_dir, tmp_path)
    log = tmp_path / "make-serve.log"
    run, _ = _start_make_serve(config, port, log)
    try:
        for block in runnable:
            result = _run(block, port, tmp_path)
            shown = f"{block.lang} block:\n{block.code}\nstdout:\n{result.stdout}\n" \
                    f"stderr:\n{result.stderr[-3000:]}"
            assert result.returncode == 0, shown
            for answer in block.expected():
                assert answer in result.stdout, f"missing {answer!r}\n{shown}"
    except BaseException:
        print(_tail(log))
        raise
    finally:
        _stop(run)
