"""`make soak`: hours of mixed load at 70% of the measured throughput, every Vigil process watched.

    make soak                    # 10 minutes, a row every 60 s
    make soak SOAK_S=21600       # six hours
    python -m load_tests.soak --seconds 120 --interval 10 --warmup 30

A private `make serve`-style server on loopback (configs/serve.yaml with HAProxy and the
Makefile's HAProxy limits, tokens on, the monitor's shipped alert rules, and a webhook target: a
receiver in this process). First the throughput of the mix (breast_cancer and mlp, 1 and 1024 rows,
JSON and binary) is measured with 8 clients in a closed loop; then the same mix is sent at 70% of
it (open loop, at most 64 clients). Every interval it records throughput, p50/p99, errors, the RSS,
CPU and open file descriptors of every Vigil process (model replicas, monitor, alias board,
HAProxy, Serve's proxy actor and controller), the outbox's events, pending deliveries and bytes,
and the monitor's window lag (now minus its last closed window).

Pass: zero errors; the last interval's p99 within 1.5x of the first's; every process's RSS grows
less than 10% after the warm-up; its open file descriptors flat: counted with no load before the
soak and once its connections have closed after it (45 s at most), at most 8, or 10%, more (under
load they follow the open connections, which follow latency); no process replaced. The machine's
busy share is recorded beside Vigil's own CPU, since other work on the machine shows in latency.
Prints a table and the verdict, writes load_tests/results/soak.csv, soak.png (throughput, p99 and
RSS per process against time) and soak.json. Everything it started is ended, whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import csv
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from load_tests import procs, report
from load_tests.loadgen import Body, Load, build_bodies, measure_throughput, percentile_ms
from load_tests.targets import (
    HOST,
    REPO_ROOT,
    VIGIL_CONFIG,
    RayCluster,
    RayPorts,
    StartError,
    http_call,
    vigil_config,
)

PORTS = RayPorts(gcs=6422, dashboard=8292, client_server=6522, dashboard_agent=52492, http=8142,
                 haproxy_stats=8522, haproxy_metrics=9222, fallback_http=8622,
                 fallback_grpc=9622, ingress_http_min=35000, ingress_grpc_min=45000)
SECRET_ENV = "VIGIL_SOAK_WEBHOOK_SECRET"
# Process roles by the title Ray gives the worker (or the executable's name, for HAProxy).
ROLES = (
    ("replica", "ServeReplica:vigil:ModelServer"),
    ("monitor", "ServeReplica:monitor:Monitor"),
    ("alias_board", "ray::_Board"),  # vigil.adapters.alias_board: ray.remote(_Board)
    ("controller", "ServeController"),
    ("proxy", "ProxyActor"),
)
RSS_GROWTH_MAX = 0.10
P99_RATIO_MAX = 1.5
FD_SLACK = 8  # descriptors a process may gain over the soak (or 10%, whichever is more)
QUIET_S = 3.0  # with no load, before the soak and after it, before fds are counted
# After the soak, how long connections get to close: HAProxy keeps idle connections to the
# replicas for reuse until the replicas close them (http_options.keep_alive_timeout_s, 30 s).
SETTLE_S = 45.0
OUTBOX_METRICS = ("vigil_webhook_outbox_events", "vigil_webhook_outbox_pending",
                  "vigil_webhook_outbox_bytes")


# ---------------------------------------------------------------- what is watched


def vigil_processes(pids: list[int]) -> dict[str, int]:
    """role name -> pid for the Vigil processes among `pids`: replica-1.., monitor, alias_board,
    controller, proxy, haproxy (numbered from the second one of a role on, by pid)."""
    found: dict[str, list[int]] = {}
    for pid in sorted(pids):
        line = procs.cmdline(pid)
        role = next((r for r, title in ROLES if title in line), None)
        if role is None and procs.comm(pid) == "haproxy":
            role = "haproxy"
        if role is not None:
            found.setdefault(role, []).append(pid)
    named: dict[str, int] = {}
    for role, members in found.items():
        for i, pid in enumerate(members, 1):
            named[role if role != "replica" and i == 1 else f"{role}-{i}"] = pid
    return named


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def monitor_figures(port: int, token: str | None) -> dict[str, float | None]:
    """Outbox size and window lag from the monitor's /monitor/metrics (None when not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out: dict[str, float | None] = {name: None for name in OUTBOX_METRICS}
    out["window_lag_s"] = out["samples_dropped"] = None
    try:
        status, _, body = http_call(port, "GET", "/monitor/metrics", headers=headers, timeout_s=10)
    except OSError:
        return out
    if status != 200:
        return out
    last_window = None
    dropped = 0.0
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in OUTBOX_METRICS:
                out[sample.name] = (out[sample.name] or 0.0) + sample.value
            elif sample.name == "vigil_last_window_timestamp_seconds":
                last_window = max(last_window or 0.0, sample.value)
            elif sample.name.startswith("vigil_sample_") and "_dropped" in sample.name:
                dropped += sample.value
    out["window_lag_s"] = None if last_window is None else round(time.time() - last_window, 1)
    out["samples_dropped"] = dropped
    return out


