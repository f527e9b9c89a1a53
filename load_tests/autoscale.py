"""`make autoscale`: configs/serve-autoscaling.yaml under load that ramps from 1 client to 64 and
back; the replica count against time, how long scaling takes, and every failed request.

    make autoscale
    python -m load_tests.autoscale [--high 64] [--up-timeout 180] [--down-timeout 240]

A private `make serve`-style server on loopback (HAProxy with the Makefile's limits and 2 s of
draining, tokens on), the model server scaling 1 to 4 replicas. Load is one-row breast_cancer
requests (JSON and binary) from a closed loop of clients, in phases:

  low      1 client for --low-s; then production of breast_cancer is promoted to version 2 (a copy
           of version 1 published here) while one replica runs;
  up       64 clients until 4 replicas run, then --hold-s more;
  checks   at 4 replicas, straight at each replica's own port: it answers breast_cancer with
           version 2 (the alias change made before it existed reached it); a rollback then reaches
           every replica before the command returns; 20 mlp requests sent to the replica alone
           reach the monitor (its mlp request counter, which nothing else feeds, grows by 20);
  down     1 client until 1 replica runs, then --hold-s more.

Replicas are counted every second from Serve's REST API. Pass: 4 replicas reached and 1 again,
0 failed requests in every phase, both alias checks and every replica's samples. Prints a table
and the verdict, writes load_tests/results/autoscale.json. Everything it started is ended.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from load_tests import procs, report
from load_tests.loadgen import Load, build_bodies, percentile_ms
from load_tests.soak import cluster_environment
from load_tests.targets import REPO_ROOT, RayCluster, RayPorts, StartError, http_call
from load_tests.versions_server import first_version, publish_copy

CONFIG = REPO_ROOT / "configs" / "serve-autoscaling.yaml"
PORTS = RayPorts(gcs=6432, dashboard=8302, client_server=6532, dashboard_agent=52502, http=8152,
                 haproxy_stats=8532, haproxy_metrics=9232, fallback_http=8632,
                 fallback_grpc=9632, ingress_http_min=36000, ingress_grpc_min=46000)
MODEL = "breast_cancer"
MIX = ((MODEL, "json", 1, 1), (MODEL, "binary", 1, 1))
SAMPLE_REQUESTS = 20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def server_config(models: Path, tokens: Path) -> dict[str, Any]:
    config = yaml.safe_load(CONFIG.read_text())
    config["http_options"]["port"] = PORTS.http
    config.pop("grpc_options", None)  # not exercised here; one port fewer to collide
    for app in config["applications"]:
        app["args"]["model_repository"] = str(models)
        app["args"]["tokens_file"] = str(tokens)
    return config


class ReplicaCounter:
    """Serve's replicas of the model server by state, every second, from a thread."""

    def __init__(self, cluster: RayCluster, begun: float) -> None:
        self.cluster, self.begun = cluster, begun
        self.points: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def states(self) -> dict[str, int]:
        app = self.cluster.applications().get("vigil") or {}
        deployment = (app.get("deployments") or {}).get("ModelServer") or {}
        counts: dict[str, int] = {}
        for replica in deployment.get("replicas") or []:
            counts[replica.get("state", "?")] = counts.get(replica.get("state", "?"), 0) + 1
        return counts

    def running(self) -> int:
        return self.points[-1]["RUNNING"] if self.points else 0

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                states = self.states()
            except (OSError, StartError, ValueError):
                continue
            self.points.append({"t_s": round(time.monotonic() - self.begun, 1),
                                "RUNNING": states.get("RUNNING", 0),
                                "other": {k: v for k, v in states.items() if k != "RUNNING"}})

    def start(self) -> ReplicaCounter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def replica_ports(token: str) -> dict[str, int]:
    """replica id -> its own HTTP port (Serve's direct-ingress range, private to this cluster)."""
    found: dict[str, int] = {}
    for port in range(PORTS.ingress_http_min, PORTS.ingress_http_min + 24):
        try:
            status, _, body = http_call(port, "GET", "/v2/vigil/batching", timeout_s=3,
                                        headers={"Authorization": f"Bearer {token}"})
        except OSError:
            continue
        if status == 200:
            found[str(orjson.loads(body).get("replica"))] = port
    return found


