"""Whether 16 MiB invalid bodies stall Vigil's replicas: one-row latency without and with them, how
fast each is refused, and the replicas' RSS, in one bounded run on loopback.

    python -m load_tests.bench_stall [--quick] [--out load_tests/results/bench_stall.json]

Target (hardening issue): while 4 clients send 16 MiB invalid bodies in a loop, one-row requests
at concurrency 8 keep p99 under 100 ms, and each invalid body is refused (400 or 413 with a JSON
{"error"}) within 0.5 s. Order: example models built into a temp dir; a private Ray cluster with
HAProxy on its own ports, configs/serve.yaml deployed; idle RSS; a warm-up; phase 1 (baseline:
one-row breast_cancer JSON at c=8, alone); phase 2 (attack: the same load while 4 threads send
the invalid kinds round-robin); the cluster stopped. The one-row load runs in a child process
(8 threads, keep-alive http.client) so that the senders' threads do not share its GIL; replica
RSS is sampled from /proc every 0.2 s throughout, and each phase records the cores used by the
replicas, HAProxy, the rest of Ray, both clients and everyone else on this shared machine. Exit
status 0 whatever the numbers; 2 when the cluster could not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from load_tests import procs, report
from load_tests.onnx_models import load_repository
from load_tests.payloads import Payload, Payloads, Scenario, check_response
from load_tests.stall_clients import (
    BODY_BYTES,
    InvalidBody,
    Refusal,
    Senders,
    invalid_bodies,
    one_row_load,
    refusal_summary,
)
from load_tests.stall_report import CONCURRENCY, REFUSE_WITHIN_S, SENDERS, render, verdicts
from load_tests.targets import (
    REPO_ROOT,
    RayCluster,
    RayPorts,
    StartError,
    http_call,
    replica_ids,
    vigil_config,
)

SCENARIO = Scenario("breast_cancer", "json", 1, CONCURRENCY)
REPLICA_TITLE = "ServeReplica:vigil:ModelServer"
# Apart from bench.py's PLAIN_PORTS and VIGIL_PORTS, HAProxy's and direct ingress's included.
PORTS = RayPorts(
    gcs=6394, dashboard=8269, client_server=6495, dashboard_agent=52468, http=8104,
    haproxy_stats=8496, haproxy_metrics=9193, fallback_http=8592, fallback_grpc=9592,
    ingress_http_min=32300, ingress_grpc_min=42300,
)  # fmt: skip


@dataclass(frozen=True)
class Plan:
    quick: bool
    measure_s: float  # each phase's one-row load
    warmup_s: float
    idle_s: float  # replica RSS with no traffic, before phase 1
    head_start_s: float = 0.5  # senders start this much before phase 2's one-row load
    max_per_sender: int = 1000  # bound on the count of invalid bodies, beside the time
    refusal_timeout_s: float = 10.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- the run


def replica_pids(cluster: RayCluster) -> list[int]:
    """This cluster's ModelServer replica workers (Ray retitles them ray::ServeReplica:...)."""
    return [p for p in cluster.cluster_pids() if REPLICA_TITLE in procs.cmdline(p)]


def match_server_niceness(cluster: RayCluster, pool: ProcessPoolExecutor) -> int | None:
    """Run this process (the senders) and the one-row client at the replicas' nice value. Ray
    runs its workers at 15; clients left at 0 would outrank the server 28 to 1 for the CPU they
    share here, which no remote attacker can do."""
    values = {procs.niceness(p) for p in replica_pids(cluster)} - {None}
    if len(values) != 1:
        return None
    (nice,) = values
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    pool.submit(os.setpriority, os.PRIO_PROCESS, 0, nice).result()
    return nice


