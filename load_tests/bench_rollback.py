"""Promote and rollback under load: command time, how soon clients see it, cost vs a baseline.

    python -m load_tests.bench_rollback [--duration 30] [--concurrency 32] [--rounds 2]

Order: `vigil examples build` into a temp dir; a private Ray cluster with HAProxy on its own
ports, configs/serve.yaml deployed (2 ModelServer replicas) on that repository; breast_cancer's
ONNX bytes (and its profile and held-out files) published again as version 2, passed through the
model gate (vigil.tools.model_gate, as `vigil models validate` does), POST .../load; then --rounds
rounds, each one baseline window and one change window of --duration s (order alternating
between rounds, so drift of a shared machine touches both alike). In every window a child
process runs --concurrency clients (asyncio, one keep-alive connection each, 1-row JSON,
production traffic: no version in the URL) for --warmup + --duration s; in a change window this
process sends promote 2 / rollback alternately every --interval s (an even count: each window
ends on version 1).

Per command: client-observed time from sending it to its answer, the server's applied_s, the
requests sent while it was in flight (old/new version), and for the requests sent after its
answer and answered before the next command was sent: how many got the old version (must be
0), how many failed, and how soon the first of them was answered by the new version. Per
window: requests, failed (non-200 or transport errors; must be 0), req/s, p50/p99; and the
change windows' ratio to the baseline of the same round. Writes load_tests/results/rollback.json.
Exit status 0 when the run completed, whatever the numbers; 2 when the server could not start;
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from load_tests import procs
from load_tests.bench_stall import CpuMeter
from load_tests.loadgen import read_response
from load_tests.targets import HOST, REPO_ROOT, RayPorts, StartError
from load_tests.versions_server import (
    begin_run,
    VersionsServer,
    first_version,
    infer_body,
    log,
    publish_copy,
    validate_for_promotion,
)

MODEL = "breast_cancer"
OLD, NEW = "1", "2"
# Apart from bench.py's, bench_stall.py's and bench_model_memory.py's ports.
PORTS = RayPorts(
    gcs=6396,
    dashboard=8271,
    client_server=6497,
    dashboard_agent=52470,
    http=8106,
    haproxy_stats=8498,
    haproxy_metrics=9195,
    fallback_http=8594,
    fallback_grpc=9594,
    ingress_http_min=32500,
    ingress_grpc_min=42500,
)
NEAR_COMMAND_S = 1.0  # "near a command": sent between its send and this long after its answer


# ---------------------------------------------------------------- the load (child process)


def versioned_load(
    port: int,
    model: str,
    body: bytes,
    concurrency: int,
    start_at: float,
    stop_at: float,
    nice: int | None,
) -> dict[str, Any]:
    """`concurrency` asyncio clients, one keep-alive connection each, from start_at to stop_at
    (time.monotonic(), the same clock in every process here): each request's send and answer
    times, status and answering version."""
    if nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    return asyncio.run(_load(port, model, body, concurrency, start_at, stop_at))


class _Connection:
    """A bare HTTP/1.1 keep-alive client on asyncio streams. httpx's AsyncClient spent ~5 ms of
    CPU per request here, more than the two replicas together, on a machine of two cores; this
    one spends a fraction of that, so the server gets the CPU the numbers are about."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port = port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        status, payload, close = await read_response(self.reader)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _load(
    port: int, model: str, body: bytes, concurrency: int, start_at: float, stop_at: float
) -> dict[str, Any]:
    sent: list[float] = []
    done: list[float] = []
    status: list[int] = []
    version: list[str | None] = []
    errors: Counter[str] = Counter()
    path = f"/v2/models/{model}/infer"

    async def worker() -> None:
        connection = _Connection(port, path, body)
        while (t0 := time.monotonic()) < stop_at:
            try:
                code, payload = await asyncio.wait_for(connection.post(), 30)
                t1 = time.monotonic()
                v = orjson.loads(payload).get("model_version") if code == 200 else None
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                TimeoutError,
                ValueError,
            ) as exc:
                t1, code, v = time.monotonic(), -1, None
                errors[type(exc).__name__] += 1
                connection.close()
            sent.append(t0)
            done.append(t1)
            status.append(code)
            version.append(v)
        connection.close()

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "sent": sent,
        "done": done,
        "status": status,
        "version": version,
        "errors": dict(errors),
    }


