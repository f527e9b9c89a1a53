"""Idle footprint: what each process of a running server costs while no request arrives, Vigil as
shipped (configs/serve.yaml, HAProxy ingress) beside plain Ray Serve (Ray's default proxy, the
same models, no Vigil code).

    python -m load_tests.bench_idle [--settle 30] [--seconds 60]

Each cluster is started on its own ports, a few requests warm it up (so every lazily started
loop runs: the sample flush, the monitor's windows), then nothing is sent for --settle seconds and
CPU time (utime + stime from /proc, every thread) and resident memory of every process of the
cluster are measured over --seconds. Processes are grouped by role (their title: the Serve
replica of which deployment, the controller, HAProxy, raylet, GCS...). CPU is in percent of one
core. Vigil's own actors are its model server replicas, its monitor and the alias board; the
rest is Ray's. Writes load_tests/results/idle.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from load_tests import procs
from load_tests.targets import (
    REPO_ROOT,
    RayCluster,
    RayPorts,
    http_call,
    plain_serve_config,
    vigil_config,
)

PLAIN_PORTS = RayPorts(gcs=6394, dashboard=8270, client_server=6496, dashboard_agent=52469,
                       http=8105)
VIGIL_PORTS = RayPorts(gcs=6395, dashboard=8271, client_server=6497, dashboard_agent=52470,
                       http=8106)
VIGIL_ROLES = ("ModelServer replica", "Monitor replica", "alias board")
ROW = [0.5] * 30
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                               "data": ROW}]}).encode()
# Process title (cmdline) -> role; the first match wins.
ROLES = (
    (r"ServeReplica:vigil:ModelServer", "ModelServer replica"),
    (r"ServeReplica:monitor:Monitor", "Monitor replica"),
    (r"ServeReplica:plain", "plain replica"),
    (r"_Board|AliasBoard", "alias board"),
    (r"ServeController", "Serve controller"),
    (r"HAProxyManager", "HAProxy manager (Ray)"),
    (r"ProxyActor", "Serve HTTP proxy (Ray)"),
    (r"/haproxy ", "haproxy"),
    (r"raylet", "raylet"),
    (r"gcs_server", "GCS"),
    (r"dashboard/agent|dashboard_agent|agent\.py", "dashboard agent"),
    (r"dashboard\.py|dashboard/dashboard", "dashboard"),
    (r"log_monitor", "log monitor"),
    (r"runtime_env", "runtime env agent"),
    (r"monitor\.py", "autoscaler monitor"),
    (r"ray::IDLE|default_worker", "idle Ray worker"),
)


def role_of(cmdline: str) -> str:
    for pattern, role in ROLES:
        if re.search(pattern, cmdline):
            return role
    return "other: " + cmdline[:60]


def measure(cluster: RayCluster, seconds: float) -> dict[str, dict[str, float]]:
    """role -> CPU % of one core over `seconds`, resident MiB, process count."""
    pids = cluster.cluster_pids()
    start = {pid: procs.cpu_ticks(pid) for pid in pids}
    time.sleep(seconds)
    roles: dict[str, dict[str, float]] = {}
    for pid in pids:
        before, after = start.get(pid), procs.cpu_ticks(pid)
        if before is None or after is None:
            continue
        memory = procs.memory_kib(pid)
        row = roles.setdefault(role_of(procs.cmdline(pid)),
                               {"cpu_pct": 0.0, "rss_mib": 0.0, "processes": 0})
        row["cpu_pct"] += 100.0 * (after - before) / procs.CLOCK_TICKS / seconds
        row["rss_mib"] += memory.get("VmRSS", 0) / 1024
        row["processes"] += 1
    return {k: {m: round(v, 2) for m, v in r.items()} for k, r in sorted(roles.items())}


def warm(port: int, paths: list[str]) -> None:
    for _ in range(20):
        for path in paths:
            http_call(port, "POST", path, BODY, timeout_s=10)


def wait_for_quiet(limit: float = 1.5, timeout_s: float = 600.0) -> None:
    """Start a cluster only on a quiet machine: Ray's start times out when the cores are busy."""
    deadline = time.monotonic() + timeout_s
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def run_one(label: str, ports: RayPorts, ha_proxy: bool, config: dict[str, Any], app: str,
            paths: list[str], settle_s: float, seconds: float) -> dict[str, Any]:
    wait_for_quiet()
    cluster = RayCluster(label, ports, ha_proxy=ha_proxy, num_cpus=os.cpu_count() or 2)
    try:
        cluster.start()
        cluster.deploy(config, f"{label}.yaml")
        cluster.wait_running(app)
        if app == "vigil":
            cluster.wait_running("monitor")
        warm(ports.http, paths)
        print(f"{label}: up and warmed; idle for {settle_s:.0f} s, then measuring {seconds:.0f} s",
              flush=True)
        time.sleep(settle_s)
        result = measure(cluster, seconds)
        print(table({label: result}), flush=True)
        return result
    finally:
        with procs.signals_deferred():
            cluster.stop()


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    roles = sorted({r for by_role in results.values() for r in by_role})
    labels = list(results)
    lines = ["| process | " + " | ".join(f"{lb} CPU % of a core | {lb} RSS MiB" for lb in labels)
             + " |", "|---|" + "---|---|" * len(labels)]
    for role in roles:
        cells = []
        for lb in labels:
            row = results[lb].get(role)
            cells += ["-", "-"] if row is None else [f"{row['cpu_pct']:.2f}",
                                                     f"{row['rss_mib']:.0f}"]
        mark = " (Vigil)" if role in VIGIL_ROLES else ""
        lines.append(f"| {role}{mark} | " + " | ".join(cells) + " |")
    totals = []
    for lb in labels:
        totals += [f"{sum(r['cpu_pct'] for r in results[lb].values()):.2f}",
                   f"{sum(r['rss_mib'] for r in results[lb].values()):.0f}"]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_idle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "load_tests/results/idle.json")
    args = parser.parse_args(argv)
    procs.become_subreaper()
    repository = REPO_ROOT / "models"
    results = {
        "plain Ray Serve": run_one(
            "plain", PLAIN_PORTS, False, plain_serve_config(PLAIN_PORTS, repository, 2), "plain",
            ["/v2/models/breast_cancer/infer"], args.settle, args.seconds),
        "Vigil": run_one(
            "vigil", VIGIL_PORTS, True, vigil_config(VIGIL_PORTS, batching_enabled=True), "vigil",
            ["/v2/models/breast_cancer/infer"], args.settle, args.seconds),
    }
    print(table(results))
    vigil = results["Vigil"]
    busiest = max((vigil[r]["cpu_pct"] / max(vigil[r]["processes"], 1), r)
                  for r in VIGIL_ROLES if r in vigil)
    print(f"busiest Vigil actor at idle: {busiest[1]} at {busiest[0]:.2f}% of a core per process "
          f"(target: under 2%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settle_s": args.settle, "seconds": args.seconds,
                                    "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
