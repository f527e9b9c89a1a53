"""Dependencies point one way: import-linter's contracts hold, every module of vigil/ sits in a
floor they name, vigil.core stands on numpy, yaml and pydantic alone, nothing runs on import, and
the monitor and `vigil tokens` really run without onnxruntime."""

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

from tests.without_onnxruntime import run_without_onnxruntime

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter where importing onnxruntime fails, as on a node without it.
_WITHOUT_ONNXRUNTIME = """
try:
    import onnxruntime  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not work")
import monitoring.app, monitoring.monitor, monitoring.service, monitoring.profile_builder
import monitoring.report, vigil.core.messages, vigil.core.repository, vigil.core.tokens, vigil.adapters.web
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
    result = run_without_onnxruntime(_WITHOUT_ONNXRUNTIME)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("monitor imports without onnxruntime")


FLOORS = ("vigil.core", "vigil.adapters", "vigil.tools")
# What vigil.core may stand on besides the standard library.
CORE_DEPENDENCIES = {"numpy", "yaml", "pydantic", "pydantic_settings"}


def _modules(package: str) -> list[str]:
    root = importlib.import_module(package)
    return [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]


def test_every_module_of_vigil_sits_in_a_floor() -> None:
    """The floors contract is written by package: a module of vigil/ outside the three would be
    checked by no contract, so there may be none."""
    stray = [m for m in _modules("vigil") if not m.startswith(FLOORS)]
    assert stray == [], f"put these in vigil.core, vigil.adapters or vigil.tools: {stray}"
    assert {m.rsplit(".", 1)[0] for m in _modules("vigil") if m.count(".") == 2} <= set(FLOORS)


def test_the_core_stands_on_numpy_yaml_and_pydantic_alone() -> None:
    import grimp

    graph = grimp.build_graph("vigil", include_external_packages=True)
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    used = {
        imported.split(".")[0]
        for module in graph.modules if module.startswith("vigil.core")
        for imported in graph.find_modules_directly_imported_by(module)
        if not imported.startswith("vigil")
    }
    assert used - stdlib <= CORE_DEPENDENCIES, used - stdlib - CORE_DEPENDENCIES


_IMPORT_SIDE_EFFECTS = """
import importlib, pkgutil, sys, threading
before = set(threading.enumerate())
import serving, monitoring, vigil
for package in (serving, monitoring, vigil):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.startswith("vigil.tools.dashboards"):
            continue  # needs the observe extra
        importlib.import_module(info.name)
started = set(threading.enumerate()) - before
assert not started, started
print("no threads started on import")
"""


def test_importing_any_module_starts_nothing() -> None:
    """Nothing is imported for its side effects: every module imports in a fresh interpreter
    without starting a thread (a Ray actor, a flush loop, a session pool)."""
    result = subprocess.run([sys.executable, "-c", _IMPORT_SIDE_EFFECTS], cwd=ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("no threads started on import")


_TOKENS_WITHOUT_ONNXRUNTIME = """
from vigil.tools.cli import main
assert main(["tokens", "create", "ci", "--scopes", "metrics", "--models-dir", sys.argv[1]]) == 0
assert main(["tokens", "list", "--models-dir", sys.argv[1]]) == 0
assert not any(m.split(".")[0] in ("onnxruntime", "serving", "ray") for m in sys.modules), sorted(
    m for m in sys.modules if m.split(".")[0] in ("onnxruntime", "serving", "ray"))
print("vigil tokens runs without onnxruntime")
"""


def test_vigil_tokens_runs_on_a_host_without_onnxruntime(tmp_path: Path) -> None:
    """`vigil tokens` touches no model: it imports neither serving nor Ray nor onnxruntime (it
    once imported serving.settings, whose package refused to import without onnxruntime)."""
    result = run_without_onnxruntime(_TOKENS_WITHOUT_ONNXRUNTIME, str(tmp_path / "models"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("vigil tokens runs without onnxruntime")
    assert (tmp_path / "tokens.yaml").is_file()