# ---------------------------------------------------------------- analysis


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def window_stats(
    raw: dict[str, Any], measure_from: float, stop_at: float, duration: float
) -> dict[str, Any]:
    sent = np.asarray(raw["sent"])
    done = np.asarray(raw["done"])
    status = np.asarray(raw["status"])
    version = np.asarray([v or "" for v in raw["version"]])
    measured = sent >= measure_from
    ok = measured & (status == 200)
    latency_ms = (done[ok] - sent[ok]) * 1000
    failed_all = status != 200
    return {
        "requests": int(measured.sum()),
        "failed": int((measured & failed_all).sum()),
        "failed_in_warmup": int((~measured & failed_all).sum()),
        "statuses": {str(k): int(v) for k, v in sorted(Counter(status[measured].tolist()).items())},
        "transport_errors": raw["errors"],
        "req_s": _round(int(measured.sum()) / duration, 1),
        "p50_ms": _round(_pct(latency_ms, 50)),
        "p99_ms": _round(_pct(latency_ms, 99)),
        "max_ms": _round(float(latency_ms.max()) if len(latency_ms) else None),
        "versions": {
            k or "none": int(v) for k, v in sorted(Counter(version[measured].tolist()).items())
        },
    }


def command_stats(raw: dict[str, Any], commands: list[dict[str, Any]]) -> None:
    """Adds to each command what the clients saw around it (times in ms from its answer)."""
    sent = np.asarray(raw["sent"])
    done = np.asarray(raw["done"])
    status = np.asarray(raw["status"])
    version = np.asarray([v or "" for v in raw["version"]])
    for i, c in enumerate(commands):
        t_sent, t_ans, expected = c["_sent"], c["_answered"], c["expect_version"]
        # A request sent after this answer but answered after the next command was sent may
        # rightly carry the next command's version: such requests are counted apart, not judged.
        until = commands[i + 1]["_sent"] if i + 1 < len(commands) else float("inf")
        during = (sent >= t_sent) & (sent <= t_ans)
        after = (sent > t_ans) & (done < until)
        c["after_straddling_next_command"] = int(
            ((sent > t_ans) & (sent < until) & (done >= until)).sum()
        )
        fresh = after & (version == expected)
        c["in_flight_requests"] = {
            k or "failed": int(v) for k, v in sorted(Counter(version[during].tolist()).items())
        }
        c["after_requests"] = int(after.sum())
        c["after_old_version"] = int((after & (status == 200) & (version != expected)).sum())
        c["after_failed"] = int((after & (status != 200)).sum())
        if after.any():
            first = int(np.flatnonzero(after)[np.argmin(sent[after])])
            c["first_after_version"] = str(version[first]) or None
        else:
            c["first_after_version"] = None
        stale = np.flatnonzero(after & (status == 200) & (version != expected))
        # Evidence for a stale answer: when it was sent and answered (ms from the command's
        # answer), and which version answered; the first 10 by send time.
        c["after_old_examples"] = [
            {
                "sent_ms": round(float(sent[j] - t_ans) * 1000, 2),
                "answered_ms": round(float(done[j] - t_ans) * 1000, 2),
                "version": str(version[j]),
            }
            for j in stale[np.argsort(sent[stale])][:10]
        ]
        if fresh.any():
            first = int(np.flatnonzero(fresh)[np.argmin(sent[fresh])])
            c["first_new_sent_after_answer_ms"] = round(float(sent[first] - t_ans) * 1000, 3)
            c["first_new_answered_after_answer_ms"] = round(float(done[first] - t_ans) * 1000, 3)
        else:
            c["first_new_sent_after_answer_ms"] = c["first_new_answered_after_answer_ms"] = None
        # When clients first saw the new version at all, counted from sending the command.
        seen = (sent >= t_sent) & (done < until) & (version == expected)
        c["new_version_first_seen_after_send_ms"] = (
            round(float(done[seen].min() - t_sent) * 1000, 2) if seen.any() else None
        )
        near = (sent >= t_sent) & (sent <= t_ans + NEAR_COMMAND_S) & (status == 200)
        c["p99_ms_near_command"] = _round(_pct((done[near] - sent[near]) * 1000, 99))


