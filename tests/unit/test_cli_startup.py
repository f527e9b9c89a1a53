"""What `vigil` loads before it does anything: building the parser and running a command that
calls no server (`vigil tokens list`) imports neither scipy nor httpx nor Starlette, so such
commands start in a fraction of a second. (monitoring.outbox, whose delivery states the parser
offers as choices, imports no statistics.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import sys
from vigil.tools.cli import main
assert main(["tokens", "list", "--file", sys.argv[1]]) == 0
heavy = ("scipy", "httpx", "starlette")
print("loaded:", sorted(m for m in heavy if m in sys.modules))
"""


def test_building_the_parser_loads_no_heavy_module(tmp_path: Path) -> None:
    """A parser whose choices came from monitoring.outbox at build time cost about 0.7 s on
    every command (argparse formats the choices when an argument is added)."""
    result = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path / "tokens.yaml")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "loaded: []"