class Watcher:
    """Per process: RSS (MiB), CPU (% of one core since the last row) and open fds."""

    def __init__(self, find_pids: Callable[[], list[int]]) -> None:
        self.find_pids = find_pids
        self.ticks: dict[int, tuple[float, int]] = {}
        self.seen: dict[str, int] = {}  # role name -> first pid seen
        self.replaced: list[str] = []
        self.fds_before: dict[str, int | None] = {}  # with no load, before and after the soak
        self.fds_after: dict[str, int | None] = {}
        self.machine = (time.monotonic(), procs.machine_busy_ticks())

    def machine_busy_pct(self) -> float:
        """How busy all cores were since the last call (everyone's load: other work on the
        machine shows here, and in latency, not in Vigil's own CPU)."""
        then, before = self.machine
        self.machine = (time.monotonic(), procs.machine_busy_ticks())
        cores = os.cpu_count() or 1
        seconds = max(self.machine[0] - then, 1e-3)
        return round(100 * (self.machine[1] - before) / procs.CLOCK_TICKS / seconds / cores, 1)

    def sample(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        now = time.monotonic()
        for name, pid in vigil_processes(self.find_pids()).items():
            if self.seen.setdefault(name, pid) != pid:
                self.replaced.append(f"{name}: pid {self.seen[name]} -> {pid}")
                self.seen[name] = pid
            memory = procs.memory_kib(pid)
            ticks = procs.cpu_ticks(pid)
            cpu = None
            if ticks is not None and pid in self.ticks:
                then, before = self.ticks[pid]
                cpu = round(100 * (ticks - before) / procs.CLOCK_TICKS / max(now - then, 1e-3), 1)
            if ticks is not None:
                self.ticks[pid] = (now, ticks)
            out[name] = {"rss_mib": round(memory["VmRSS"] / 1024, 1) if memory else None,
                         "cpu_pct": cpu, "fds": open_fds(pid), "pid": pid}
        return out


# ---------------------------------------------------------------- the soak itself


def run_soak(port: int, token: str | None, bodies: list[Body], find_pids: Callable[[], list[int]],
             rate: float, seconds: float, interval_s: float, concurrency: int = 64,
             on_row: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[dict], Watcher]:
    """`rate` requests a second of `bodies` for `seconds`; a row every `interval_s`."""
    watcher = Watcher(find_pids)
    watcher.sample()  # CPU baselines
    time.sleep(QUIET_S)
    watcher.fds_before = {n: p["fds"] for n, p in watcher.sample().items()}
    load = Load(port, bodies, concurrency, rate=rate).start()
    rows: list[dict[str, Any]] = []
    begun = time.monotonic()
    try:
        while (elapsed := time.monotonic() - begun) < seconds - 1e-6:
            time.sleep(max(0.0, min(interval_s * (len(rows) + 1), seconds) - elapsed))
            record = load.take()
            t = time.monotonic() - begun
            span = t - (rows[-1]["t_s"] if rows else 0.0)
            row: dict[str, Any] = {
                "t_s": round(t, 1), "requests": len(record.latencies) + len(record.failures),
                "throughput_rps": round(len(record.latencies) / span, 1),
                "p50_ms": percentile_ms(record.latencies, 50),
                "p99_ms": percentile_ms(record.latencies, 99),
                "errors": len(record.failures), "late": record.late,
                "failures": record.failures[:5],
                "processes": watcher.sample(), **monitor_figures(port, token),
            }
            row["machine_busy_pct"] = watcher.machine_busy_pct()
            row["vigil_cpu_pct"] = round(sum(p["cpu_pct"] or 0.0
                                             for p in row["processes"].values()), 1)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        load.stop()
    last = load.take()  # requests in flight at the end still count
    if rows and (last.failures or last.latencies):
        rows[-1]["errors"] += len(last.failures)
        rows[-1]["failures"] += last.failures[:5]
    # Open descriptors follow open connections, and those follow latency (a stall opens more
    # clients): leaks are judged with no load, before and after, once connections are closed.
    deadline = time.monotonic() + SETTLE_S
    while True:
        time.sleep(QUIET_S)
        watcher.fds_after = {n: p["fds"] for n, p in watcher.sample().items()}
        if all(fds_flat(watcher.fds_before.get(n), f) for n, f in watcher.fds_after.items()) \
                or time.monotonic() > deadline:
            return rows, watcher


def fds_flat(before: int | None, after: int | None) -> bool:
    return before is None or after is None or after <= before + max(FD_SLACK, 0.1 * before)


def verdict(rows: list[dict[str, Any]], warmup_s: float, watcher: Watcher) -> dict[str, Any]:
    """The pass criteria over the rows; each check with its figures."""
    replaced = watcher.replaced
    errors = sum(r["errors"] for r in rows)
    p99_first, p99_last = rows[0]["p99_ms"], rows[-1]["p99_ms"]
    base = next((r for r in rows if r["t_s"] >= warmup_s - 1e-6), rows[0])
    if base is rows[-1] and len(rows) > 1:
        base = rows[-2]
    growth: dict[str, dict[str, Any]] = {}
    for name, now in rows[-1]["processes"].items():
        then = base["processes"].get(name)
        if not then or then["rss_mib"] is None or now["rss_mib"] is None:
            continue
        peak = max(r["processes"].get(name, {}).get("rss_mib") or 0.0
                   for r in rows if r["t_s"] >= base["t_s"])
        fd0, fd1 = watcher.fds_before.get(name), watcher.fds_after.get(name)
        growth[name] = {"rss_base_mib": then["rss_mib"], "rss_last_mib": now["rss_mib"],
                        "rss_peak_mib": peak,
                        "rss_growth": round(now["rss_mib"] / then["rss_mib"] - 1, 4),
                        "fds_before": fd0, "fds_after": fd1,
                        "fds_peak": max(r["processes"].get(name, {}).get("fds") or 0
                                        for r in rows),
                        "fds_flat": fds_flat(fd0, fd1)}
    p99_ratio = None if not (p99_first and p99_last) else round(p99_last / p99_first, 2)
    checks = {
        "zero errors": errors == 0,
        f"last p99 within {P99_RATIO_MAX}x of the first": p99_ratio is not None
        and p99_ratio <= P99_RATIO_MAX,
        f"RSS growth under {RSS_GROWTH_MAX:.0%} after warm-up": bool(growth)
        and all(g["rss_growth"] < RSS_GROWTH_MAX for g in growth.values()),
        "file descriptors flat (no load, before and after)": bool(growth) and all(g["fds_flat"] for g in growth.values()),
        "no process replaced": not replaced,
    }
    return {"passed": all(checks.values()), "checks": checks, "errors": errors,
            "requests": sum(r["requests"] for r in rows), "p99_first_ms": p99_first,
            "p99_last_ms": p99_last, "p99_ratio": p99_ratio, "baseline_t_s": base["t_s"],
            "processes": growth, "replaced": replaced}


def row_line(row: dict[str, Any]) -> str:
    rss = " ".join(f"{n}={p['rss_mib']}" for n, p in sorted(row["processes"].items()))
    return (f"t={row['t_s']:>7.0f}s {row['throughput_rps']:>7.1f} req/s p50 {row['p50_ms']} ms "
            f"p99 {row['p99_ms']} ms errors {row['errors']} late {row['late']} "
            f"outbox {row.get('vigil_webhook_outbox_events')} lag {row.get('window_lag_s')}s "
            f"cpu: machine {row.get('machine_busy_pct')}% vigil {row.get('vigil_cpu_pct')}% "
            f"| RSS MiB {rss}")


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{'process':<14} {'RSS base':>9} {'RSS last':>9} {'peak':>8} {'growth':>8} "
             f"{'fds before':>10} {'fds after':>9} {'fds peak':>8}"]
    for name, g in sorted(result["processes"].items()):
        lines.append(f"{name:<14} {g['rss_base_mib']:>9} {g['rss_last_mib']:>9} "
                     f"{g['rss_peak_mib']:>8} {g['rss_growth']:>+8.1%} {g['fds_before']!s:>10} "
                     f"{g['fds_after']!s:>9} {g['fds_peak']!s:>8}")
    lines.append(f"requests {result['requests']}, errors {result['errors']}, p99 first "
                 f"{result['p99_first_ms']} ms, last {result['p99_last_ms']} ms "
                 f"(x{result['p99_ratio']}); RSS baseline at t={result['baseline_t_s']:.0f}s")
    for check, ok in result["checks"].items():
        lines.append(f"{'PASS' if ok else 'FAIL'}  {check}")
    lines.append("PASS" if result["passed"] else "FAIL")
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    names = sorted({n for r in rows for n in r["processes"]})
    fixed = ["t_s", "requests", "throughput_rps", "p50_ms", "p99_ms", "errors", "late",
             *OUTBOX_METRICS, "window_lag_s", "samples_dropped", "machine_busy_pct",
             "vigil_cpu_pct"]
    columns = fixed + [f"{n}.{k}" for n in names for k in ("rss_mib", "cpu_pct", "fds")]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in rows:
            writer.writerow([r.get(c) for c in fixed]
                            + [r["processes"].get(n, {}).get(k) for n in names
                               for k in ("rss_mib", "cpu_pct", "fds")])