# ---------------------------------------------------------------- the run


class Run:
    def __init__(
        self,
        args: argparse.Namespace,
        server: VersionsServer,
        pool: ProcessPoolExecutor,
        body: bytes,
        nice: int | None,
        problems: list[str],
        force: bool = False,
    ) -> None:
        self.args, self.server, self.pool, self.body, self.nice = args, server, pool, body, nice
        self.force = force  # promote with force (and a reason): the version failed the gate
        self.problems = problems

    def load(self, start_at: float, stop_at: float) -> Any:
        return self.pool.submit(
            versioned_load,
            PORTS.http,
            MODEL,
            self.body,
            self.args.concurrency,
            start_at,
            stop_at,
            self.nice,
        )

    def window(self, kind: str, round_no: int) -> dict[str, Any]:
        a = self.args
        start_at = time.monotonic() + 0.5
        measure_from = start_at + a.warmup
        stop_at = measure_from + a.duration
        busy = procs.cpu_busy_fraction(0.25)
        meter = CpuMeter(self.server.cluster)
        future = self.load(start_at, stop_at)
        time.sleep(max(0.0, measure_from - time.monotonic()))
        meter.begin()
        commands: list[dict[str, Any]] = []
        if kind == "changes":
            count = 2 * int((a.duration / a.interval - 1) // 2)
            for k in range(count):
                time.sleep(max(0.0, measure_from + (k + 1) * a.interval - time.monotonic()))
                commands.append(self.command(k, round_no))
        time.sleep(max(0.0, stop_at - time.monotonic()))
        cores = meter.end()
        raw = future.result(timeout=a.warmup + a.duration + 120)
        stats = window_stats(raw, measure_from, stop_at, a.duration)
        command_stats(raw, commands)
        for c in commands:
            del c["_sent"], c["_answered"]
        result = {
            "kind": kind,
            "round": round_no,
            "cpu_busy_before": round(busy, 3),
            **stats,
            "cores": cores,
            "commands": commands,
        }
        log(
            f"round {round_no} {kind}: {stats['requests']} requests, {stats['failed']} failed, "
            f"{stats['req_s']:.0f} req/s, p50 {stats['p50_ms']} ms, p99 {stats['p99_ms']} ms, "
            f"versions {stats['versions']}; cores {cores}"
        )
        if stats["failed"] or stats["failed_in_warmup"]:
            self.problems.append(
                f"round {round_no} {kind}: {stats['failed']} failed requests "
                f"(+{stats['failed_in_warmup']} in warm-up): statuses "
                f"{stats['statuses']}, transport errors {stats['transport_errors']}"
            )
        if kind == "baseline" and set(stats["versions"]) - {OLD}:
            self.problems.append(f"round {round_no} baseline: versions {stats['versions']}")
        for c in commands:
            problems = []
            if c["http_status"] != 200:
                problems.append(f"HTTP {c['http_status']}: {c.get('error')}")
            if c["http_status"] == 200 and not c["converged"]:
                problems.append(f"not converged, behind {c['behind']}")
            if c["after_old_version"] or c["after_failed"]:
                problems.append(
                    f"{c['after_old_version']} old-version and {c['after_failed']} "
                    "failed answers to requests sent after the answer"
                )
            if problems:
                self.problems.append(
                    f"round {round_no} command {c['n']} {c['action']}: " + "; ".join(problems)
                )
        return result

    def command(self, k: int, round_no: int) -> dict[str, Any]:
        if k % 2 == 0:
            action, expect = "promote", NEW
            extra = {"force": True} if self.force else {}
            answer = self.server.admin(
                MODEL, "promote", version=NEW, reason=f"bench_rollback round {round_no}", **extra
            )
        else:
            action, expect = "rollback", OLD
            answer = self.server.admin(MODEL, "rollback", reason=f"bench_rollback round {round_no}")
        doc = answer.doc
        c = {
            "n": k + 1,
            "action": action,
            "expect_version": expect,
            "http_status": answer.status,
            "client_ms": round(answer.client_s * 1000, 2),
            "applied_ms": _round(doc["applied_s"] * 1000 if "applied_s" in doc else None),
            "converged": doc.get("converged"),
            "behind": doc.get("behind"),
            "replicas": doc.get("replicas"),
            "to_version": doc.get("to_version"),
            "generation": doc.get("generation"),
            "_sent": answer.sent,
            "_answered": answer.answered,
        }
        if answer.status != 200:
            c["error"] = doc.get("error")
        elif doc.get("to_version") != expect:
            c["error"] = f"answered to_version {doc.get('to_version')!r}, expected {expect!r}"
        return c


def summarize(windows: list[dict[str, Any]]) -> dict[str, Any]:
    by_kind = {k: [w for w in windows if w["kind"] == k] for k in ("baseline", "changes")}

    def med(kind: str, key: str) -> float | None:
        values = [w[key] for w in by_kind[kind] if w[key] is not None]
        return _round(statistics.median(values)) if values else None

    out: dict[str, Any] = {}
    for key in ("req_s", "p50_ms", "p99_ms"):
        base, changed = med("baseline", key), med("changes", key)
        paired = [
            c[key] / b[key]
            for b in by_kind["baseline"]
            for c in by_kind["changes"]
            if b["round"] == c["round"] and b[key] and c[key] is not None
        ]
        out[key] = {
            "baseline_median": base,
            "changes_median": changed,
            "ratio_of_medians": _round(changed / base, 3) if base and changed is not None else None,
            "ratio_per_round": [round(r, 3) for r in paired],
            "ratio_median_of_rounds": _round(statistics.median(paired), 3) if paired else None,
        }
    commands = [c for w in by_kind["changes"] for c in w["commands"]]

    def cmd_median(key: str) -> float | None:
        values = [c[key] for c in commands if c.get(key) is not None]
        return _round(statistics.median(values), 3) if values else None

    def cmd_max(key: str) -> float | None:
        values = [c[key] for c in commands if c.get(key) is not None]
        return _round(max(values), 3) if values else None

    out["commands"] = {
        "count": len(commands),
        "non_200": sum(c["http_status"] != 200 for c in commands),
        "not_converged": sum(c["http_status"] == 200 and not c["converged"] for c in commands),
        "wrong_to_version": sum(c["http_status"] == 200 and "error" in c for c in commands),
        "old_version_after_answer": sum(c["after_old_version"] for c in commands),
        "failed_after_answer": sum(c["after_failed"] for c in commands),
        **{
            f"{key}_median": cmd_median(key)
            for key in (
                "client_ms",
                "applied_ms",
                "first_new_sent_after_answer_ms",
                "first_new_answered_after_answer_ms",
                "new_version_first_seen_after_send_ms",
                "p99_ms_near_command",
            )
        },
        **{
            f"{key}_max": cmd_max(key)
            for key in ("client_ms", "applied_ms", "first_new_answered_after_answer_ms")
        },
    }
    out["requests"] = sum(w["requests"] for w in windows)
    out["failed"] = sum(w["failed"] + w["failed_in_warmup"] for w in windows)
    return out


def render(windows: list[dict[str, Any]], summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "commands (change windows; ms; 'after' = requests sent after the command's answer "
        "and answered before the next command was sent)",
        f"{'rnd':>3} {'#':>2} {'action':<8} {'to':>2} {'http':>4} {'conv':>4} "
        f"{'client':>8} {'applied':>8} {'in-flight old/new':>17} {'after':>6} {'old':>4} "
        f"{'fail':>4} {'1st new sent':>12} {'1st new answered':>16} {'p99 near':>9}",
    ]
    for w in windows:
        for c in w["commands"]:
            flight = c["in_flight_requests"]
            lines.append(
                f"{w['round']:>3} {c['n']:>2} {c['action']:<8} {c['expect_version']:>2} "
                f"{c['http_status']:>4} {('yes' if c['converged'] else 'NO'):>4} "
                f"{c['client_ms']:>8.1f} {_fmt(c['applied_ms'], 8)} "
                f"{flight.get(OLD, 0):>8}/{flight.get(NEW, 0):<8} {c['after_requests']:>6} "
                f"{c['after_old_version']:>4} {c['after_failed']:>4} "
                f"{_fmt(c['first_new_sent_after_answer_ms'], 12, 2)} "
                f"{_fmt(c['first_new_answered_after_answer_ms'], 16, 2)} "
                f"{_fmt(c['p99_ms_near_command'], 9)}"
            )
    lines += [
        "",
        f"windows (c={args.concurrency}, {args.duration:g} s measured after "
        f"{args.warmup:g} s warm-up)",
        f"{'rnd':>3} {'window':<9} {'requests':>8} {'failed':>6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'cores: replicas/client/others':>29}  "
        "versions",
    ]
    for w in windows:
        lines.append(
            f"{w['round']:>3} {w['kind']:<9} {w['requests']:>8} "
            f"{w['failed'] + w['failed_in_warmup']:>6} {w['req_s']:>8.1f} {_fmt(w['p50_ms'], 7)} "
            f"{_fmt(w['p99_ms'], 7)} {_fmt(w['max_ms'], 7)} "
            f"{w['cores']['replicas']:>11.2f}/{w['cores']['load_client']:.2f}/"
            f"{w['cores']['others']:<12.2f} {w['versions']}"
        )
    lines += ["", f"{'':<8} {'baseline':>9} {'changes':>9} {'ratio':>7} {'per round':>20}"]
    for key in ("req_s", "p50_ms", "p99_ms"):
        s = summary[key]
        lines.append(
            f"{key:<8} {_fmt(s['baseline_median'], 9)} {_fmt(s['changes_median'], 9)} "
            f"{_fmt(s['ratio_of_medians'], 7, 3)} {str(s['ratio_per_round']):>20}"
        )
    c = summary["commands"]
    lines += [
        "",
        f"commands: {c['count']}, non-200 {c['non_200']}, not converged "
        f"{c['not_converged']}, old version after answer {c['old_version_after_answer']}, "
        f"failed after answer {c['failed_after_answer']}; medians: client "
        f"{c['client_ms_median']} ms, applied {c['applied_ms_median']} ms, first new "
        f"answered {c['first_new_answered_after_answer_ms_median']} ms after the answer",
        f"requests: {summary['requests']}, failed {summary['failed']}",
    ]
    return "\n".join(lines)


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def match_server_niceness(server: VersionsServer) -> int | None:
    """This process and the load child at the replicas' nice value (Ray runs workers at 15): a
    client left at 0 would outrank the server it shares two cores with (as bench_stall does)."""
    values = {procs.niceness(p) for p in server.pids()} - {None}
    if len(values) != 1:
        return None
    (nice,) = values
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    return nice


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench_rollback",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per window")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--rounds", type=int, default=2, help="baseline + change window pairs (order alternates)"
    )
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between commands")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per window")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "load_tests" / "results" / "rollback.json"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dir in /tmp")
    args = parser.parse_args(argv)
    if not (
        1 <= args.concurrency <= 256
        and 5 <= args.duration <= 300
        and args.rounds >= 1
        and 0.5 <= args.interval <= args.duration / 3
    ):
        parser.error(
            "bounds: concurrency 1-256, duration 5-300 s, rounds >= 1, interval 0.5 s to duration/3"
        )

    subreaper, started, info = begin_run()
    server = VersionsServer("rollback", PORTS, keep_logs=args.keep_logs)
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    exit_code, windows, facts = 0, [], {}
    notes: list[str] = []  # facts of the run worth reading
    problems: list[str] = []  # what the server did wrong (its logs are kept then)
    try:
        repository = server.start()
        facts["replicas"] = server.replicas
        v1 = first_version(repository, MODEL)
        body = infer_body(v1)
        publish_copy(repository, v1, NEW)
        facts["gate"] = gate = validate_for_promotion(repository, MODEL, NEW)
        log(f"model gate on {MODEL}/{NEW}: {gate}")
        if not gate["passed"]:
            notes.append(
                f"{MODEL}/{NEW} did not pass the model gate ({gate}): promoted "
                "with force and a reason"
            )
        load = server.admin(MODEL, "load")
        facts["load"] = {
            "http_status": load.status,
            "client_ms": round(load.client_s * 1000, 1),
            **{k: load.doc.get(k) for k in ("converged", "applied_s", "replicas")},
        }
        log(f"published {MODEL}/{NEW} (v1's bytes) and POST load: {facts['load']}")
        facts["index"] = [
            {k: r[k] for k in ("version", "state", "aliases")}
            for r in server.index()
            if r["name"] == MODEL
        ]
        if load.status != 200 or [r["state"] for r in facts["index"]] != ["READY", "READY"]:
            raise StartError(f"{MODEL}/{NEW} not served after load: {load.doc} {facts['index']}")
        status, version = server.infer_version(MODEL, body)
        if (status, version) != (200, OLD):
            raise StartError(f"production answer before any change: {status} {version}")
        nice = match_server_niceness(server)
        facts["client_niceness"] = nice
        run = Run(args, server, pool, body, nice, problems, force=not gate["passed"])
        log(f"warm-up: c={args.concurrency} for {args.warmup:g} s (load runs at niceness {nice})")
        warm_start = time.monotonic() + 0.5
        run.load(warm_start, warm_start + args.warmup).result(timeout=args.warmup + 120)
        for r in range(1, args.rounds + 1):
            order = ("baseline", "changes") if r % 2 else ("changes", "baseline")
            for kind in order:
                windows.append(run.window(kind, r))
        aliases = server.client.get(f"/v2/repository/models/{MODEL}/aliases").json()
        facts["aliases_after"] = aliases.get("aliases")
    except StartError as exc:
        log(f"NOTE: could not start: {exc}")
        problems.append(f"could not start: {exc}")
        exit_code = 2
    except KeyboardInterrupt:
        notes.append("interrupted")
        exit_code = 130
    finally:
        try:
            with procs.signals_deferred():
                pool.shutdown(wait=True, cancel_futures=True)
                notes[:0] = server.notes
                if problems and not args.keep_logs:  # evidence for whoever reads the problems
                    server.cluster.keep_logs = True
                    notes.append(f"Ray logs kept in {server.log_dir()}")
                log(f"stopping the {server.cluster.label} Ray cluster")
                notes.extend(server.stop())
        except KeyboardInterrupt:
            exit_code = 130

    summary = summarize(windows) if windows else {}
    doc = {
        "machine": info,
        "setup": {
            "model": MODEL,
            "versions": [OLD, NEW],
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "interval_s": args.interval,
            "concurrency": args.concurrency,
            "load": "child process, asyncio clients (bare HTTP/1.1 on asyncio streams), one "
            "keep-alive connection each, "
            "1-row JSON to /v2/models/breast_cancer/infer via HAProxy on 127.0.0.1",
            "commands": "this process, httpx.Client, promote {version: 2} / rollback {} "
            "alternating every interval_s from warm-up end + interval_s",
            "vigil": "configs/serve.yaml via targets.vigil_config (batching and sampling on), "
            "model_repository a temp `vigil examples build`, RAY_SERVE_ENABLE_HA_PROXY=1, "
            "no tokens file (open to loopback)",
            "ports": vars(PORTS),
            "subreaper": subreaper,
        },
        "vigil": facts,
        "summary": summary,
        "windows": windows,
        "problems": problems,
        "notes": notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if windows:
        print()
        print(render(windows, summary, args))
    for title, lines in (("problems", problems), ("notes", notes)):
        if lines:
            print(f"\n{title}")
            for line in lines:
                print(f"  - {line}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {args.out} ({doc['elapsed_s']:.0f}s)")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
