"""What a running rollout costs the monitor's window thread: the time to take one sample batch
that closes a window, with and without a rollout judging the candidate, in one process.

    python -m load_tests.bench_rollout_analysis [--windows 200]

Two MonitorService instances over two copies of one repository (breast_cancer/1 production, /2
a copy), fed the same batches in turn: one with a rollout of 2 that does not end within the run
(100 windows per step, a week's deadline), whose every candidate window is judged against
production's and recorded (aliases and audit written, as in production), and one with no rollout
(2 a plain canary). Each batch closes one window. Prints the median and p90 per closed window of
each and their ratio; writes load_tests/results/rollout_analysis.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from load_tests import report
from load_tests.versions_server import build_models, first_version, publish_copy
from monitoring.outbox import Outbox
from monitoring.rollouts import RolloutDriver
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from vigil.core import model_ops
from vigil.core.messages import SampleMessage
from vigil.core.rollout import make_plan

MODEL = "breast_cancer"
ROWS = 200  # rows per batch: one window each
DEFAULT_OUT = Path("load_tests/results/rollout_analysis.json")


def repository(base: Path, name: str, rollout: bool) -> Path:
    root = base / name
    shutil.copytree(base / "models", root)
    model_ops.apply(root, MODEL, "promote", actor="bench", version="1", force=True, reason="b")
    if rollout:
        plan = make_plan((0.1, 0.5), windows_per_step=100, max_failed_checks=100,
                         step_deadline_s=7 * 24 * 3600)
        model_ops.apply(root, MODEL, "rollout", actor="bench", version="2", force=True,
                        reason="bench", plan=plan, now=time.time())
    else:
        model_ops.apply(root, MODEL, "canary", actor="bench", version="2", weight=0.1,
                        force=True, reason="bench")
    return root


def service(root: Path, rollout: bool) -> MonitorService:
    settings = MonitorSettings(window={"rows": ROWS, "seconds": None},
                               rollouts={"min_requests": 10, "prediction_drift": False})
    driver = None
    if rollout:
        driver = RolloutDriver(root, Outbox(root.parent / f"{root.name}-outbox.sqlite"),
                               "http://bench", lambda kind: (), lambda model: None,
                               settings.rollouts, settle_s=0.0)
    return MonitorService(MonitorAppSettings(model_repository=root), settings, time.time(),
                          rollouts=driver)


def batch(x: np.ndarray, version: str, rng: np.random.Generator) -> SampleMessage:
    rows = x[rng.integers(0, len(x), ROWS)]
    return SampleMessage(
        MODEL, version, {"input": rows},
        {"label": np.ones(ROWS, np.int64), "probabilities": np.full((ROWS, 2), 0.5, np.float32)},
        np.full(ROWS // 4, 0.002), np.full(ROWS // 4, 200, np.int16), 0, 0)


def run(windows: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix="vigil-rollout-analysis-"))
    try:
        models = build_models(base)
        shutil.move(str(models), base / "models")
        publish_copy(base / "models", first_version(base / "models", MODEL), "2")
        services = {"no rollout": service(repository(base, "plain", False), False),
                    "rollout": service(repository(base, "rollout", True), True)}
        x = pd.read_parquet(base / "models" / MODEL / "1" / "reference.parquet").drop(
            columns=["target"]).to_numpy(np.float32)
        rng = np.random.default_rng(3)
        seconds: dict[str, list[float]] = {name: [] for name in services}
        for i in range(windows):
            version = "1" if i % 2 == 0 else "2"
            message = batch(x, version, rng)
            for name, svc in services.items():  # the same batch to each, in turn
                started = time.perf_counter()
                closed = svc.ingest([message], time.time())
                seconds[name].append(time.perf_counter() - started)
                assert len(closed) == 1, closed
        judged = services["rollout"].rollouts
        assert judged is not None
        return summarize(seconds, sum(judged.checks_total.values()))
    finally:
        shutil.rmtree(base, ignore_errors=True)


def summarize(seconds: dict[str, list[float]], checks: int) -> dict:
    rows = {}
    for name, values in seconds.items():
        ordered = sorted(values[10:])  # the first windows warm caches up
        rows[name] = {"median_ms": round(statistics.median(ordered) * 1000, 3),
                      "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
                      "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 3),
                      "windows": len(ordered)}
    ratio = rows["rollout"]["median_ms"] / rows["no rollout"]["median_ms"]
    mean_ratio = rows["rollout"]["mean_ms"] / rows["no rollout"]["mean_ms"]
    return {"per_window": rows, "median_ratio": round(ratio, 3),
            "mean_ratio": round(mean_ratio, 3), "rollout_checks": checks}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_rollout_analysis",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=180, help="at most 200: a step needs 100 windows")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = time.monotonic()
    doc = run(args.windows)
    print(f"{'':<12} {'median ms':>10} {'mean ms':>8} {'p90 ms':>8}  per closed window")
    for name, row in doc["per_window"].items():
        print(f"{name:<12} {row['median_ms']:>10.3f} {row['mean_ms']:>8.3f} {row['p90_ms']:>8.3f}")
    print(f"ratio rollout / no rollout: medians {doc['median_ratio']:.2f}, means "
          f"{doc['mean_ratio']:.2f}; {doc['rollout_checks']} checks recorded")
    doc["elapsed_s"] = time.monotonic() - started
    report.finish(args.out, doc, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
