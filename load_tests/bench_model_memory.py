"""Serving replicas' memory across model-version cycles: are retired versions' sessions given back?

    python -m load_tests.bench_model_memory [--cycles 50] [--control-cycles 5] [--budget-s 420]

Order: `vigil examples build` into a temp dir; a private Ray cluster with HAProxy on its own
ports, configs/serve.yaml deployed (2 ModelServer replicas) on that repository; then --cycles
cycles, each for breast_cancer and for mlp (9.5 MB of weights: its sessions dominate):

    publish the version-1 bytes again as the next version   (vigil.core.repository.publish)
    POST .../load                  every replica builds a session for it
    POST .../promote {version}     (with force and a reason: the copies carry no model-gate
                                    verdict, and mlp has no held-out set to earn one)
    4 infer requests               each must be answered by the new version
    POST .../rollback              back to the previous production, 2 infer requests checked
    POST .../promote {version}     again
    POST .../retire {previous}     its session is closed after the 5 s release grace

The replicas' resident memory (the sum of VmRSS of this cluster's ModelServer replica processes,
found by their Ray title; RssAnon and thread counts beside it) is read before the first cycle,
after --warmup-cycles (the baseline: first-use costs are paid by then: glibc's per-thread
arenas, as each version's batcher thread runs its model, up to the arena cap; two or three mlp
sessions alive at once while a cycle overlaps the previous one's release grace; Python's lazily
imported admin paths; Ray's metric series), every 10 cycles, and at the end; the baseline and
the end after --settle-s of quiet, so that the last retired sessions are past their grace.
Growth = end / baseline - 1 (target: under 10%). The cycles stop early, noted, once --budget-s
is spent: every admin call rescans the repository, so they slow down as versions accumulate.

Control (what memory would be if sessions were never released): --control-cycles more cycles
with the retire step skipped, then the settled RSS again; its rise per cycle, times the cycles
run, is the estimate for a run that never releases. Then those versions are retired and, after
--settle-s, RSS once more (whether released memory goes back to the OS or only to the
allocator). Each sample also records the versions each replica holds (/v2/vigil/batching).
Writes load_tests/results/model_memory.json. Exit status 0 when the run completed, whatever
the numbers; 2 when the server could not start; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any


from load_tests import procs, report
from load_tests.targets import REPO_ROOT, RayPorts, StartError
from load_tests.versions_server import (
    begin_run,
    MONITOR_TITLE,
    VersionsServer,
    first_version,
    infer_body,
    log,
    publish_copy,
)
from vigil.core.repository import ModelVersion

MODELS = ("breast_cancer", "mlp")
TARGET_GROWTH = 0.10
INFERS_AFTER_PROMOTE = 4
INFERS_AFTER_ROLLBACK = 2
# Apart from bench.py's, bench_stall.py's and bench_rollback.py's ports.
PORTS = RayPorts(
    gcs=6397,
    dashboard=8272,
    client_server=6498,
    dashboard_agent=52471,
    http=8107,
    haproxy_stats=8499,
    haproxy_metrics=9196,
    fallback_http=8595,
    fallback_grpc=9595,
    ingress_http_min=32600,
    ingress_grpc_min=42600,
)


class Cycles:
    """The version cycles against one running server, and what went wrong in them."""

    def __init__(self, server: VersionsServer, repository: Path) -> None:
        self.server, self.repository = server, repository
        self.sources: dict[str, ModelVersion] = {m: first_version(repository, m) for m in MODELS}
        self.bodies = {m: infer_body(v) for m, v in self.sources.items()}
        self.cache: dict[Path, bytes] = {}
        self.production = dict.fromkeys(MODELS, "1")
        self.next_version = 2
        self.kept: dict[str, list[str]] = {m: [] for m in MODELS}  # not retired (control)
        self.calls: list[dict[str, Any]] = []  # every admin call
        self.problems: list[str] = []
        self.seconds: list[float] = []  # per cycle
        self.completed = 0  # cycles with retire

    def admin(
        self, cycle: int, model: str, action: str, expect_to: str | None = None, **body: Any
    ) -> dict[str, Any]:
        answer = self.server.admin(model, action, **body)
        doc = answer.doc
        call = {
            "cycle": cycle,
            "model": model,
            "action": action,
            "http_status": answer.status,
            "client_ms": round(answer.client_s * 1000, 1),
            "applied_ms": round(doc["applied_s"] * 1000, 1) if "applied_s" in doc else None,
            "converged": doc.get("converged"),
        }
        self.calls.append(call)
        if answer.status != 200:
            self.problems.append(
                f"cycle {cycle} {model} {action} {body}: HTTP {answer.status} {doc.get('error')}"
            )
        elif not doc.get("converged"):
            self.problems.append(
                f"cycle {cycle} {model} {action}: not converged, behind "
                f"{doc.get('behind')}, replicas {doc.get('replicas')}"
            )
        elif expect_to is not None and doc.get("to_version") != expect_to:
            self.problems.append(
                f"cycle {cycle} {model} {action}: to_version "
                f"{doc.get('to_version')!r}, expected {expect_to!r}"
            )
        return call

    def infer(self, cycle: int, model: str, expected: str, count: int) -> None:
        for _ in range(count):
            status, version = self.server.infer_version(model, self.bodies[model])
            if (status, version) != (200, expected):
                self.problems.append(
                    f"cycle {cycle} {model} infer: {status} from version "
                    f"{version!r}, expected 200 from {expected!r}"
                )

    def run(self, cycle: int, retire: bool) -> None:
        started = time.monotonic()
        new = str(self.next_version)
        self.next_version += 1
        for m in MODELS:
            publish_copy(self.repository, self.sources[m], new, self.cache)
        for m in MODELS:
            self.admin(cycle, m, "load")
        reason = f"bench_model_memory cycle {cycle}"
        for m in MODELS:
            previous = self.production[m]
            self.admin(cycle, m, "promote", new, version=new, reason=reason, force=True)
            self.infer(cycle, m, new, INFERS_AFTER_PROMOTE)
            self.admin(cycle, m, "rollback", previous, reason=reason)
            self.infer(cycle, m, previous, INFERS_AFTER_ROLLBACK)
            self.admin(cycle, m, "promote", new, version=new, reason=reason, force=True)
            if retire:
                self.admin(cycle, m, "retire", version=previous, reason=reason)
            else:
                self.kept[m].append(previous)
            self.production[m] = new
        self.seconds.append(time.monotonic() - started)

    def retire_kept(self, cycle: int) -> None:
        for m in MODELS:
            for version in self.kept[m]:
                self.admin(cycle, m, "retire", version=version, reason="bench_model_memory: end")
            self.kept[m] = []


def sample(server: VersionsServer, label: str, cycle: int, settled_s: float) -> dict[str, Any]:
    status = server.status()
    replicas = {pid: st["VmRSS"] for pid, st in status.items()}
    monitor = {pid: st["VmRSS"] for pid, st in server.status(MONITOR_TITLE).items()}
    loaded = server.loaded_by_replica()
    ready = [r for r in server.index() if r["state"] == "READY"]
    doc = {
        "label": label,
        "cycle": cycle,
        "settled_s": settled_s,
        "replicas_rss_mib": round(sum(replicas.values()) / 1024, 1),
        "per_replica_rss_mib": {str(p): round(k / 1024, 1) for p, k in sorted(replicas.items())},
        "per_replica_anon_mib": {
            str(p): round(st["RssAnon"] / 1024, 1) for p, st in sorted(status.items())
        },
        "per_replica_threads": {str(p): st["Threads"] for p, st in sorted(status.items())},
        "monitor_rss_mib": round(sum(monitor.values()) / 1024, 1),
        "versions_per_replica": {r: len(v) for r, v in loaded.items()},
        "index_ready": {m: sum(1 for r in ready if r["name"] == m) for m in MODELS},
    }
    log(
        f"{label} (cycle {cycle}): replicas {doc['replicas_rss_mib']} MiB "
        f"{doc['per_replica_rss_mib']}, threads {doc['per_replica_threads']}, versions held per "
        f"replica {doc['versions_per_replica']}, monitor {doc['monitor_rss_mib']} MiB"
    )
    return doc


def settle(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def analyse(
    samples: list[dict[str, Any]], cycles: Cycles, args: argparse.Namespace
) -> dict[str, Any]:
    by = {s["label"]: s for s in samples}
    out: dict[str, Any] = {"cycles_completed": cycles.completed}
    base, end = by.get("baseline"), by.get("end")
    start = by.get("start")
    if base and end:
        out["baseline_label"] = (
            f"after {args.warmup_cycles} warm-up cycles, settled {args.settle_s:g} s"
        )
        out["baseline_mib"] = base["replicas_rss_mib"]
        out["end_mib"] = end["replicas_rss_mib"]
        out["growth"] = round(end["replicas_rss_mib"] / base["replicas_rss_mib"] - 1, 4)
        out["growth_target"] = TARGET_GROWTH
        out["growth_within_target"] = out["growth"] < TARGET_GROWTH
        if start:
            out["start_mib"] = start["replicas_rss_mib"]
            out["growth_from_start"] = round(
                end["replicas_rss_mib"] / start["replicas_rss_mib"] - 1, 4
            )
    control_end, retired = by.get("control_end"), by.get("control_retired")
    if end and control_end and args.control_cycles:
        per_cycle = (
            control_end["replicas_rss_mib"] - end["replicas_rss_mib"]
        ) / args.control_cycles
        out["control_cycles"] = args.control_cycles
        out["control_mib_per_cycle"] = round(per_cycle, 2)  # both models, both replicas
        anchor = start or base
        if anchor:
            out["never_released_estimate_mib"] = round(
                anchor["replicas_rss_mib"] + per_cycle * cycles.completed, 1
            )
            out["never_released_estimate_note"] = (
                f"RSS at start + {cycles.completed} cycles x the control's rise per cycle"
            )
        if retired:
            out["control_retired_mib"] = retired["replicas_rss_mib"]
            gained = control_end["replicas_rss_mib"] - end["replicas_rss_mib"]
            out["control_given_back_share"] = (
                round((control_end["replicas_rss_mib"] - retired["replicas_rss_mib"]) / gained, 3)
                if gained > 0
                else None
            )
    applied = [c for c in cycles.calls if c["applied_ms"] is not None]
    for name, part in (
        ("first_10", [c for c in applied if c["cycle"] <= 10]),
        ("last_10", [c for c in applied if cycles.completed - 10 < c["cycle"] <= cycles.completed]),
    ):
        if part:
            out[f"applied_ms_median_{name}_cycles"] = round(
                statistics.median(c["applied_ms"] for c in part), 1
            )
            out[f"client_ms_median_{name}_cycles"] = round(
                statistics.median(c["client_ms"] for c in part), 1
            )
    if cycles.seconds:
        out["cycle_s_median"] = round(statistics.median(cycles.seconds), 2)
    out["admin_calls"] = len(cycles.calls)
    out["admin_non_200"] = sum(c["http_status"] != 200 for c in cycles.calls)
    out["admin_not_converged"] = sum(
        c["http_status"] == 200 and not c["converged"] for c in cycles.calls
    )
    out["problems"] = len(cycles.problems)
    return out


def render(samples: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        f"{'sample':<16} {'cycle':>5} {'settled':>7} {'replicas MiB':>12} "
        f"{'per replica':<12} {'anon':<10} {'threads':<8} {'versions held':<13} "
        f"{'monitor MiB':>11}"
    ]
    for s in samples:
        per = "/".join(f"{v:.0f}" for v in s["per_replica_rss_mib"].values())
        anon = "/".join(f"{v:.0f}" for v in s["per_replica_anon_mib"].values())
        threads = "/".join(str(v) for v in s["per_replica_threads"].values())
        held = "/".join(str(v) for v in s["versions_per_replica"].values())
        lines.append(
            f"{s['label']:<16} {s['cycle']:>5} {s['settled_s']:>6.0f}s "
            f"{s['replicas_rss_mib']:>12.1f} {per:<12} {anon:<10} {threads:<8} "
            f"{held:<13} {s['monitor_rss_mib']:>11.1f}"
        )
    lines.append("")
    if "growth" in summary:
        lines.append(
            f"growth end vs baseline ({summary['baseline_label']}): "
            f"{summary['growth'] * 100:+.1f}% (target < {TARGET_GROWTH * 100:.0f}%: "
            f"{'met' if summary['growth_within_target'] else 'NOT met'}); "
            f"vs start: {summary.get('growth_from_start', 0) * 100:+.1f}%"
        )
    if "control_mib_per_cycle" in summary:
        lines.append(
            f"control (retire skipped, {summary['control_cycles']} cycles): "
            f"+{summary['control_mib_per_cycle']} MiB per cycle; never releasing over "
            f"the whole run would be ~{summary.get('never_released_estimate_mib')} MiB; "
            f"after retiring them: {summary.get('control_retired_mib')} MiB "
            f"(share given back {summary.get('control_given_back_share')})"
        )
    lines.append(
        f"admin calls {summary['admin_calls']}, non-200 {summary['admin_non_200']}, "
        f"not converged {summary['admin_not_converged']}, problems {summary['problems']}; "
        f"median cycle {summary.get('cycle_s_median')} s; median applied_ms first 10 "
        f"cycles {summary.get('applied_ms_median_first_10_cycles')}, last 10 "
        f"{summary.get('applied_ms_median_last_10_cycles')}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m load_tests.bench_model_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument(
        "--warmup-cycles", type=int, default=5, help="cycles before the baseline sample"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="stop the cycles with retire after this long (the admin calls slow "
        "down as versions accumulate); the end sample follows",
    )
    parser.add_argument(
        "--control-cycles",
        type=int,
        default=5,
        help="cycles without retire after the run (0: no control)",
    )
    parser.add_argument(
        "--settle-s",
        type=float,
        default=10.0,
        help="quiet before the baseline and end samples (release grace is 5 s)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "load_tests" / "results" / "model_memory.json"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the Ray temp dir in /tmp")
    args = parser.parse_args(argv)
    if not (
        10 <= args.cycles <= 200
        and 1 <= args.warmup_cycles < args.cycles
        and 0 <= args.control_cycles <= 20
        and 6 <= args.settle_s <= 60
        and 30 <= args.budget_s <= 1800
    ):
        parser.error(
            "bounds: cycles 10-200, warmup-cycles 1 to cycles-1, control-cycles 0-20, "
            "settle-s 6-60, budget-s 30-1800"
        )

    subreaper, started, info = begin_run()
    server = VersionsServer("memory", PORTS, keep_logs=args.keep_logs)
    exit_code, samples = 0, []
    notes: list[str] = []  # facts of the run worth reading
    problems: list[str] = []  # what the server did wrong (its logs are kept then)
    cycles: Cycles | None = None
    try:
        repository = server.start()
        cycles = Cycles(server, repository)
        for m in MODELS:  # every model's first request paid before the first sample
            cycles.infer(0, m, "1", 4)
        samples.append(sample(server, "start", 0, 0.0))
        deadline = time.monotonic() + args.budget_s
        done = 0
        for i in range(1, args.cycles + 1):
            if time.monotonic() > deadline and i > args.warmup_cycles + 1:
                notes.append(
                    f"time budget of {args.budget_s:g} s spent: stopped after {done} of "
                    f"{args.cycles} cycles"
                )
                log(notes[-1])
                break
            cycles.run(i, retire=True)
            done = i
            if i == args.warmup_cycles:
                samples.append(sample(server, "baseline", i, settle(args.settle_s)))
            elif i % 10 == 0 and i != args.cycles:
                samples.append(sample(server, f"cycle {i}", i, 0.0))
        samples.append(sample(server, "end", done, settle(args.settle_s)))
        log(
            f"{done} cycles, median {statistics.median(cycles.seconds):.2f} s each; "
            f"{len(cycles.problems)} problems"
        )
        cycles.completed = done
        if args.control_cycles:
            last = done + args.control_cycles
            for i in range(done + 1, last + 1):
                cycles.run(i, retire=False)
            samples.append(sample(server, "control_end", last, settle(args.settle_s)))
            cycles.retire_kept(last)
            samples.append(sample(server, "control_retired", last, settle(args.settle_s)))
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
                if cycles is not None:
                    problems.extend(cycles.problems)
                notes[:0] = server.notes
                if problems and not args.keep_logs:  # evidence for whoever reads the problems
                    server.cluster.keep_logs = True
                    notes.append(f"Ray logs kept in {server.log_dir()}")
                log(f"stopping the {server.cluster.label} Ray cluster")
                notes.extend(server.stop())
        except KeyboardInterrupt:
            exit_code = 130

    summary = analyse(samples, cycles, args) if cycles is not None and samples else {}
    doc = {
        "machine": info,
        "setup": {
            "models": list(MODELS),
            "cycles": args.cycles,
            "warmup_cycles": args.warmup_cycles,
            "control_cycles": args.control_cycles,
            "settle_s": args.settle_s,
            "cycle": "publish (v1 bytes as a new version), load, promote (force), "
            f"{INFERS_AFTER_PROMOTE} infers, rollback, {INFERS_AFTER_ROLLBACK} infers, "
            "promote (force), retire the previous production; per model",
            "rss": "sum of VmRSS of this cluster's processes titled "
            "ServeReplica:vigil:ModelServer, from /proc",
            "vigil": "configs/serve.yaml via targets.vigil_config (batching and sampling on), "
            "model_repository a temp `vigil examples build`, RAY_SERVE_ENABLE_HA_PROXY=1, "
            "no tokens file (open to loopback)",
            "ports": vars(PORTS),
            "subreaper": subreaper,
        },
        "summary": summary,
        "samples": samples,
        "cycle_seconds": [round(s, 3) for s in (cycles.seconds if cycles else [])],
        "admin_calls": cycles.calls if cycles else [],
        "problems": problems,
        "notes": notes,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if samples:
        print()
        print(render(samples, summary))
    report.finish(args.out, doc, {"problems": problems, "notes": notes})
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