def build_models(work: Path) -> Path:
    """`vigil examples build` into the temp dir (the checkout's models/ is left alone)."""
    repository = work / "models"
    command = [str(Path(sys.executable).parent / "vigil"), "examples", "build",
               "--models-dir", str(repository), "--no-progress"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise StartError(f"vigil examples build failed: {(done.stdout + done.stderr)[-1500:]}")
    return repository


def stall_config(repository: Path) -> dict[str, Any]:
    """configs/serve.yaml as vigil_config gives it (batching and sampling on), both applications
    reading the temp repository."""
    config = vigil_config(PORTS, batching_enabled=True)
    for app in config["applications"]:
        app.setdefault("args", {})["model_repository"] = str(repository)
    return config


def start_cluster(cluster: RayCluster, repository: Path) -> list[str]:
    log("ray start with RAY_SERVE_ENABLE_HA_PROXY=1, serve deploy configs/serve.yaml")
    started = time.monotonic()
    cluster.start()
    cluster.deploy(stall_config(repository), "vigil.yaml")
    replicas = replica_ids(cluster.wait_running("vigil"))
    log(f"Vigil up in {time.monotonic() - started:.0f}s, {len(replicas)} replicas")
    return replicas


def check_one_row(payload: Payload) -> str:
    """One request checked against in-process onnxruntime before any load; raises if unusable."""
    status, headers, body = http_call(PORTS.http, "POST", SCENARIO.path, payload.body(),
                                      payload.headers, timeout_s=60)  # fmt: skip
    usable, note = check_response(status, headers, body, SCENARIO, payload)
    if not usable:
        raise StartError(f"one-row request not usable: {note}")
    return note


def process_groups(cluster: RayCluster) -> dict[str, list[int]]:
    """This run's processes by role: the replicas, HAProxy, the one-row load generator (our
    spawned child), the rest of the Ray cluster, and this process (the senders' threads)."""
    groups: dict[str, list[int]] = {"replicas": [], "haproxy": [], "load_client": [],
                                    "senders": [os.getpid()], "ray_rest": []}  # fmt: skip
    for pid in cluster.cluster_pids():
        command = procs.cmdline(pid)
        if REPLICA_TITLE in command:
            groups["replicas"].append(pid)
        elif procs.comm(pid) == "haproxy":
            groups["haproxy"].append(pid)
        elif "multiprocessing.spawn" in command:
            groups["load_client"].append(pid)
        else:
            groups["ray_rest"].append(pid)
    return groups


class CpuMeter:
    """Cores each group of processes used over a stretch of time, the whole machine's, and the
    difference: everything else on this shared machine (someone's test suite, say)."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self.started, self.machine, self.ticks = 0.0, 0, {}

    def begin(self) -> None:
        pids = [p for group in process_groups(self.cluster).values() for p in group]
        self.ticks = {p: procs.cpu_ticks(p) or 0 for p in pids}
        self.started, self.machine = time.monotonic(), procs.machine_busy_ticks()

    def end(self) -> dict[str, float]:
        seconds = (time.monotonic() - self.started) * procs.CLOCK_TICKS
        out = {}
        for name, pids in process_groups(self.cluster).items():
            now = {p: procs.cpu_ticks(p) for p in pids}
            used = sum(t - self.ticks.get(p, 0) for p, t in now.items() if t is not None)
            out[name] = round(used / seconds, 2)
        out["machine"] = round((procs.machine_busy_ticks() - self.machine) / seconds, 2)
        out["others"] = round(out["machine"] - sum(v for k, v in out.items() if k != "machine"), 2)
        return out


class Phases:
    """Idle RSS, warm-up, baseline and attack against a running cluster."""

    def __init__(self, plan: Plan, pool: ProcessPoolExecutor, payload: Payload,
                 bodies: list[InvalidBody], cluster: RayCluster,
                 sampler: procs.MemorySampler) -> None:  # fmt: skip
        self.plan, self.pool, self.payload, self.bodies = plan, pool, payload, bodies
        self.sampler, self.meter = sampler, CpuMeter(cluster)
        self.refusals: list[Refusal] = []

    def load(self, seconds: float) -> dict[str, Any]:
        future = self.pool.submit(one_row_load, PORTS.http, SCENARIO.path, self.payload.body(),
                                  self.payload.headers, SCENARIO.concurrency, seconds)  # fmt: skip
        return future.result(timeout=seconds + 60)

    def run(self) -> dict[str, dict[str, Any]]:
        log(f"idle: replica RSS for {self.plan.idle_s:g} s")
        time.sleep(self.plan.idle_s)
        self.sampler.phase = "warmup"
        self.load(self.plan.warmup_s)
        out = {}
        self.sampler.phase = "baseline"
        out["baseline"] = self.measured("baseline")
        self.sampler.phase = "attack"
        senders = Senders(PORTS.http, self.bodies, SENDERS, self.plan.max_per_sender,
                          self.plan.refusal_timeout_s)  # fmt: skip
        senders.start()
        try:
            time.sleep(self.plan.head_start_s)
            out["attack"] = self.measured("attack")
        finally:
            self.refusals = senders.stop()
            self.sampler.phase = "after"
        time.sleep(2.0)
        return out

    def measured(self, phase: str) -> dict[str, Any]:
        self.meter.begin()
        result = self.load(self.plan.measure_s)
        result["cores"] = self.meter.end()
        log(f"{phase}: {result['req_s']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
            f"p99 {result['p99_ms']:.2f} ms, max {result['max_ms']:.1f} ms, "
            f"non-200 {result['non200']}, errors {result['errors'] or 0}; cores {result['cores']}")  # fmt: skip
        return result


# ---------------------------------------------------------------- main


def setup(plan: Plan, subreaper: bool) -> dict[str, Any]:
    return {
        "quick": plan.quick,
        "measure_s": plan.measure_s,
        "warmup_s": plan.warmup_s,
        "idle_s": plan.idle_s,
        "senders_head_start_s": plan.head_start_s,
        "one_row_load": f"breast_cancer 1-row JSON, {CONCURRENCY} threads in a child process, "
        "one keep-alive http.client connection each, 127.0.0.1 through HAProxy",
        "senders": f"{SENDERS} threads in this process, kinds round-robin, a fresh connection "
        f"per body, at most {plan.max_per_sender} each, {plan.refusal_timeout_s:g} s timeout each",
        "body_bytes": BODY_BYTES,
        "ports": vars(PORTS),
        "subreaper": subreaper,
        "vigil": "configs/serve.yaml via targets.vigil_config (batching on, sampling on), "
        "model_repository a temp `vigil examples build`, RAY_SERVE_ENABLE_HA_PROXY=1",
    }


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_stall", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="8 s phases instead of 20 s")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "load_tests" / "results" / "bench_stall.json",
        help="JSON report (default: load_tests/results/bench_stall.json)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dir in /tmp")
    args = parser.parse_args(argv)
    plan = Plan(True, 8.0, 1.0, 1.0) if args.quick else Plan(False, 20.0, 2.0, 3.0)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    subreaper = procs.become_subreaper()
    started = time.monotonic()
    info = report.machine_info(None, REPO_ROOT)
    info["cpu_busy_at_start"] = round(procs.cpu_busy_fraction(1.0), 3)
    work = Path(tempfile.mkdtemp(prefix="vigil-stall-"))
    cluster = RayCluster("stall", PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2,
                         keep_logs=args.keep_logs)  # fmt: skip
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    sampler = procs.MemorySampler(lambda: replica_pids(cluster))
    exit_code, notes, phases, facts = 0, [], {}, {}
    runner: Phases | None = None
    try:
        log("vigil examples build into a temp dir")
        repository = build_models(work)
        bare = load_repository(repository)
        payload = Payloads(bare, work / "bodies").get(SCENARIO)
        model = bare[SCENARIO.model]
        features = int(model.session.get_inputs()[0].shape[1])
        bodies = invalid_bodies(PORTS.http, SCENARIO.path, model.input_name, features)
        facts["invalid_request_bytes"] = {b.kind: b.size() for b in bodies}
        facts["replicas_before"] = start_cluster(cluster, repository)
        facts["client_niceness"] = match_server_niceness(cluster, pool)
        log(f"load generators run at the replicas' niceness {facts['client_niceness']}")
        if note := check_one_row(payload):
            notes.append(f"one-row check: {note}")
        sampler.start()
        runner = Phases(plan, pool, payload, bodies, cluster, sampler)
        phases = runner.run()
        facts["replicas_after"] = replica_ids(cluster.applications().get("vigil", {}))
        if facts["replicas_after"] != facts["replicas_before"]:
            notes.append(
                f"replicas changed: {facts['replicas_before']} -> {facts['replicas_after']}"
            )
    except StartError as exc:
        notes.append(f"could not start: {exc}")
        log(f"NOTE: could not start: {exc}")
        exit_code = 2
    except KeyboardInterrupt:
        notes.append("interrupted")
        exit_code = 130
    finally:
        try:
            with procs.signals_deferred():
                sampler.stop()
                pool.shutdown(wait=True, cancel_futures=True)
                log(f"stopping the {cluster.label} Ray cluster")
                notes.extend(cluster.stop())
                procs.reap()
                shutil.rmtree(work, ignore_errors=True)
        except KeyboardInterrupt:
            exit_code = 130

    refusals = runner.refusals if runner else []
    kinds = refusal_summary(refusals, REFUSE_WITHIN_S)
    doc = {
        "machine": info,
        "setup": setup(plan, subreaper),
        "one_row": phases,
        "invalid_bodies": kinds,
        "refusals": [
            {**asdict(r), "seconds": round(r.seconds, 4), "sent_share": round(r.sent_share, 3)}
            for r in refusals
        ],
        "replica_rss": (rss := sampler.summary()),
        "vigil": facts,
        "targets": verdicts(phases, kinds, rss),
        "notes": notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print()
    print(render(doc))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {args.out} ({doc['elapsed_s']:.0f}s)")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