def write_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    minutes = [r["t_s"] / 60 for r in rows]
    fig, (a, b, c) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    a.plot(minutes, [r["throughput_rps"] for r in rows], marker=".")
    a.set_ylabel("answered req/s")
    b.plot(minutes, [r["p99_ms"] for r in rows], marker=".", label="p99")
    b.plot(minutes, [r["p50_ms"] for r in rows], marker=".", label="p50")
    b.set_ylabel("latency (ms)")
    b.legend()
    for name in sorted({n for r in rows for n in r["processes"]}):
        c.plot(minutes, [r["processes"].get(name, {}).get("rss_mib") for r in rows], marker=".",
               label=name)
    c.set_ylabel("RSS (MiB)")
    c.set_xlabel("minutes")
    c.legend(fontsize="small", ncol=3)
    fig.suptitle("Vigil soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- a private server


class Receiver:
    """A webhook receiver in this process: answers 204 and counts what arrives."""

    def __init__(self) -> None:
        counts = self.counts = {"events": 0}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                counts["events"] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def server_config(models: Path, tokens: Path, receiver_port: int) -> dict[str, Any]:
    """configs/serve.yaml on the soak's ports, tokens on, one webhook target (the receiver)."""
    config = vigil_config(PORTS, batching_enabled=True)
    shipped = yaml.safe_load(VIGIL_CONFIG.read_text())
    for app in config["applications"]:
        app["args"]["model_repository"] = str(models)
        app["args"]["tokens_file"] = str(tokens)
        if app["name"] == "monitor":
            (deployment,) = app["deployments"]
            (original,) = next(a for a in shipped["applications"]
                               if a["name"] == "monitor")["deployments"]
            deployment["user_config"] = {
                **original["user_config"],
                "webhooks": [{"name": "soak", "url": f"http://{HOST}:{receiver_port}/events",
                              "secret_env": SECRET_ENV, "timeout_s": 5}]}
    return config


def cluster_environment() -> dict[str, str]:
    """As the Makefile runs Serve: HAProxy's limits and header timeout, and 2 s of draining."""
    from load_tests.abuse import haproxy_limits

    return {**haproxy_limits(), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"}


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = argparse.ArgumentParser(prog="python -m load_tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float,
                        default=float(os.environ.get("SOAK_S") or 600), help="(SOAK_S)")
    parser.add_argument("--interval", type=float,
                        default=float(os.environ.get("SOAK_INTERVAL_S") or 60))
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before the RSS and fd baseline (default: 20%% of the run, "
                             "at least one interval)")
    parser.add_argument("--load", type=float, default=0.7, help="share of measured throughput")
    parser.add_argument("--measure-s", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "load_tests" / "results")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(args.interval, 0.2 * args.seconds)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    procs.become_subreaper()
    begun = time.monotonic()
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    os.environ.pop("VIGIL_TOKENS_FILE", None)
    work = Path(tempfile.mkdtemp(prefix="vigil-soak-"))
    cluster = RayCluster("soak", PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2,
                         extra_env=cluster_environment())
    receiver = Receiver()
    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {"machine": report.machine_info(None, REPO_ROOT)}
    try:
        from vigil.core.tokens import create_token
        from vigil.tools.examples import build_examples

        models = work / "models"
        build_examples(models)
        token = create_token(work / "tokens.yaml", "soak", frozenset({"infer", "monitor"}))
        cluster.start()
        cluster.deploy(server_config(models, work / "tokens.yaml", receiver.port), "soak.yaml")
        cluster.wait_running("vigil")
        cluster.wait_running("monitor")
        bodies = build_bodies(models, token)
        capacity = measure_throughput(PORTS.http, bodies, 8, args.measure_s)
        rate = args.load * capacity
        print(f"measured {capacity:.1f} req/s with 8 clients; soak at {rate:.1f} req/s for "
              f"{args.seconds:.0f}s, a row every {args.interval:.0f}s, warm-up {warmup:.0f}s",
              flush=True)
        rows, watcher = run_soak(PORTS.http, token, bodies, cluster.cluster_pids, rate,
                                 args.seconds, args.interval,
                                 on_row=lambda r: print(row_line(r), flush=True))
        result = verdict(rows, warmup, watcher)
        doc.update({"capacity_rps": round(capacity, 1), "rate_rps": round(rate, 1),
                    "seconds": args.seconds, "interval_s": args.interval, "warmup_s": warmup,
                    "webhook_events_received": receiver.counts["events"], "result": result,
                    "rows": rows})
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        with procs.signals_deferred():
            receiver.stop()
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    write_csv(rows, args.out / "soak.csv")
    plot = write_plot(rows, args.out / "soak.png")
    doc["elapsed_s"] = time.monotonic() - begun
    report.finish(args.out / "soak.json", doc, {"soak": summary_lines(result)})
    print(f"wrote {args.out / 'soak.csv'}" + (f" and {plot}" if plot else ""))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
