"""One bounded run on loopback: bare uvicorn+onnxruntime reference, plain Ray Serve and Vigil, side
by side, with the in-process onnxruntime ceiling, a table, the targets and a JSON report.

    python -m load_tests.bench [--quick] [--out load_tests/results/bench.json]

Order: in-process ceiling, reference (kept up), plain Ray Serve (own Ray, stopped), Vigil (own Ray
with HAProxy; batching on, then live-reconfigured off, stopped), reference rerun (machine drift).
Every server gets its own ports so a developer's `serve run` on 8000 is left alone. Exit status 0
whatever the numbers; 2 when a server could not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from load_tests import procs, report, wrk
from load_tests.onnx_models import load_repository
from load_tests.payloads import Payloads, Scenario, check_response, inprocess_rows_per_s
from load_tests.targets import (
    REPO_ROOT,
    VIGIL_CONFIG,
    RayCluster,
    RayPorts,
    ReferenceServer,
    StartError,
    http_call,
    plain_serve_config,
    replica_ids,
    vigil_batching_by_replica,
    vigil_config,
    vigil_replicas,
)

MODELS = ("breast_cancer", "mlp")
REFERENCE_PORT = 8101
PLAIN_PORTS = RayPorts(
    gcs=6390, dashboard=8266, client_server=6492, dashboard_agent=52465, http=8100
)
VIGIL_PORTS = RayPorts(
    gcs=6391, dashboard=8267, client_server=6493, dashboard_agent=52466, http=8102
)
BULK_CONCURRENCY = 8


@dataclass(frozen=True)
class Plan:
    quick: bool
    warmup_s: float
    measure_s: float
    inprocess_s: float
    quiet_wait_s: float  # longest wait for a busy machine to calm down before each run

    def scenarios(self, models: tuple[str, ...]) -> list[Scenario]:
        """Each server: 1-row JSON at c=1/16/64, 64- and 1024-row JSON and binary at c=8.
        --quick drops c=16 and 64-row JSON to stay under ~4 minutes."""
        out = []
        for m in models:
            for c in (1, 64) if self.quick else (1, 16, 64):
                out.append(Scenario(m, "json", 1, c))
            for rows in (64, 1024):
                for payload in ("json", "binary"):
                    if self.quick and rows == 64 and payload == "json":
                        continue
                    out.append(Scenario(m, payload, rows, BULK_CONCURRENCY))
        return out

    @staticmethod
    def batching_off(models: tuple[str, ...]) -> list[Scenario]:
        """The Vigil rows the batching targets compare: mlp 1-row c=64, breast_cancer 1-row c=1."""
        wanted = [Scenario("mlp", "json", 1, 64), Scenario("breast_cancer", "json", 1, 1)]
        return [s for s in wanted if s.model in models]

    def vigil_order(self, models: tuple[str, ...]) -> list[Scenario]:
        """Vigil's batching-on runs with the ones compared against batching off last, so that
        on and off are measured minutes apart at most, not the whole bench apart."""
        off = self.batching_off(models)
        rest = [s for s in self.scenarios(models) if s not in off]
        return rest + [s for s in off if s in self.scenarios(models)]

    @staticmethod
    def drift(models: tuple[str, ...]) -> list[Scenario]:
        wanted = [Scenario("breast_cancer", "json", 1, 64), Scenario("mlp", "binary", 1024, 8)]
        return [s for s in wanted if s.model in models]


class Bench:
    def __init__(self, plan: Plan, work: Path, wrk_path: str, payloads: Payloads) -> None:
        self.plan, self.work, self.wrk_path, self.payloads = plan, work, wrk_path, payloads
        self.results: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.log(f"NOTE: {message}")

    def wait_for_quiet(self) -> float:
        """Give a busy machine (someone else's tests) a moment to calm down; return the share
        of the cores busy just before the run, so the table can flag it."""
        busy = procs.cpu_busy_fraction(0.25)
        deadline = time.monotonic() + self.plan.quiet_wait_s
        while busy > 0.35 and time.monotonic() < deadline:
            busy = procs.cpu_busy_fraction(0.5)
        return round(busy, 3)

    def measure(self, server: str, port: int, scenario: Scenario, **extra: Any) -> dict[str, Any]:
        payload = self.payloads.get(scenario)
        result: dict[str, Any] = {
            "server": server, "model": scenario.model, "payload": scenario.payload,
            "rows": scenario.rows, "concurrency": scenario.concurrency, **extra,
        }  # fmt: skip
        label = f"{server} {scenario.model} {scenario.payload} rows={scenario.rows} c={scenario.concurrency}"
        try:
            status, headers, body = http_call(
                port, "POST", scenario.path, payload.body(), payload.headers, timeout_s=60
            )
            usable, check_note = check_response(status, headers, body, scenario, payload)
        except OSError as exc:
            usable, check_note = False, f"request failed: {exc!r}"
        result["check_note"] = check_note
        if not usable:
            result["skipped"] = "check failed"
            self.note(f"{label}: correctness check failed, not loaded: {check_note}")
            self.results.append(result)
            return result
        if check_note:
            self.note(f"{label}: check: {check_note}")
        result["cpu_busy_before"] = self.wait_for_quiet()
        url = f"http://127.0.0.1:{port}{scenario.path}"
        script = wrk.write_script(
            self.work / f"{scenario.model}-{scenario.payload}-{scenario.rows}.lua",
            payload.body_path,
            payload.headers,
        )
        try:
            wrk.run(self.wrk_path, url, script, scenario.concurrency, self.plan.warmup_s)
            summary = wrk.run(self.wrk_path, url, script, scenario.concurrency, self.plan.measure_s)
        except wrk.WrkError as exc:
            result["skipped"] = "wrk failed"
            self.note(f"{label}: {exc}")
            self.results.append(result)
            return result
        result.update(summary)
        result["rows_s"] = summary["req_s"] * scenario.rows
        self.results.append(result)
        self.log(
            f"{label}: {summary['req_s']:.0f} req/s, p50 {summary['p50_ms']:.2f} ms, "
            f"p99 {summary['p99_ms']:.2f} ms {report.flags(result)}"
        )
        return result

    # ------------------------------------------------------------ phases

    def run_plain_serve(self, models, replicas: int, protected, keep_logs: bool) -> None:
        cluster = RayCluster("plain", PLAIN_PORTS, ha_proxy=False, num_cpus=os.cpu_count() or 2,
                             protected=protected, keep_logs=keep_logs)  # fmt: skip
        try:
            self.log("plain Ray Serve: ray start (default HTTP proxy, no HAProxy)")
            started = time.monotonic()
            cluster.start()
            cluster.deploy(
                plain_serve_config(PLAIN_PORTS, REPO_ROOT / "models", replicas), "plain.yaml"
            )
            app = cluster.wait_running("plain")
            self.log(f"plain Ray Serve up in {time.monotonic() - started:.0f}s, "
                     f"{len(replica_ids(app))} replicas")  # fmt: skip
            for scenario in self.plan.scenarios(models):
                self.measure(report.PLAIN, PLAIN_PORTS.http, scenario)
        finally:
            self.log(f"stopping the {cluster.label} Ray cluster")
            with procs.signals_deferred():
                self.notes.extend(cluster.stop())

    def run_vigil(self, models, protected, keep_logs: bool) -> dict[str, Any]:
        cluster = RayCluster("vigil", VIGIL_PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2,
                             protected=protected, keep_logs=keep_logs)  # fmt: skip
        facts: dict[str, Any] = {}
        try:
            self.log(
                "Vigil: ray start with RAY_SERVE_ENABLE_HA_PROXY=1, serve deploy configs/serve.yaml"
            )
            started = time.monotonic()
            cluster.start()
            cluster.deploy(vigil_config(VIGIL_PORTS, batching_enabled=True), "vigil-on.yaml")
            app = cluster.wait_running("vigil")
            facts["replicas_batching_on"] = before = replica_ids(app)
            facts["batching_on_reported"] = reported = vigil_batching_by_replica(VIGIL_PORTS)
            self.log(f"Vigil up in {time.monotonic() - started:.0f}s, {len(before)} replicas, "
                     f"batching enabled per replica {reported}")  # fmt: skip
            for scenario in self.plan.vigil_order(models):
                self.measure(report.VIGIL, VIGIL_PORTS.http, scenario)
            facts["replicas_after_batching_on_runs"] = before = replica_ids(
                cluster.applications()["vigil"]
            )

            self.log(
                "Vigil: live reconfigure, user_config.enabled: false (serve deploy, no restart)"
            )
            started = time.monotonic()
            cluster.deploy(vigil_config(VIGIL_PORTS, batching_enabled=False), "vigil-off.yaml")
            current, reported = _wait_for_batching(cluster, enabled=False, timeout_s=90)
            after = current
            facts.update(
                reconfigure_s=round(time.monotonic() - started, 1),
                replicas_batching_off=after,
                replicas_kept=before == after,
                batching_off_reported=reported,
            )
            self.log(f"Vigil: batching off after {facts['reconfigure_s']}s; replicas kept: "
                     f"{before == after}")  # fmt: skip
            if before != after:
                self.note(f"live reconfigure changed the replicas: {before} -> {after}")
            for scenario in self.plan.batching_off(models):
                self.measure(report.VIGIL_OFF, VIGIL_PORTS.http, scenario)
            self._monitoring_on_off(cluster, models, facts)
        finally:
            self.log(f"stopping the {cluster.label} Ray cluster")
            with procs.signals_deferred():
                self.notes.extend(cluster.stop())
        return facts


    def _monitoring_on_off(self, cluster, models, facts: dict[str, Any]) -> None:
        """Monitoring's cost: the same rows with sampling on (rate 1.0, samples flowing to the
        monitor) and then off (a new `args` value, so Serve replaces the replicas)."""
        scenarios = [Scenario(*s) for s in report.MONITOR_SCENARIOS if s[0] in models]
        for label, sampling in ((report.VIGIL_MONITOR_ON, True), (report.VIGIL_MONITOR_OFF, False)):
            self.log(f"Vigil: batching on, sampling.enabled={sampling}")
            cluster.deploy(
                vigil_config(VIGIL_PORTS, batching_enabled=True, sampling_enabled=sampling),
                f"vigil-sampling-{sampling}.yaml",
            )
            current, _ = _wait_for_batching(cluster, enabled=True, timeout_s=120)
            facts[f"replicas_sampling_{sampling}"] = current
            for scenario in scenarios:
                self.measure(label, VIGIL_PORTS.http, scenario)


def _wait_for_batching(cluster, enabled: bool, timeout_s: float) -> tuple[list, dict]:
    """Wait until the vigil app runs and every current replica reports batching `enabled`;
    returns the replica ids and what each reported."""
    deadline = time.monotonic() + timeout_s
    while True:
        reported = vigil_batching_by_replica(VIGIL_PORTS)
        current = replica_ids(cluster.applications().get("vigil", {}))
        if (
            cluster.applications().get("vigil", {}).get("status") == "RUNNING"
            and current
            and set(current) <= set(reported)
            and all(reported[r] == enabled for r in current)
        ):
            return current, reported
        if time.monotonic() > deadline:
            raise StartError(f"Vigil did not report batching {enabled} within {timeout_s}s")
        time.sleep(0.5)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="1 s warm-up, 3 s runs, fewer scenarios"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "load_tests" / "results" / "bench.json"
    )
    parser.add_argument(
        "--servers",
        default="reference,plain,vigil",
        help="comma-separated subset of reference,plain,vigil (for development)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dirs in /tmp")
    args = parser.parse_args(argv)
    servers = set(args.servers.split(","))
    models = tuple(m for m in args.models.split(",") if m)
    plan = Plan(True, 1.0, 3.0, 0.5, 1.0) if args.quick else Plan(False, 2.0, 5.0, 2.0, 3.0)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    subreaper = procs.become_subreaper()
    wrk_path = wrk.ensure_wrk()
    started = time.monotonic()
    info = report.machine_info(wrk_path, REPO_ROOT)
    info["cpu_busy_at_start"] = round(procs.cpu_busy_fraction(1.0), 3)
    config = yaml.safe_load(VIGIL_CONFIG.read_text())
    replicas = vigil_replicas(config)
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-"))
    repository = REPO_ROOT / "models"
    bare = load_repository(repository)
    missing = [m for m in models if m not in bare]
    if missing:
        print(f"models {missing} not found under {repository} (build them: vigil examples build)")
        return 2
    bench = Bench(plan, work, wrk_path, Payloads(bare, work / "bodies"))
    bench.log(f"nproc {info['nproc']}, ray {info['versions']['ray']}, onnxruntime "
              f"{info['versions']['onnxruntime']}; Vigil replicas {replicas}: the reference runs "
              f"{replicas} uvicorn workers and plain Serve {replicas} replicas")  # fmt: skip
    reference = ReferenceServer(REFERENCE_PORT, replicas, repository, work)
    exit_code, facts, inprocess = 0, {}, {}
    try:
        bench.log("in-process onnxruntime, batch 1024 (no HTTP)")
        for m in models:
            features = bench.payloads.features(m)
            inprocess[m] = {
                "threads_1": inprocess_rows_per_s(bare[m], features, 1024, plan.inprocess_s)
            }
            wide = load_repository(repository, intra_op_threads=os.cpu_count() or 1)[m]
            inprocess[m][f"threads_{os.cpu_count()}"] = inprocess_rows_per_s(
                wide, features, 1024, plan.inprocess_s
            )
            bench.log(f"  {m}: {inprocess[m]['threads_1']['rows_s']:.0f} rows/s (1 thread), "
                      f"{inprocess[m][f'threads_{os.cpu_count()}']['rows_s']:.0f} rows/s "
                      f"({os.cpu_count()} threads)")  # fmt: skip
        for scenario in {*plan.scenarios(models), *plan.batching_off(models)}:
            bench.payloads.get(scenario)  # built (and expected outputs computed) before any load
        if "reference" in servers:
            bench.log(f"reference: uvicorn x{replicas} workers on {REFERENCE_PORT}")
            reference.start()
            for scenario in plan.scenarios(models):
                bench.measure(report.REFERENCE, REFERENCE_PORT, scenario)
        for name, phase in (
            (
                "plain",
                lambda: bench.run_plain_serve(
                    models, replicas, reference.protected_pids, args.keep_logs
                ),
            ),
            (
                "vigil",
                lambda: facts.update(
                    bench.run_vigil(models, reference.protected_pids, args.keep_logs)
                ),
            ),
        ):
            if name not in servers:
                continue
            try:
                phase()
            except StartError as exc:
                bench.note(f"{name} could not start: {exc}")
                exit_code = 2
        if "reference" in servers and reference.proc is not None:
            bench.log("reference rerun (machine drift)")
            for scenario in plan.drift(models):
                bench.measure(report.REFERENCE, REFERENCE_PORT, scenario, drift_rerun=True)
    except StartError as exc:
        bench.note(f"could not start: {exc}")
        exit_code = 2
    except KeyboardInterrupt:
        bench.note("interrupted")
        exit_code = 130
    finally:
        try:
            with procs.signals_deferred():
                reference.stop()
                leftovers = [p for p in procs.descendants(os.getpid()) if procs.alive(p)]
                if leftovers:
                    bench.note(f"stopping {len(leftovers)} leftover child processes")
                    procs.stop_pids(leftovers, grace_s=5.0)
                procs.reap()
                shutil.rmtree(work, ignore_errors=True)
        except KeyboardInterrupt:
            exit_code = 130

    report.add_ratios(bench.results)
    bench.results.sort(key=report.display_order)
    print()
    print(
        f"reference: uvicorn with {replicas} worker processes (= Vigil's {replicas} replicas), "
        f"uvloop, httptools, no access log; plain Serve: {replicas} replicas, Ray's HTTP proxy; "
        f"Vigil: HAProxy -> {replicas} replicas. wrk -t1, {plan.warmup_s:g} s warm-up, "
        f"{plan.measure_s:g} s measured per row; 'vs ref' = req/s / reference req/s."
    )
    print(report.table(bench.results))
    checks = report.targets(bench.results, inprocess)
    print("\ntargets")
    for t in checks:
        print(f"  {t['status']:<20} {t['target']}: {t['value']}")
    if bench.notes:
        print("\nnotes")
        for n in bench.notes:
            print(f"  - {n}")
    doc = {
        "machine": info,
        "setup": {
            "quick": plan.quick,
            "warmup_s": plan.warmup_s,
            "measure_s": plan.measure_s,
            "load_generator": "wrk -t1, one connection per concurrency unit, keep-alive, 127.0.0.1",
            "reference": f"uvicorn load_tests.reference_server:app --workers {replicas} --loop uvloop "
            "--http httptools --no-access-log; one onnxruntime session per model and "
            "worker, intra_op_threads=1",
            "plain_serve": f"load_tests.plain_serve_app, {replicas} replicas x 0.5 CPU, "
            "max_ongoing_requests 256, Ray's default HTTP proxy",
            "vigil": "configs/serve.yaml (port, absolute model_repository and user_config.enabled "
            "changed), RAY_SERVE_ENABLE_HA_PROXY=1",
            "vigil_user_config": config["applications"][0]["deployments"][0].get("user_config"),
            "worker_processes": replicas,
            "ports": {
                "reference": REFERENCE_PORT,
                "plain": vars(PLAIN_PORTS),
                "vigil": vars(VIGIL_PORTS),
            },
            "subreaper": subreaper,
        },
        "inprocess_batch_1024": inprocess,
        "vigil": facts,
        "results": bench.results,
        "targets": checks,
        "notes": bench.notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    print(f"\nwrote {args.out} ({doc['elapsed_s']:.0f}s)")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
