"""Drift evaluation speed: Vigil's window evaluation against Evidently's Report, same data, one run.

    python -m load_tests.bench_drift [--quick] [--out load_tests/results/bench_drift.json]

A window of 10,000 rows x (50 numeric + 3 categorical) features against a 50,000-row reference
(so Evidently picks normed Wasserstein and Jensen-Shannon). Times: the profile build (once per model
version, reported apart), Vigil's evaluate_window (drift + quality over the prebuilt profile; the
first window of a size pays a one-off layout cost, reported apart; median of the rest), and
Evidently's Report(DataDriftPreset). Checks that every column's test and verdict agree, records the
peak memory of one evaluation (tracemalloc) and the profile's size. Prints a table, writes JSON.
Targets: evaluation <= 50 ms and >= 50x faster than the Report. Exit 0 whatever the numbers; 3 when
a verdict disagrees with Evidently.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.drift import compute_drift, evaluate_window
from monitoring.profile import Profile, build_profile
from monitoring.quality import compute_quality
from monitoring.settings import MonitorSettings

REFERENCE_ROWS = 50_000
WINDOW_ROWS = 10_000
NUMERIC = 50
CATEGORICAL = 3
TARGET_SECONDS = 0.050
TARGET_RATIO = 50.0
DEFAULT_OUT = Path("load_tests/results/bench_drift.json")
EVIDENTLY_METHODS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "PSI": "psi",
}


def make_data(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and window: mixed distributions; 10 numeric and 1 categorical feature shifted."""
    rng = np.random.default_rng(seed)

    def numeric(i: int, n: int, shifted: bool) -> np.ndarray:
        shift = 0.3 if shifted and i < 10 else 0.0
        kind = i % 4
        if kind == 0:
            x = rng.normal(loc=shift, size=n)
        elif kind == 1:
            x = rng.lognormal(mean=shift, sigma=0.5, size=n)
        elif kind == 2:
            x = rng.uniform(shift, 1 + shift, size=n)
        else:
            x = rng.gamma(2.0 + shift, size=n)
        return x.astype(np.float32 if i % 2 else np.float64)

    def categorical(j: int, n: int, shifted: bool) -> np.ndarray:
        levels = np.array([f"level_{k}" for k in range(4 + 4 * j)], dtype=object)
        p = np.linspace(1, 2, levels.size)
        if shifted and j == 0:
            p = p[::-1]
        return rng.choice(levels, n, p=p / p.sum())

    def frame(n: int, shifted: bool) -> pd.DataFrame:
        columns: dict[str, np.ndarray] = {f"num_{i:02d}": numeric(i, n, shifted) for i in range(NUMERIC)}
        columns.update({f"cat_{j}": categorical(j, n, shifted) for j in range(CATEGORICAL)})
        return pd.DataFrame(columns)

    return frame(REFERENCE_ROWS, False), frame(WINDOW_ROWS, True)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def evidently_report(reference: pd.DataFrame, current: pd.DataFrame, profile: Profile) -> dict:
    """Evidently's per-column verdicts: {column: (method, score, drifted)} and the share."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c.name for c in profile.columns if c.kind == "numeric"],
        categorical_columns=[c.name for c in profile.columns if c.kind == "categorical"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    result = snapshot.dict()
    columns: dict[str, list] = {}
    share = None
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            method = EVIDENTLY_METHODS.get(config["method"], config["method"])
            columns[config["column"]] = [method, float(metric["value"]), None]
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    for test in result["tests"]:
        if test["name"].startswith("Value Drift for column "):
            name = test["name"].removeprefix("Value Drift for column ")
            columns[name][2] = str(test["status"]).endswith("FAIL")
    return {"columns": columns, "share": share}


def compare(vigil: Any, evidently: dict) -> dict[str, Any]:
    disagreements = []
    worst = 0.0
    for column in vigil.features:
        method, score, drifted = evidently["columns"][column.name]
        if (column.method, column.drifted) != (method, drifted):
            disagreements.append(
                {"column": column.name, "vigil": [column.method, column.score, column.drifted],
                 "evidently": [method, score, drifted]}
            )
        worst = max(worst, abs(column.score - score) / max(abs(score), 1e-12))
    return {
        "columns": len(vigil.features),
        "disagreements": disagreements,
        "agree": not disagreements and math.isclose(vigil.share_drifted, evidently["share"]),
        "max_relative_score_difference": worst,
        "vigil_share": vigil.share_drifted,
        "evidently_share": evidently["share"],
        "drifted_columns": vigil.drifted,
    }


def machine() -> dict[str, Any]:
    versions = {}
    for package in ("numpy", "scipy", "pandas", "evidently"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "versions": versions,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'what':58s} {'median s':>10s} {'ratio':>10s}", "-" * 80]
    for row in rows:
        ratio = "" if row.get("ratio") is None else f"{row['ratio']:.1f}x"
        lines.append(f"{row['what']:58s} {row['median_s']:10.4f} {ratio:>10s}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (same data sizes)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    args = parser.parse_args(argv)
    vigil_repeats, evidently_repeats, build_repeats = (5, 1, 1) if args.quick else (21, 3, 3)

    reference, current = make_data()
    window = {name: current[name].to_numpy() for name in current.columns}
    settings = MonitorSettings()

    build_times, profile = timed(lambda: build_profile(reference), build_repeats)
    with tempfile.TemporaryDirectory() as tmp:
        profile.save(tmp)
        on_disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
        profile = Profile.load(tmp)  # evaluate what a deployment would load

    cold_times, _ = timed(lambda: evaluate_window(profile, window, settings), 1)
    eval_times, result = timed(lambda: evaluate_window(profile, window, settings), vigil_repeats)
    drift_times, _ = timed(lambda: compute_drift(profile, window, settings), vigil_repeats)
    quality_times, _ = timed(lambda: compute_quality(profile, window), vigil_repeats)
    odd = {name: values[:-1] for name, values in window.items()}  # a new size: nothing cached
    new_size_times, _ = timed(lambda: evaluate_window(profile, odd, settings), 1)
    peak_warm = peak_bytes(lambda: evaluate_window(profile, window, settings))
    fresh = Profile.load  # a fresh profile object: its first evaluation pays the layout again
    with tempfile.TemporaryDirectory() as tmp:
        profile.save(tmp)
        again = fresh(tmp)
        peak_cold = peak_bytes(lambda: evaluate_window(again, window, settings))

    evidently_times, evidently = timed(
        lambda: evidently_report(reference, current, profile), evidently_repeats
    )
    agreement = compare(result.drift, evidently)

    evidently_s = statistics.median(evidently_times)
    eval_s = statistics.median(eval_times)

    def row(what: str, times: list[float], ratio: bool = True) -> dict[str, Any]:
        median = statistics.median(times)
        return {
            "what": what, "median_s": median, "runs": len(times), "min_s": min(times),
            "ratio": evidently_s / median if ratio else None,
        }

    rows = [
        row("evidently Report(DataDriftPreset)", evidently_times),
        row("vigil evaluate_window (drift + quality)", eval_times),
        row("vigil compute_drift only", drift_times),
        row("vigil compute_quality only", quality_times),
        row("vigil evaluate_window, first window of a profile", cold_times),
        row("vigil evaluate_window, first window of a new size", new_size_times),
        row(f"vigil build_profile ({REFERENCE_ROWS:,} rows, once/version)", build_times, False),
    ]
    targets = {
        "evaluation_s": {"target": TARGET_SECONDS, "actual": eval_s, "met": eval_s <= TARGET_SECONDS},
        "ratio_to_evidently": {
            "target": TARGET_RATIO, "actual": evidently_s / eval_s,
            "met": evidently_s / eval_s >= TARGET_RATIO,
        },
    }
    report = {
        "shape": {"reference_rows": REFERENCE_ROWS, "window_rows": WINDOW_ROWS,
                  "numeric": NUMERIC, "categorical": CATEGORICAL},
        "quick": args.quick,
        "rows": rows,
        "targets": targets,
        "agreement": agreement,
        "memory": {
            "evaluation_peak_bytes": peak_warm,
            "first_evaluation_peak_bytes": peak_cold,
            "profile_array_bytes": profile.nbytes,
            "profile_file_bytes": on_disk,
            "process_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        "methods": sorted({c.method for c in result.drift.features}),
        "machine": machine(),
    }

    print(table(rows))
    print()
    for name, target in targets.items():
        print(f"target {name}: {target['actual']:.4g} vs {target['target']:.4g} -> "
              f"{'met' if target['met'] else 'MISSED'}")
    print(f"verdicts agree with Evidently on {agreement['columns']} columns: {agreement['agree']} "
          f"(max relative score difference {agreement['max_relative_score_difference']:.2e}, "
          f"{agreement['drifted_columns']} drifted)")
    memory = report["memory"]
    print(f"peak memory of one evaluation {memory['evaluation_peak_bytes'] / 2**20:.1f} MiB "
          f"(first of a profile {memory['first_evaluation_peak_bytes'] / 2**20:.1f} MiB); "
          f"profile {memory['profile_file_bytes'] / 2**20:.1f} MiB on disk")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0 if agreement["agree"] else 3


if __name__ == "__main__":
    sys.exit(main())
