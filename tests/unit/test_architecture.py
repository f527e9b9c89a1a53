"""The module rules of ARCHITECTURE.md hold: import-linter's contracts in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_opens_with_a_one_line_docstring():
    import ast

    missing = []
    for package in ("serving", "monitoring"):
        for path in sorted((ROOT / package).glob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            if not doc or not doc.splitlines()[0].strip():
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []
