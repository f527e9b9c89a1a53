"""Vigil side by side with its peers on loopback: the bare reference (first and last), MLServer,
LitServe and BentoML (each with and without batching, each from its own virtual environment),
plain Ray Serve and Vigil as shipped; one-row V2 JSON at c=1 and c=64 on breast_cancer and mlp.

    python -m load_tests.bench_peers [--quick] [--only mlserver,vigil] [--out ...]

Every server gets the same bodies and models (built by `vigil examples build` into a temporary
repository), onnxruntime with one intra-op thread, and its answers checked against onnxruntime in
this process before it is timed. Before each server starts and before each timed run the bench
waits (bounded) for the machine to be idle. Exit status 0; 2 when a server could not be installed,
started or checked; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from load_tests import machine_idle, peer_envs, peer_report, procs, report, wrk
from load_tests.onnx_models import load_repository
from load_tests.peer_payloads import (
    JSON_HEADERS,
    PeerPayload,
    Verdict,
    build_payload,
    check_answer,
)
from load_tests.peer_servers import FAMILIES, MODELS
from load_tests.peer_targets import PeerTarget, RayTarget, ReferenceTarget, Target
from load_tests.targets import (
    REPO_ROOT,
    VIGIL_CONFIG,
    RayPorts,
    ReferenceServer,
    StartError,
    http_call,
    vigil_replicas,
)

REFERENCE_PORT = 8120
PEER_PORTS = {"mlserver": 8123, "mlserver-batch": 8124, "litserve": 8125, "litserve-batch": 8126,
              "bentoml": 8127, "bentoml-batch": 8128}  # fmt: skip
# Apart from bench.py's, bench_stall's, bench_rollback's and bench_model_memory's ports.
PLAIN_PORTS = RayPorts(
    gcs=6402, dashboard=8276, client_server=6503, dashboard_agent=52474, http=8121,
    haproxy_stats=8502, haproxy_metrics=9202, fallback_http=8602, fallback_grpc=9602,
    ingress_http_min=32700, ingress_grpc_min=42700,
)  # fmt: skip
VIGIL_PORTS = RayPorts(
    gcs=6403, dashboard=8277, client_server=6504, dashboard_agent=52475, http=8122,
    haproxy_stats=8503, haproxy_metrics=9203, fallback_http=8603, fallback_grpc=9603,
    ingress_http_min=32800, ingress_grpc_min=42800,
)  # fmt: skip
SERVERS = (*PEER_PORTS, peer_report.PLAIN, peer_report.VIGIL)
CONCURRENCIES = (1, 64)


@dataclass(frozen=True)
class Plan:
    warmup_s: float
    measure_s: float
    start_wait_s: float  # longest wait for an idle machine before a server starts
    point_wait_s: float  # ... and before each timed run
    models: tuple[str, ...]
    concurrencies: tuple[int, ...] = CONCURRENCIES


def select(only: str | None) -> list[str]:
    """The servers to run, in run order: every one, or those named (a family name such as
    `mlserver` picks both of its variants). The reference always runs."""
    if not only:
        return list(SERVERS)
    wanted = {w.strip() for w in only.split(",") if w.strip()} - {peer_report.REFERENCE}
    unknown = {w for w in wanted if w not in SERVERS and w not in FAMILIES}
    if unknown:
        raise ValueError(f"unknown servers {sorted(unknown)}; choose from {', '.join(SERVERS)}")
    return [s for s in SERVERS if s in wanted or s.split("-")[0] in wanted & set(FAMILIES)]


class Bench:
    def __init__(self, plan: Plan, work: Path, wrk_path: str,
                 payloads: dict[str, PeerPayload]) -> None:  # fmt: skip
        self.plan, self.work, self.wrk_path, self.payloads = plan, work, wrk_path, payloads
        self.results: list[dict[str, Any]] = []
        self.servers: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.failed = False

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log(f"NOTE: {message}")

    def unavailable(self, label: str, why: str) -> None:
        self.failed = True
        self.servers.setdefault(label, {})["unavailable"] = why
        self.results.append({"server": label, "model": "-", "concurrency": None, "skipped": why})
        self.note(f"{label}: {why}")

    def run(self, target: Target, rerun: bool = False, keep: bool = False) -> None:
        """Start (unless it runs already), check, time each point, stop (unless keep)."""
        facts = self.servers.setdefault(target.label, {})
        if not rerun:
            facts["idle_before_start"] = machine_idle.wait_until_idle(
                max_wait_s=self.plan.start_wait_s
            )
            try:
                facts["versions"], facts["settings"] = target.versions(), target.settings()
                self.log(f"{target.label}: starting")
                facts["start_s"] = round(self.start(target), 1)
                facts["footprint_at_start"] = target.footprint()
                self.log(
                    f"{target.label}: ready in {facts['start_s']}s, {facts['footprint_at_start']}"
                )
            except StartError as exc:
                self.stop(target)
                self.unavailable(target.label, f"could not start: ...{str(exc)[-600:]}")
                return
        try:
            for model in self.plan.models:
                if self.check(target, model, facts):
                    for concurrency in self.plan.concurrencies:
                        self.measure(target, model, concurrency, rerun)
        finally:
            if not keep:
                self.stop(target)

    def start(self, target: Target) -> float:
        """Start; once more after a failure (a Ray node can time out on a loaded machine)."""
        try:
            return target.start()
        except StartError as exc:
            self.note(f"{target.label}: start failed, trying once more: ...{str(exc)[-300:]}")
            self.stop(target)
            return target.start()

    def stop(self, target: Target) -> None:
        with procs.signals_deferred():
            stopped = target.stop()
        self.servers.setdefault(target.label, {})["stop"] = stopped
        if stopped.get("left") or stopped.get("ports_bound"):
            self.note(f"{target.label}: after stop, processes {stopped.get('left')} alive, "
                      f"ports {stopped.get('ports_bound')} bound")  # fmt: skip
        else:
            self.log(f"{target.label}: stopped ({stopped.get('processes')} processes, none left, "
                     "no port bound)")  # fmt: skip

    def check(self, target: Target, model: str, facts: dict[str, Any]) -> bool:
        payload = self.payloads[model]
        try:
            status, _, body = http_call(target.port, "POST", payload.path, payload.body(),
                                        JSON_HEADERS, timeout_s=30)  # fmt: skip
            verdict = check_answer(status, body, payload)
        except OSError as exc:
            verdict = Verdict(False, f"request failed: {exc!r}")
        facts.setdefault("checks", {})[model] = verdict.as_dict()
        if verdict.ok:
            return True
        reason = verdict.reason
        self.failed = True
        for concurrency in self.plan.concurrencies:
            self.results.append({"server": target.label, "model": model,
                                 "concurrency": concurrency, "skipped": "check failed"})  # fmt: skip
        self.note(f"{target.label} {model}: answer differs from onnxruntime, not timed: {reason}")
        return False

    def measure(self, target: Target, model: str, concurrency: int, rerun: bool) -> None:
        payload = self.payloads[model]
        result: dict[str, Any] = {"server": target.label, "model": model,
                                  "concurrency": concurrency, "rerun": rerun}  # fmt: skip
        verdict = self.servers[target.label]["checks"][model]
        result["envelope"] = verdict.get("envelope", "")
        result["idle_before"] = machine_idle.wait_until_idle(
            target.pids, max_wait_s=self.plan.point_wait_s
        )
        url = f"http://127.0.0.1:{target.port}{payload.path}"
        script = wrk.write_script(self.work / f"{model}.lua", payload.body_path, JSON_HEADERS)
        try:
            wrk.run(self.wrk_path, url, script, concurrency, self.plan.warmup_s)
            summary = wrk.run(self.wrk_path, url, script, concurrency, self.plan.measure_s)
        except wrk.WrkError as exc:
            result["skipped"] = "wrk failed"
            self.note(f"{target.label} {model} c={concurrency}: {exc}")
        else:
            result.update(summary)
            self.log(f"{target.label} {model} c={concurrency}: {summary['req_s']:.0f} req/s, "
                     f"p50 {summary['p50_ms']:.2f} ms, p99 {summary['p99_ms']:.2f} ms "
                     f"{peer_report.flags(result)}")  # fmt: skip
        self.results.append(result)


def build_repository(folder: Path) -> Path:
    """`vigil examples build` into a fresh folder: the same model files for every server."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "vigil"), "examples", "build", "--models-dir",
         str(folder), "--no-progress"],
        check=False, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        raise StartError(f"vigil examples build failed: {(done.stderr or done.stdout)[-800:]}")
    return folder


def print_servers(servers: dict[str, dict[str, Any]]) -> None:
    print("\nservers (versions, settings)")
    for label, facts in servers.items():
        versions = ", ".join(f"{k} {v}" for k, v in (facts.get("versions") or {}).items() if v)
        print(f"  {label}: {versions or '-'}")
        if facts.get("unavailable"):
            print(f"    UNAVAILABLE: {facts['unavailable']}")
        for key, value in (facts.get("settings") or {}).items():
            print(
                f"    {key}: {orjson.dumps(value).decode() if not isinstance(value, str) else value}"
            )
        checks = facts.get("checks") or {}
        if checks:
            print("    answers: " + "; ".join(
                f"{m} {c.get('answer_bytes', 0)} B"
                + (" exact" if c.get("exact") else f" max |diff| {c.get('max_abs_diff')}")
                + (f", extra keys {c['extra_keys']}" if c.get("extra_keys") else "")
                + (f", in a {c['envelope']}" if c.get("envelope") else "")
                + ("" if c.get("ok") else f", FAILED: {c.get('reason')}")
                for m, c in checks.items()))  # fmt: skip
        if facts.get("footprint_at_start"):
            idle = facts.get("idle_before_start") or {}
            print(f"    at start: {facts['footprint_at_start']}; started in {facts.get('start_s')}s"
                  f"; machine before start: load {idle.get('loadavg_1m')}, "
                  f"cpu {idle.get('others_cpu', 0):.0%}")  # fmt: skip


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="1 s warm-up, 3 s runs, breast_cancer only, shorter idle waits")  # fmt: skip
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SERVERS)} (or a "
                        "family: mlserver, litserve, bentoml); the reference always runs")  # fmt: skip
    parser.add_argument("--models", help="comma-separated models (default: breast_cancer,mlp)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "load_tests/results/peers.json")
    parser.add_argument("--max-wait", type=float, metavar="S",
                        help="longest wait for an idle machine before each timed run (default 60, "
                        "--quick 15); twice that before each server starts")  # fmt: skip
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dirs in /tmp")
    args = parser.parse_args(argv)
    try:
        chosen = select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    models = tuple(args.models.split(",")) if args.models else (
        ("breast_cancer",) if args.quick else MODELS)  # fmt: skip
    wait = args.max_wait if args.max_wait is not None else (15.0 if args.quick else 60.0)
    plan = Plan(1.0 if args.quick else 2.0, 3.0 if args.quick else 10.0, 2 * wait, wait, models)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    procs.become_subreaper()
    wrk_path = wrk.ensure_wrk()
    started = time.monotonic()
    info = report.machine_info(wrk_path, REPO_ROOT)
    work = Path(tempfile.mkdtemp(prefix="vigil-peers-"))
    replicas = vigil_replicas(yaml.safe_load(VIGIL_CONFIG.read_text()))
    bench: Bench | None = None
    reference: ReferenceTarget | None = None
    exit_code = 0
    try:
        print(
            f"[{time.strftime('%H:%M:%S')}] vigil examples build -> {work / 'models'}", flush=True
        )
        repository = build_repository(work / "models")
        bare = load_repository(repository)
        payloads = {m: build_payload(bare[m], work / "bodies") for m in models}
        bench = Bench(plan, work, wrk_path, payloads)
        for m, p in payloads.items():
            answer = ", ".join(f"{k}=[{', '.join(f'{x:.4g}' for x in v.ravel()[:3])}{', ...' if v.size > 3 else ''}]"
                               for k, (_, v) in p.expected.items())  # fmt: skip
            bench.log(f"{m}: the row's answer in-process: {answer}")
        envs = peer_envs.peer_envs()
        for family in dict.fromkeys(s.split("-")[0] for s in chosen if s in PEER_PORTS):
            why = peer_envs.ensure(envs[family], bench.log)
            if why:
                for label in [s for s in chosen if s.split("-")[0] == family]:
                    bench.unavailable(label, f"install failed: {why}")
                chosen = [s for s in chosen if s.split("-")[0] != family]
        reference = ReferenceTarget(ReferenceServer(REFERENCE_PORT, replicas, repository, work))
        protected = reference.server.protected_pids
        bench.run(reference, keep=True)
        for label in chosen:
            if label in PEER_PORTS:
                family = label.split("-")[0]
                server = FAMILIES[family](envs[family], PEER_PORTS[label], label.endswith("-batch"),
                                          repository, work)  # fmt: skip
                bench.run(PeerTarget(server, protected))
            else:
                ports = VIGIL_PORTS if label == peer_report.VIGIL else PLAIN_PORTS
                bench.run(RayTarget(label, ports, repository, replicas, protected, args.keep_logs))
        if "reference" not in bench.servers or not bench.servers["reference"].get("unavailable"):
            bench.log("reference again (the machine's drift)")
            bench.run(reference, rerun=True)
        reference = None
    except StartError as exc:
        print(f"could not run: {exc}", flush=True)
        exit_code = 2
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        exit_code = 130
    finally:
        with procs.signals_deferred():
            if reference is not None and bench is not None:
                bench.stop(reference)
            leftovers = [p for p in procs.descendants(os.getpid()) if procs.alive(p)]
            if leftovers:
                print(f"stopping {len(leftovers)} leftover child processes", flush=True)
                procs.stop_pids(leftovers, grace_s=5.0)
            procs.reap()
            shutil.rmtree(work, ignore_errors=True)
    if bench is None:
        return exit_code or 2
    if bench.failed and exit_code == 0:
        exit_code = 2

    peer_report.add_ratios(bench.results)
    print_servers(bench.servers)
    print(f"\n{info.get('wrk') or 'wrk'}; {info['nproc']} cores ({info.get('cpu_model')})")
    print(f"one-row V2 JSON, wrk -t1, {plan.warmup_s:g} s warm-up and {plan.measure_s:g} s "
          "timed per row; 'vs ref' = req/s / the reference's mean req/s (first and last run); "
          "'vs best peer' = req/s / the best peer's (MLServer, LitServe, BentoML, plain Serve)")  # fmt: skip
    print(peer_report.table(bench.results))
    print("\nsummary")
    for line in peer_report.summary(bench.results):
        print(f"  {line}")
    drift = peer_report.drift(bench.results)
    for d in drift:
        print(f"  reference drift {d['model']} c={d['concurrency']}: {d['first_req_s']:.0f} -> "
              f"{d['last_req_s']:.0f} req/s ({d['change']:+.0%})")  # fmt: skip
    if bench.notes:
        print("\nnotes")
        for n in bench.notes:
            print(f"  - {n}")
    doc = {
        "machine": info,
        "plan": asdict(plan),
        "load": "wrk -t1, one connection per concurrency unit, keep-alive, 127.0.0.1; one-row "
        "V2 JSON body per model, the same bytes for every server",
        "idle_rule": f"load average < {machine_idle.LOADAVG_BELOW} and CPU of everything but the "
        f"server under test < {machine_idle.CPU_BELOW:.0%} over 2 s, waited for (bounded)",
        "rows": {
            m: {
                "input": p.row.ravel().tolist(),
                "expected": {k: v.tolist() for k, (_, v) in p.expected.items()},
            }
            for m, p in bench.payloads.items()
        },  # fmt: skip
        "servers": bench.servers,
        "results": bench.results,
        "summary": peer_report.summary(bench.results),
        "reference_drift": drift,
        "notes": bench.notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nwrote {args.out} ({doc['elapsed_s']:.0f}s)")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
