"""Dependencies point one way: import-linter's contracts hold, and the monitor really imports
without onnxruntime."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter where importing onnxruntime fails, as on a node without it.
_WITHOUT_ONNXRUNTIME = """
import importlib.abc, sys

class NoOnnxRuntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("onnxruntime is hidden for this test")
        return None

sys.meta_path.insert(0, NoOnnxRuntime())
try:
    import onnxruntime  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not work")
import monitoring.app, monitoring.monitor, monitoring.service, monitoring.profile_builder
import monitoring.report, vigil.messages, vigil.repository, vigil.tokens, vigil.web
assert not any(m == "onnxruntime" or m.startswith("onnxruntime.") for m in sys.modules)
assert "serving" not in sys.modules
print("monitor imports without onnxruntime")
"""


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_monitor_imports_without_onnxruntime():
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_ONNXRUNTIME], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("monitor imports without onnxruntime")
