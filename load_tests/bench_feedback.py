"""The join store's cost on the request path: breast_cancer one-row JSON at c=64 through Vigil
(HAProxy, batching on, sampling on), with `feedback.enabled` on (every answer gets an id and its
prediction is recorded, sent and written to the monitor's SQLite join store) and off, in one Ray
cluster, alternating on/off for `--rounds` rounds (a new `args` value: Serve replaces the
replicas). Prints each run, the medians and the ratio on/off, and writes JSON.

    python -m load_tests.bench_feedback [--rounds 3] [--quick] [--out load_tests/results/bench_feedback.json]

Target (issue 20): on / off >= 0.95 in requests per second. Exit status 0 whatever the numbers;
2 when the server could not start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

from load_tests import procs, report, wrk
from load_tests.bench import Bench, Plan, _wait_for_batching
from load_tests.onnx_models import load_repository
from load_tests.payloads import Payloads, Scenario
from load_tests.targets import REPO_ROOT, RayCluster, RayPorts, StartError, vigil_config

PORTS = RayPorts(gcs=6394, dashboard=8270, client_server=6496, dashboard_agent=52469, http=8105)
SCENARIO = Scenario("breast_cancer", "json", 1, 64)
TARGET = 0.95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_feedback",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 s warm-up, 3 s runs")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "load_tests" / "results" / "bench_feedback.json")
    args = parser.parse_args(argv)
    plan = Plan(True, 1.0, 3.0, 0.5, 1.0) if args.quick else Plan(False, 2.0, 8.0, 2.0, 3.0)
    procs.become_subreaper()
    wrk_path = wrk.ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-feedback-"))
    bare = load_repository(REPO_ROOT / "models")
    if SCENARIO.model not in bare:
        print(f"{SCENARIO.model} not found under models/ (build it: vigil examples build)")
        return 2
    bench = Bench(plan, work, wrk_path, Payloads(bare, work / "bodies"))
    cluster = RayCluster("vigil-feedback", PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2)
    runs: dict[bool, list[float]] = {True: [], False: []}
    try:
        cluster.start()
        for i in range(args.rounds):
            for enabled in ((True, False) if i % 2 == 0 else (False, True)):
                bench.log(f"round {i + 1}: feedback.enabled={enabled}")
                cluster.deploy(vigil_config(PORTS, batching_enabled=True,
                                            feedback_enabled=enabled),
                               f"vigil-feedback-{enabled}.yaml")
                cluster.wait_running("vigil")
                _wait_for_batching(cluster, enabled=True, timeout_s=120)
                time.sleep(2.0)  # the replaced replicas gone
                result = bench.measure(f"feedback-{'on' if enabled else 'off'}", PORTS.http,
                                       SCENARIO, round=i + 1)
                if result.get("req_s"):
                    runs[enabled].append(float(result["req_s"]))
    except StartError as exc:
        print(f"Vigil did not start: {exc}", file=sys.stderr)
        return 2
    finally:
        with procs.signals_deferred():
            bench.notes.extend(cluster.stop())
    on = statistics.median(runs[True]) if runs[True] else None
    off = statistics.median(runs[False]) if runs[False] else None
    ratio = on / off if on and off else None
    print(f"\n{'feedback':<10}{'runs (req/s)':<40}{'median':>10}")
    for enabled in (True, False):
        median = statistics.median(runs[enabled]) if runs[enabled] else float("nan")
        shown = ", ".join(f"{r:.0f}" for r in runs[enabled])
        print(f"{'on' if enabled else 'off':<10}{shown:<40}{median:>10.0f}")
    verdict = "n/a" if ratio is None else ("PASS" if ratio >= TARGET else "FAIL")
    print(f"on / off = {ratio if ratio is None else round(ratio, 3)} (target >= {TARGET}): "
          f"{verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps({
        "scenario": SCENARIO.same_load(), "runs": {"on": runs[True], "off": runs[False]},
        "median_on": on, "median_off": off, "ratio": ratio, "target": TARGET,
        "results": bench.results, "notes": bench.notes,
        "machine": report.machine_info(wrk_path, REPO_ROOT),
    }, option=orjson.OPT_INDENT_2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
