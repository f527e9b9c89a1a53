"""Bounded state over many model versions: publish, canary, promote and retire, 200 times, under
light load, with alerts firing and webhooks delivered. Does anything grow with versions?

    python -m load_tests.bench_bounded [--cycles 200] [--sample-every 10] [--budget-s 2400]

A private Ray cluster (HAProxy, 2 ModelServer replicas, the Monitor) serves a temp `vigil examples
build` repository; a thread sends light load (about 20 one-row requests a second to
breast_cancer, unversioned: the canary gets its share); a receiver on 127.0.0.1 takes the
monitor's webhooks. The monitor closes a window every 2 s, and one alert rule fires on every
window with a request (latency above 0): each new version fires, so every cycle adds alert state
and an event with a delivery. Each cycle:

    publish the breast_cancer/1 files again as the next version  (vigil.core.repository.publish)
    the model gate on it (vigil.tools.model_gate.validate): canary and promote need its verdict
    POST .../load, then .../canary {version, weight 0.5}     the new version takes half the load
    2 s of load                                              its first windows close, it alerts
    POST .../promote {version}, 1 s of load, POST .../retire {previous production}

Sampled before the first cycle, every --sample-every cycles and at the end: the resident memory
of the replicas (sum) and of the Monitor, their open file descriptors, the outbox's rows (events,
deliveries by state, alert states) and file size, the versions the Monitor holds state for and
the versions each replica holds. Growth compares each measure's peak over the second half of the
cycles after cycle 20 (warm-up paid: glibc's arenas, first windows, the outbox's write-ahead log,
Ray's metric series) with its peak over the first half: the target is under 10% for each. Writes
load_tests/results/bounded.json. Exit status 0 when the run completed, whatever the numbers; 2
when the server could not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from load_tests import procs, report
from load_tests.targets import HOST, REPO_ROOT, RayPorts, StartError
from load_tests.versions_server import (
    MONITOR_TITLE,
    VersionsServer,
    begin_run,
    first_version,
    infer_body,
    log,
    proc_status,
    publish_copy,
)

MODEL = "breast_cancer"
TARGET_GROWTH = 0.10
WARM_CYCLE = 20
SECRET_ENV = "VIGIL_BENCH_BOUNDED_SECRET"
LOAD_PER_S = 20.0
# Apart from the other benchmarks' ports and the tests' direct-ingress range (32000-32999).
PORTS = RayPorts(
    gcs=6406, dashboard=8280, client_server=6507, dashboard_agent=52478, http=8125,
    haproxy_stats=8506, haproxy_metrics=9206, fallback_http=8606, fallback_grpc=9606,
    ingress_http_min=33000, ingress_grpc_min=43000,
)


# The outbox kept small, as a long-running monitor would keep it (the Monitor's args).
MONITOR_ARGS = {"outbox_retention_s": 60.0, "outbox_max_events": 200}


def monitor_user_config(receiver_port: int) -> dict[str, Any]:
    """Short windows, one rule that fires on every window with a request, and the receiver."""
    return {
        "window": {"rows": 200, "seconds": 2.0},
        "history": 20,
        "alerts": [{"name": "every-window", "when": {"latency_p99_above_s": 1e-9},
                    "min_requests": 1, "for_windows": 1, "resolve_windows": 1,
                    "cooldown_s": 0}],
        "webhooks": [{"name": "bench", "url": f"http://{HOST}:{receiver_port}/events",
                      "secret_env": SECRET_ENV, "timeout_s": 2.0, "backoff_s": 0.5}],
    }


class _Receiver(BaseHTTPRequestHandler):
    count = 0
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with _Receiver.lock:
            _Receiver.count += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start_receiver() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((HOST, 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Load:
    """Light load in a thread: one-row requests to MODEL, unversioned, at about `per_s`."""

    base_url: str
    body: bytes
    per_s: float = LOAD_PER_S
    statuses: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.wait(1.0 / self.per_s):
                try:
                    status = client.post(f"/v2/models/{MODEL}/infer", content=self.body,
                                         headers={"content-type": "application/json"}).status_code
                except httpx.HTTPError:
                    status = 0
                self.statuses[status] = self.statuses.get(status, 0) + 1


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def outbox_rows(path: Path) -> dict[str, int]:
    """Rows of the outbox's tables (read-only) and its files' bytes (database and WAL)."""
    out: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            out["events"] = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            for state, n in db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
                out[f"deliveries_{state}"] = n
            out["alert_states"] = db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        log(f"outbox not readable: {exc}")
    out["bytes"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return out


def sample(server: VersionsServer, outbox: Path, cycle: int, load: Load) -> dict[str, Any]:
    replicas = {pid: proc_status(pid) for pid in server.pids()}
    monitors = {pid: proc_status(pid) for pid in server.pids(MONITOR_TITLE)}
    status = server.client.get("/monitor/v1/status").json()
    doc = {
        "cycle": cycle,
        "replicas_rss_mib": round(sum(s.get("VmRSS", 0) for s in replicas.values()) / 1024, 1),
        "monitor_rss_mib": round(sum(s.get("VmRSS", 0) for s in monitors.values()) / 1024, 1),
        "replicas_fds": sum(fds(p) for p in replicas),
        "monitor_fds": sum(fds(p) for p in monitors),
        "outbox": outbox_rows(outbox),
        "monitor_versions": len(status.get("versions", [])),
        "replica_versions": {r: len(v) for r, v in server.loaded_by_replica().items()},
        "webhooks_received": _Receiver.count,
        "load": {str(status): n for status, n in load.statuses.items()},
    }
    log(f"cycle {cycle}: replicas {doc['replicas_rss_mib']} MiB, monitor "
        f"{doc['monitor_rss_mib']} MiB, fds {doc['replicas_fds']}/{doc['monitor_fds']}, outbox "
        f"{doc['outbox']}, monitor versions {doc['monitor_versions']}, replica versions "
        f"{doc['replica_versions']}, webhooks {doc['webhooks_received']}")
    return doc


@dataclass
class Cycles:
    server: VersionsServer
    repository: Path
    load: Load
    production: str = "1"
    next_version: int = 2
    problems: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cache: dict[Path, bytes] = field(default_factory=dict)

    def admin(self, cycle: int, action: str, **body: Any) -> None:
        answer = self.server.admin(MODEL, action, **body)
        if answer.status != 200 or not answer.doc.get("converged", True):
            self.problems.append(f"cycle {cycle} {action} {body}: HTTP {answer.status} "
                                 f"{answer.doc.get('error') or answer.doc.get('behind')}")
            log(f"PROBLEM: {self.problems[-1]}")

    def run(self, cycle: int) -> None:
        from vigil.tools import model_gate

        started = time.monotonic()
        version, previous = str(self.next_version), self.production
        self.next_version += 1
        publish_copy(self.repository, first_version(self.repository, MODEL), version, self.cache)
        verdict = model_gate.validate(self.repository, MODEL, version, actor="bench_bounded")
        if not verdict.get("passed"):
            self.problems.append(f"cycle {cycle}: the gate refused {version}: {verdict}")
        self.admin(cycle, "load")
        self.admin(cycle, "canary", version=version, weight=0.5, reason=f"cycle {cycle}")
        time.sleep(2.0)
        self.admin(cycle, "promote", version=version, reason=f"cycle {cycle}")
        time.sleep(1.0)
        self.admin(cycle, "retire", version=previous, reason=f"cycle {cycle}")
        self.production = version
        self.seconds.append(time.monotonic() - started)


MEASURES = {  # name -> how to read it from a sample
    "replicas RSS MiB": lambda s: s["replicas_rss_mib"],
    "monitor RSS MiB": lambda s: s["monitor_rss_mib"],
    "replicas fds": lambda s: s["replicas_fds"],
    "monitor fds": lambda s: s["monitor_fds"],
    "outbox events": lambda s: s["outbox"].get("events", 0),
    "outbox alert states": lambda s: s["outbox"].get("alert_states", 0),
    "outbox MiB": lambda s: round(s["outbox"].get("bytes", 0) / 2**20, 2),
    "monitor versions": lambda s: s["monitor_versions"],
    "replica versions (max)": lambda s: max(s["replica_versions"].values(), default=0),
}


def growth(samples: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each measure's peak over the first half of the cycles after warm-up (from cycle
    WARM_CYCLE) and over the second half, and the growth between the peaks; the value at the
    warm sample and at the end besides. Peaks, not single samples: versions, alert states and
    outbox events rise and fall as the monitor's sweep (every 30 s) and the outbox's retention
    run, a sawtooth that one sample would catch at any height."""
    after = [s for s in samples if s["cycle"] >= WARM_CYCLE]
    if len(after) < 2:
        return {}
    middle = (after[0]["cycle"] + after[-1]["cycle"]) / 2
    first = [s for s in after if s["cycle"] <= middle]
    second = [s for s in after if s["cycle"] > middle]
    out: dict[str, dict[str, Any]] = {}
    for name, read in MEASURES.items():
        before, late = max(float(read(s)) for s in first), max(float(read(s)) for s in second)
        change = (late - before) / before if before else (0.0 if late == before else float("inf"))
        out[name] = {"warm": float(read(after[0])), "end": float(read(after[-1])),
                     "peak_first_half": before, "peak_second_half": late,
                     "growth": round(change, 4), "within_target": change < TARGET_GROWTH}
    return out


