"""Python run in a fresh interpreter where importing onnxruntime fails, as on a node without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, sys

class NoOnnxRuntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("onnxruntime is hidden for this test")
        return None

sys.meta_path.insert(0, NoOnnxRuntime())
"""


def run_without_onnxruntime(body: str, *args: str, timeout: float = 120
                            ) -> subprocess.CompletedProcess[str]:
    """`body` after BLOCKER, as `python -c` in the repository root with `args` as sys.argv[1:]."""
    return subprocess.run([sys.executable, "-c", BLOCKER + body, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
