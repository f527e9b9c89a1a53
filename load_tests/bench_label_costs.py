"""What labels cost the monitor, in one process (no Ray): the window thread's time per closed
window with the label join on (its window listener, the settled window's quality from labels and
the scrape's quality of the latest window) against off, alternating on the same batches; and the
join store at `feedback.max_pending` entries: its file, the process's RSS, and what recording a
batch costs when the store is full (every new prediction evicts the oldest).

    python -m load_tests.bench_label_costs [--windows 40] [--max-pending 1000000]

breast_cancer's example version (vigil examples build into a temp dir), windows of 1,000
sampled rows, each request of one row recorded and labelled. Prints the medians, the ratios and
writes JSON. Exit 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from monitoring.label_join import LabelJoin
from monitoring.label_store import LabelStore
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from vigil.core.messages import SampleMessage
from vigil.core.prediction_messages import PredictionMessage

ROWS = 1000  # sampled rows per window, one per request
MODEL, VERSION = "breast_cancer", "1"
DEFAULT_OUT = Path("load_tests/results/bench_label_costs.json")


def build_repository(work: Path) -> Path:
    repository = work / "models"
    subprocess.run([str(Path(sys.executable).with_name("vigil")), "examples", "build",
                    "--models-dir", str(repository), "--no-progress"], check=True,
                   capture_output=True, timeout=300)
    return repository


class Batches:
    """The same window's samples and prediction records, again and again, at later times."""

    def __init__(self, repository: Path) -> None:
        frame = pd.read_parquet(repository / MODEL / VERSION / "reference.parquet")
        x = frame.drop(columns=["target"]).to_numpy(np.float32)
        self.x = x[np.random.default_rng(3).integers(0, len(x), ROWS)]
        self.labels = np.ones(ROWS, np.int64)
        p1 = np.random.default_rng(4).random(ROWS).astype(np.float32)
        self.probabilities = np.stack([1 - p1, p1], axis=1)
        self.served = 0

    def samples(self, at: float) -> SampleMessage:
        outputs = {"label": self.labels, "probabilities": self.probabilities}
        return SampleMessage(MODEL, VERSION, {"input": self.x}, outputs,
                             np.full(ROWS, 0.002), np.full(ROWS, 200, np.int16))

    def predictions(self, at: float, count: int = ROWS) -> PredictionMessage:
        ids = tuple(f"r{self.served + i}" for i in range(count))
        self.served += count
        outputs = {"label": self.labels[:count], "probabilities": self.probabilities[:count]}
        return PredictionMessage(MODEL, VERSION, ids, np.full(count, at),
                                 np.ones(count, np.int64), outputs)


def window_times(repository: Path, work: Path, windows: int) -> dict[str, list[float]]:
    """Seconds per closed window on the monitor's window thread, quality on and off."""
    settings = MonitorSettings(window={"rows": ROWS, "seconds": None})
    times: dict[str, list[float]] = {"on": [], "off": []}
    services = {
        "off": MonitorService(MonitorAppSettings(model_repository=repository), settings, 0.0),
        "on": MonitorService(MonitorAppSettings(model_repository=repository), settings, 0.0),
    }
    join = LabelJoin(LabelStore(work / "labels.sqlite", 1e9, 10_000_000), services["on"], 0.0)
    batches = Batches(repository)
    for i in range(windows):
        at = 10.0 * (i + 1)
        for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
            if mode == "on":  # recorded and labelled before the window closes
                message = batches.predictions(at)
                join.record([message], at)
                join.label(MODEL, [(r, [1]) for r in message.ids], False, at)
            started = time.perf_counter()
            closed = services[mode].ingest([batches.samples(at)], now=at + 1.0)
            if mode == "on":
                join.settle(at + 1.0)  # settle_s 0: the window is judged on its labels at once
                join.latest(at + 1.0)  # the scrape's quality of the latest window
            elapsed = time.perf_counter() - started
            assert closed, "a window of ROWS rows closes on its rows"
            if i >= 2:  # warm-up
                times[mode].append(elapsed)
    join.store.close()
    return times


def full_store(work: Path, max_pending: int, repository: Path) -> dict[str, float]:
    """Fill a store to `max_pending`, then time batches that each evict as many."""
    process = psutil.Process()
    rss_before = process.memory_info().rss
    store = LabelStore(work / "full.sqlite", 1e9, max_pending)
    service = MonitorService(MonitorAppSettings(model_repository=repository),
                             MonitorSettings(window={"rows": ROWS, "seconds": None}), 0.0)
    join = LabelJoin(store, service, 0.0)
    batches = Batches(repository)
    started = time.perf_counter()
    while store.size < max_pending:
        join.record([batches.predictions(1.0, min(ROWS, max_pending - store.size))], 1.0)
    fill_s = time.perf_counter() - started
    full = []
    for _ in range(20):
        t0 = time.perf_counter()
        join.record([batches.predictions(2.0)], 2.0)
        full.append(time.perf_counter() - t0)
    size = sum(f.stat().st_size for f in work.glob("full.sqlite*"))
    doc = {"entries": store.size, "file_mib": size / 2**20,
           "rss_growth_mib": (process.memory_info().rss - rss_before) / 2**20,
           "fill_s": fill_s, "record_1000_at_bound_ms": statistics.median(full) * 1000,
           "evicted_bound": float(sum(v for (m, r), v in store.evicted.items() if r == "bound"))}
    store.close()
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_label_costs",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--max-pending", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vigil-label-costs-"))
    try:
        repository = build_repository(work)
        times = window_times(repository, work, args.windows)
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        print(f"window thread per closed window: quality on {on * 1000:.1f} ms, off "
              f"{off * 1000:.1f} ms, ratio {on / off:.2f} (medians of {len(times['on'])})")
        store = full_store(work, args.max_pending, repository)
        print(f"join store at max_pending {store['entries']:,}: file {store['file_mib']:.1f} "
              f"MiB, RSS growth {store['rss_growth_mib']:.1f} MiB, filled in "
              f"{store['fill_s']:.0f} s; recording 1,000 predictions when full "
              f"{store['record_1000_at_bound_ms']:.1f} ms (as many evicted)")
        result = {"window_ms": {"on": on * 1000, "off": off * 1000}, "ratio": on / off,
                  "store": store, "pid": os.getpid()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