def render(samples: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    names = list(MEASURES)
    lines = ["cycle " + " ".join(f"{n:>14}" for n in names)]
    for s in samples:
        lines.append(f"{s['cycle']:>5} " + " ".join(f"{MEASURES[n](s):>14}" for n in names))
    lines.append("")
    for name, g in summary.items():
        verdict = "met" if g["within_target"] else "NOT met"
        lines.append(f"{name:<24} peak {g['peak_first_half']:>9g} -> {g['peak_second_half']:>9g}"
                     f" ({g['growth'] * 100:+6.1f}%; target < {TARGET_GROWTH * 100:.0f}%: "
                     f"{verdict}); cycle {WARM_CYCLE} {g['warm']:g}, end {g['end']:g}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m load_tests.bench_bounded",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=2400.0,
                        help="stop the cycles after this long (noted); the end sample follows")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "load_tests" / "results" / "bounded.json")
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dir in /tmp")
    args = parser.parse_args(argv)
    if not (WARM_CYCLE < args.cycles <= 1000 and 1 <= args.sample_every <= args.cycles
            and 60 <= args.budget_s <= 7200):
        parser.error(f"bounds: cycles {WARM_CYCLE + 1}-1000, sample-every 1 to cycles, "
                     "budget-s 60-7200")
    return args


