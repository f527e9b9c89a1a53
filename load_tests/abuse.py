"""Availability under abuse at the front door: well-behaved clients' latency and failures while
idle connections, slowloris and stalled bodies are held open, each attack alone, on a private
`make serve`-style server on loopback; the attackers' connections held and how soon they are cut.

    python -m load_tests.abuse [--before] [--seconds 30] [--only idle,stalled]

Target (issue 22): under 5,000 idle connections, slowloris (5,000 connections sending a header
line every 5 s) and 1,000 stalled bodies (Content-Length 3,000,000, ten bytes sent, with an infer
token), each alone for 30 s, probes keep getting answers with p99 under 1 s and none waits 10 s;
the attackers are cut off within the documented limits (docs/security.md, "Connection and body
limits"). `--before` runs the same with the limits off: Ray's HAProxy defaults (timeout client
3600 s, maxconn 4096), front_door at its loosest and Serve's default autoscaling policy.

Order: example models and two tokens (attacker, probe) in a temp dir; a private Ray cluster with
HAProxy on its own ports, configs/serve.yaml deployed with them; then for each attack, the probes
(4 threads, one-row requests each on a new connection, every 50 ms) and the attackers, each in a
process of its own, for --seconds; replicas counted every 2 s; a pause for the server to settle.
Everything it started is ended (Ctrl-C too). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from load_tests import procs, report
from load_tests.abuse_clients import (
    attack,
    cut_off,
    held_at_once,
    probe,
    probe_summary,
    raise_fd_limit,
)
from load_tests.targets import REPO_ROOT, RayCluster, RayPorts, StartError, replica_ids, vigil_config
from vigil.tools.haproxy_header_timeout import ray_environment

PORTS = RayPorts(gcs=6412, dashboard=8286, client_server=6512, dashboard_agent=52480, http=8130,
                 haproxy_stats=8512, haproxy_metrics=9212, fallback_http=8612,
                 fallback_grpc=9612, ingress_http_min=33400, ingress_grpc_min=43400)
ATTACKS = {"none": 0, "idle": 5000, "slowloris": 5000, "stalled": 1000}
TITLES = {"none": "none (baseline)", "idle": "idle connections", "slowloris": "slowloris",
          "stalled": "stalled bodies"}
SETTLE_S = 12.0  # after an attack, for the server to close what is left (timeout client: 10 s)


def haproxy_limits() -> dict[str, str]:
    """HAProxy's limits as the Makefile sets them (maxconn sized to the file limit: HAProxy
    wants 2.5 descriptors per connection; 10 s to send the headers)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "10",
            "RAY_SERVE_HAPROXY_MAXCONN": str(max(64, (soft - 512) * 2 // 5)),
            **ray_environment(10)}  # HAProxy's header timeout, through vigil-haproxy


def server_config(models: Path, tokens: Path, before: bool) -> dict[str, Any]:
    config = vigil_config(PORTS, batching_enabled=True)
    for app in config["applications"]:
        app["args"]["model_repository"] = str(models)
        app["args"]["tokens_file"] = str(tokens)
        if app["name"] != "vigil" or not before:
            continue
        app["args"]["front_door"] = {"body_grace_s": 600, "max_in_flight_per_client": 100000}
        for deployment in app["deployments"]:
            deployment.get("autoscaling_config", {}).pop("policy", None)
    return config


class ReplicaWatch:
    """Counts the model server's running replicas every 2 s while an attack runs."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster, self.counts = cluster, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.counts.append(len(replica_ids(self.cluster.applications()["vigil"])))
            except (OSError, StartError, KeyError, ValueError):
                pass
            self._stop.wait(2.0)

    def __enter__(self) -> ReplicaWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_attack(kind: str, count: int, tokens: dict[str, str], seconds: float,
               cluster: RayCluster) -> dict[str, Any]:
    print(f"{TITLES[kind]}: {count} attacker connections for {seconds:.0f} s", flush=True)
    with ProcessPoolExecutor(2) as pool, ReplicaWatch(cluster) as replicas:
        attackers = pool.submit(attack, kind, count, PORTS.http, tokens["attacker"], seconds)
        time.sleep(1.0 if count else 0)  # the attack under way before the first probe
        probes = pool.submit(probe, PORTS.http, tokens["probe"], seconds - 1.0 if count
                             else seconds)
        records = attackers.result() if count else []
        probed = probes.result()
    row = {"attack": kind, "connections": count, "held_at_once": held_at_once(records),
           "probes": probe_summary(probed), "attackers": cut_off(records, seconds),
           "replicas_max": max(replicas.counts, default=None)}
    print(f"  {row}", flush=True)
    return row


def table(rows: list[dict[str, Any]], before: bool) -> list[str]:
    lines = [f"front door {'BEFORE (limits off)' if before else 'with its limits'}",
             "| attack | connections held | probe p50 ms | probe p99 ms | probe failures | "
             "probes waiting 10 s | attackers cut off (median, max s) | attacker answers | "
             "replicas |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p, a = r["probes"], r["attackers"]
        cut = (f"{a['cut']}/{a['opened']} ({a['cut_median_s']}, {a['cut_max_s']})"
               if r["connections"] else "-")
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(a["statuses"].items())) or "-"
        held = f"{r['held_at_once']} of {r['connections']}" if r["connections"] else "-"
        lines.append(f"| {TITLES[r['attack']]} | {held} | {p['p50_ms']} | {p['p99_ms']} | "
                     f"{p['failed']}/{p['requests']} | {p['waited_10s']} | {cut} | {answers} | "
                     f"{r['replicas_max']} |")
    return lines


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        p = r["probes"]
        ok = (p["p99_ms"] is not None and p["p99_ms"] < 1000 and p["waited_10s"] == 0
              and p["failed"] == 0)
        out.append(f"{TITLES[r['attack']]}: probes p99 {p['p99_ms']} ms, {p['failed']} failed, "
                   f"{p['waited_10s']} waited 10 s: {'meets' if ok else 'MISSES'} the target")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.abuse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", action="store_true", help="the limits off (see above)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--only", default=",".join(ATTACKS), help="attacks to run, in order")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    name = "abuse_before.json" if args.before else "abuse.json"
    out = args.out or REPO_ROOT / "load_tests" / "results" / name
    kinds = [k.strip() for k in args.only.split(",") if k.strip()]
    if unknown := set(kinds) - set(ATTACKS):
        parser.error(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    procs.become_subreaper()
    print(f"open-file limit {raise_fd_limit()}", flush=True)
    begun = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vigil-abuse-"))
    cluster = RayCluster("abuse", PORTS, ha_proxy=True, num_cpus=os.cpu_count() or 2,
                         extra_env={} if args.before else haproxy_limits())
    rows: list[dict[str, Any]] = []
    try:
        from vigil.core.tokens import create_token
        from vigil.tools.examples import build_examples

        models = work / "models"
        build_examples(models)
        tokens = {n: create_token(work / "tokens.yaml", n, frozenset({"infer"}))
                  for n in ("attacker", "probe")}
        cluster.start()
        cluster.deploy(server_config(models, work / "tokens.yaml", args.before), "abuse.yaml")
        cluster.wait_running("vigil")
        print(f"server up ({'limits off' if args.before else 'with its limits'}): "
              f"{ {k: v for k, v in cluster.env.items() if 'HAPROXY_' in k and 'PATH' not in k} }",
              flush=True)
        probe(PORTS.http, tokens["probe"], 3.0)  # warm-up
        for kind in kinds:
            rows.append(run_attack(kind, ATTACKS[kind], tokens, args.seconds, cluster))
            time.sleep(SETTLE_S)
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        with procs.signals_deferred():
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
    lines = table(rows, args.before)
    print("\n".join(lines))
    doc = {"before": args.before, "seconds": args.seconds, "rows": rows,
           "haproxy_env": {} if args.before else haproxy_limits(),
           "elapsed_s": time.monotonic() - begun}
    report.finish(out, doc, {"verdicts": verdicts(rows)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