def answering_version(port: int, token: str, body: bytes) -> str | None:
    status, _, answer = http_call(port, "POST", f"/v2/models/{MODEL}/infer", body=body,
                                  headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"})
    return orjson.loads(answer).get("model_version") if status == 200 else f"status {status}"


def admin(token: str, action: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, _, answer = http_call(PORTS.http, "POST", f"/v2/repository/models/{MODEL}/{action}",
                                  body=orjson.dumps(body), timeout_s=60,
                                  headers={"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"})
    try:
        return status, orjson.loads(answer)
    except ValueError:
        return status, {"error": answer[:300].decode(errors="replace")}


def monitor_counts(token: str) -> dict[str, float]:
    """The monitor's counts of request facts: received per model, and dropped (by the replicas,
    whose buffers fill while the monitor waits for CPU, or by the monitor) in all."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = http_call(PORTS.http, "GET", "/monitor/metrics",
                                headers={"Authorization": f"Bearer {token}"})
    totals: dict[str, float] = {}
    if status != 200:
        return totals
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "vigil_sample_requests_received_total":
                key = sample.labels.get("model", "?")
            elif sample.name == "vigil_sample_requests_dropped_total":
                key = "dropped"
            else:
                continue
            totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def monitor_requests(token: str, model: str) -> float:
    """The monitor's count of request facts received for `model` (every version)."""
    return monitor_counts(token).get(model, 0.0)


def samples_reach_monitor(token: str, ports: dict[str, int], body: bytes) -> dict[str, Any]:
    """For each replica alone: SAMPLE_REQUESTS mlp requests at its port, then the monitor's mlp
    count must grow by as many within 20 s (the replicas flush every second or so)."""
    out: dict[str, Any] = {}
    for replica, port in sorted(ports.items()):
        before = monitor_requests(token, "mlp")
        answered = 0
        for _ in range(SAMPLE_REQUESTS):
            status, _, _ = http_call(port, "POST", "/v2/models/mlp/infer", body=body,
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
            answered += status == 200
        deadline = time.monotonic() + 20
        grown = 0.0
        while time.monotonic() < deadline:
            grown = monitor_requests(token, "mlp") - before
            if grown >= answered:
                break
            time.sleep(0.5)
        out[replica] = {"sent": SAMPLE_REQUESTS, "answered": answered, "monitor_counted": grown,
                        "reached": answered == SAMPLE_REQUESTS and grown >= answered}
    return out


def json_body(repository: Path, model: str) -> bytes:
    (spec,) = first_version(repository, model).manifest.inputs
    width = int(spec.shape[1])
    return orjson.dumps({"inputs": [{"name": spec.name, "shape": [1, width],
                                     "datatype": "FP32", "data": [0.1] * width}]})


def wait_replicas(counter: ReplicaCounter, want: int, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if counter.running() == want and not counter.points[-1]["other"]:
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def phase_stats(name: str, load: Load, t0: float, begun: float, clients: int) -> dict[str, Any]:
    record = load.take()
    return {"phase": name, "clients": clients, "from_s": round(t0 - begun, 1),
            "to_s": round(time.monotonic() - begun, 1), "answered": len(record.latencies),
            "failed": len(record.failures), "failures": record.failures,
            "p50_ms": percentile_ms(record.latencies, 50),
            "p99_ms": percentile_ms(record.latencies, 99)}


def scenario(args: argparse.Namespace, cluster: RayCluster, models: Path, token: str,
             begun: float) -> dict[str, Any]:
    counter = ReplicaCounter(cluster, begun).start()
    doc: dict[str, Any] = {"phases": [], "replicas": counter.points}
    load = Load(PORTS.http, build_bodies(models, token, MIX), 1).start()
    infer_bc, infer_mlp = json_body(models, MODEL), json_body(models, "mlp")
    try:
        t0 = time.monotonic()
        log(f"1 client for {args.low_s:.0f} s, then breast_cancer production -> version 2")
        time.sleep(args.low_s)
        publish_copy(models, first_version(models, MODEL), "2")
        status, answer = admin(token, "promote", version="2", force=True,
                               reason="autoscale scenario: alias change before the scale-up")
        doc["promote_before_scale_up"] = {"status": status, "answer": answer}
        doc["phases"].append(phase_stats("low", load, t0, begun, 1))

        t0 = time.monotonic()
        before = monitor_counts(token)
        load.concurrency = args.high
        log(f"{args.high} clients")
        doc["scale_up_s"] = wait_replicas(counter, 4, args.up_timeout)
        log(f"4 replicas after {doc['scale_up_s']} s")
        time.sleep(args.hold_s)
        after = monitor_counts(token)
        doc["monitor_at_peak"] = {k: after.get(k, 0.0) - before.get(k, 0.0)
                                  for k in (MODEL, "dropped")}
        doc["phases"].append(phase_stats("up", load, t0, begun, args.high))

        # The checks run at 1 client, within the downscale delay (all 4 replicas still there):
        # at 64 clients on 2 cores the monitor gets little CPU, and the replicas drop samples
        # by design (counted in vigil_sample_requests_dropped_total).
        t0 = time.monotonic()
        load.concurrency = 1
        log("1 client; checks on every replica")
        ports = replica_ports(token)
        doc["replica_ports"] = ports
        doc["version_at_each_replica"] = {r: answering_version(p, token, infer_bc)
                                          for r, p in ports.items()}
        status, answer = admin(token, "rollback", reason="autoscale scenario: alias change at 4")
        doc["rollback_at_peak"] = {"status": status, "answer": answer}
        doc["version_after_rollback"] = {r: answering_version(p, token, infer_bc)
                                         for r, p in ports.items()}
        doc["samples"] = samples_reach_monitor(token, ports, infer_mlp)
        doc["replicas_after_checks"] = counter.running()
        doc["phases"].append(phase_stats("checks", load, t0, begun, 1))

        t0 = time.monotonic()
        doc["scale_down_s"] = wait_replicas(counter, 1, args.down_timeout)
        if doc["scale_down_s"] is not None:  # counted from the drop to 1 client
            doc["scale_down_s"] = round(time.monotonic() - doc["phases"][-1]["from_s"] - begun, 1)
        log(f"1 replica {doc['scale_down_s']} s after the drop to 1 client")
        time.sleep(args.hold_s)
        doc["phases"].append(phase_stats("down", load, t0, begun, 1))
    finally:
        load.stop()
        counter.stop()
    return doc


def decisions(doc: dict[str, Any]) -> None:
    """When Serve decided: the first replica STARTING after the rise, STOPPING after the drop
    (the rest of the scale-up is the replicas' start; of the scale-down, their draining)."""
    phases = {p["phase"]: p for p in doc["phases"]}
    for key, phase, state in (("up_decided_s", "up", "STARTING"),
                              ("down_decided_s", "checks", "STOPPING")):
        if phase in phases:
            since = phases[phase]["from_s"]
            doc[key] = next((round(p["t_s"] - since, 1) for p in doc["replicas"]
                             if p["t_s"] >= since and state in p["other"]), None)


def verdict(doc: dict[str, Any]) -> dict[str, bool]:
    versions = doc.get("version_at_each_replica") or {}
    after = doc.get("version_after_rollback") or {}
    samples = doc.get("samples") or {}
    return {
        "scaled up to 4 replicas": doc.get("scale_up_s") is not None,
        "scaled down to 1 replica": doc.get("scale_down_s") is not None,
        "0 failed requests": all(p["failed"] == 0 for p in doc["phases"]),
        "alias set at 1 replica served by all 4": len(versions) == 4
        and all(v == "2" for v in versions.values()),
        "rollback at 4 replicas reached all": len(after) == 4
        and all(v == "1" for v in after.values()),
        "samples from every replica reach the monitor": len(samples) == 4
        and all(s["reached"] for s in samples.values()),
    }


def table(doc: dict[str, Any], checks: dict[str, bool]) -> list[str]:
    lines = [f"{'phase':<8} {'clients':>7} {'from s':>7} {'to s':>7} {'answered':>9} "
             f"{'failed':>7} {'p50 ms':>8} {'p99 ms':>8}"]
    for p in doc["phases"]:
        lines.append(f"{p['phase']:<8} {p['clients']:>7} {p['from_s']:>7} {p['to_s']:>7} "
                     f"{p['answered']:>9} {p['failed']:>7} {p['p50_ms']!s:>8} {p['p99_ms']!s:>8}")
    lines.append(f"time to scale up 1 -> 4: {doc.get('scale_up_s')} s from the rise in clients "
                 f"(first replica STARTING at {doc.get('up_decided_s')} s); down 4 -> 1: "
                 f"{doc.get('scale_down_s')} s from the drop to 1 client (first STOPPING at "
                 f"{doc.get('down_decided_s')} s)")
    peak = doc.get("monitor_at_peak") or {}
    answered = next((p["answered"] for p in doc["phases"] if p["phase"] == "up"), 0)
    lines.append(f"monitor during the peak: the facts of {peak.get(MODEL, 0):.0f} of {answered} "
                 f"answered requests received, {peak.get('dropped', 0):.0f} counted dropped by it; "
                 "flushes a replica drops whole while the monitor is busy are counted by the "
                 "replica (ray_vigil_samples_dropped_requests_total)")
    changes, last = [], None
    for point in doc["replicas"]:
        state = (point["RUNNING"], tuple(sorted(point["other"].items())))
        if state != last:
            other = ", ".join(f"{v} {k}" for k, v in sorted(point["other"].items()))
            changes.append(f"{point['t_s']:.0f}s: {point['RUNNING']}" + (f" (+{other})" if other
                                                                        else ""))
            last = state
    lines.append("replicas running: " + "; ".join(changes))
    lines.append(f"version per replica after promote at 1: {doc.get('version_at_each_replica')}")
    lines.append(f"after rollback at 4: {doc.get('version_after_rollback')}")
    lines.append("samples per replica (sent/counted): " + ", ".join(
        f"{r[-8:]} {s['answered']}/{s['monitor_counted']:.0f}"
        for r, s in (doc.get("samples") or {}).items()))
    for p in doc["phases"]:
        for failure in p["failures"][:10]:
            lines.append(f"failed in {p['phase']}: {failure['kind']}: {failure['error']}")
    for check, ok in checks.items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {check}")
    lines.append("PASS" if all(checks.values()) else "FAIL")
    return lines


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(prog="python -m load_tests.autoscale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--high", type=int, default=64, help="clients at the peak")
    parser.add_argument("--low-s", type=float, default=20.0)
    parser.add_argument("--hold-s", type=float, default=15.0)
    parser.add_argument("--up-timeout", type=float, default=180.0)
    parser.add_argument("--down-timeout", type=float, default=240.0)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "load_tests" / "results" / "autoscale.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    procs.become_subreaper()
    begun = time.monotonic()
    os.environ.pop("VIGIL_TOKENS_FILE", None)
    work = Path(tempfile.mkdtemp(prefix="vigil-autoscale-"))
    cluster = RayCluster("autoscale", PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2,
                         extra_env=cluster_environment())
    try:
        from vigil.core.tokens import create_token
        from vigil.tools.examples import build_examples

        models = work / "models"
        build_examples(models)
        token = create_token(work / "tokens.yaml", "autoscale",
                             frozenset({"infer", "monitor", "admin"}))
        cluster.start()
        cluster.deploy(server_config(models, work / "tokens.yaml"), "autoscale.yaml")
        cluster.wait_running("vigil")
        cluster.wait_running("monitor")
        doc = scenario(args, cluster, models, token, time.monotonic())
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with procs.signals_deferred():
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    decisions(doc)
    checks = verdict(doc)
    doc.update({"checks": checks, "passed": all(checks.values()), "config": str(CONFIG),
                "machine": report.machine_info(None, REPO_ROOT),
                "elapsed_s": time.monotonic() - begun})
    report.finish(args.out, doc, {"autoscale": table(doc, checks)})
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