@dataclass
class Run:
    """One run: the server, its load and cycles, what was sampled and noted."""

    args: argparse.Namespace
    server: VersionsServer
    samples: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cycles: Cycles | None = None
    load: Load | None = None

    def go(self) -> None:
        """Start the server and the load, then the cycles, sampling as they go."""
        repository = self.server.start()
        outbox = repository.parent / "vigil-outbox.sqlite"
        self.load = Load(str(self.server.client.base_url),
                         infer_body(first_version(repository, MODEL)))
        threading.Thread(target=self.load.run, daemon=True).start()
        self.cycles = Cycles(self.server, repository, self.load)
        time.sleep(5.0)
        self.samples.append(sample(self.server, outbox, 0, self.load))
        deadline = time.monotonic() + self.args.budget_s
        for i in range(1, self.args.cycles + 1):
            if time.monotonic() > deadline:
                self.notes.append(f"time budget of {self.args.budget_s:g} s spent after "
                                  f"{i - 1} cycles")
                break
            self.cycles.run(i)
            if i % self.args.sample_every == 0 or i == self.args.cycles:
                self.samples.append(sample(self.server, outbox, i, self.load))

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop.set()
        with procs.signals_deferred():
            self.notes[:0] = self.server.notes
            self.notes.extend(self.server.stop())

    def document(self, info: dict[str, Any], subreaper: bool, elapsed_s: float) -> dict[str, Any]:
        cycles = self.cycles
        return {
            "machine": info,
            "setup": {"model": MODEL, "cycles": self.args.cycles, "load_per_s": LOAD_PER_S,
                      "monitor_user_config": self.server.monitor_user_config,
                      "monitor_args": MONITOR_ARGS, "ports": vars(PORTS),
                      "subreaper": subreaper},
            "summary": growth(self.samples),
            "samples": self.samples,
            "cycle_s_median": (round(statistics.median(cycles.seconds), 2)
                               if cycles and cycles.seconds else None),
            "problems": cycles.problems if cycles else [],
            "notes": self.notes,
            "elapsed_s": round(elapsed_s, 1),
        }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    subreaper, started, info = begin_run()
    receiver = start_receiver()
    server = VersionsServer("bounded", PORTS, keep_logs=args.keep_logs)
    server.monitor_user_config = monitor_user_config(receiver.server_address[1])
    server.monitor_args = MONITOR_ARGS
    run, exit_code = Run(args, server), 0
    try:
        run.go()
    except StartError as exc:
        run.notes.append(f"could not start: {exc}")
        exit_code = 2
    except KeyboardInterrupt:
        run.notes.append("interrupted")
        exit_code = 130
    finally:
        run.stop()
        receiver.shutdown()
    doc = run.document(info, subreaper, time.monotonic() - started)
    if run.samples:
        print()
        print(render(run.samples, doc["summary"]))
    report.finish(args.out, doc, {"problems": doc["problems"], "notes": run.notes})
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
