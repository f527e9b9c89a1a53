"""`make faults`: Vigil under steady load (c=16; breast_cancer and mlp, JSON and binary) while one
thing at a time fails, on a private Ray cluster it starts and ends.

    python -m load_tests.faults                       # every scenario, in this order
    python -m load_tests.faults --only replica_killed # one (or a comma-separated few)

Scenarios (load_tests/fault_scenarios.py): monitor_killed, webhook_down, replica_killed,
alias_board_killed, haproxy_killed. Each prints a row (requests sent and failed, the error ratio
over the fault window, the time to recover, what was lost) and PASS or FAIL; the table and every
figure go to load_tests/results/faults.json. Exit 0 only if every scenario passed.

The server is configs/serve.yaml (HAProxy, two replicas) over a temp `vigil examples build`
repository, mlp's production moved to a second version (so "the same aliases" means something),
and a Monitor whose rules fire on the load at once (p99 above a microsecond) with one webhook
target: a receiver that is down until webhook_down brings it up.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import secrets
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import httpx

from load_tests import procs
from load_tests.fault_load import metric_sum, wait_until
from load_tests.fault_scenarios import (
    alias_board_killed,
    haproxy_killed,
    monitor_killed,
    replica_killed,
    webhook_down,
)
from load_tests.fault_stack import AFTER_S, WARM_S, Outcome, Stack, outbox_state
from load_tests.targets import HOST, REPO_ROOT, RayCluster, RayPorts, StartError
from load_tests.versions_server import VersionsServer, begin_run, first_version, log, publish_copy
from vigil.core.aliases import read_aliases
from vigil.tools.haproxy_header_timeout import ray_environment

PORTS = RayPorts(
    gcs=6431, dashboard=8301, client_server=6531, dashboard_agent=52501, http=8141,
    haproxy_stats=8521, haproxy_metrics=9221, fallback_http=8621, fallback_grpc=9621,
    ingress_http_min=35000, ingress_grpc_min=45000,
)
GRPC_PORT = 8142
RAY_METRICS_PORT = 8391
RECEIVER_PORT = 8143
TARGET = "faults"
SECRET_ENV = "VIGIL_FAULTS_WEBHOOK_SECRET"
SCENARIOS = ("monitor_killed", "webhook_down", "replica_killed", "alias_board_killed",
             "haproxy_killed", "head_restarted")
# A rollout that stays at its first step for the whole scenario (100 windows of 5 s per step).
SLOW_ROLLOUT = {"steps": [0.1, 0.5], "windows_per_step": 100, "max_failed_checks": 100,
                "step_deadline_s": 3600}


def monitor_user_config() -> dict[str, Any]:
    """Short windows; three rules that fire on any traffic (so there are alert states and
    events to lose), sent to one target with retries every few seconds."""
    rule = {"min_requests": 10, "for_windows": 1, "resolve_windows": 3, "cooldown_s": 3600}
    return {
        "window": {"rows": 2000, "seconds": 5},
        "alerts": [{"name": f"faults-p99-{n}", "when": {"latency_p99_above_s": limit}, **rule}
                   for n, limit in (("1us", 1e-6), ("2us", 2e-6), ("3us", 3e-6))],
        "webhooks": [{"name": TARGET, "url": f"http://{HOST}:{RECEIVER_PORT}/events",
                      "secret_env": SECRET_ENV, "timeout_s": 5, "backoff_s": 1.0,
                      "max_backoff_s": 5.0, "max_attempts": 100}],
    }


def start() -> tuple[VersionsServer, Stack]:
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    # HAProxy as `make serve` runs it: through vigil-haproxy (its header timeout, and 503 for a
    # path no application is routed at yet).
    server = VersionsServer("faults", PORTS, keep_logs=False, ray_args=[
        "--metrics-export-port", str(RAY_METRICS_PORT),
        "--system-config", json.dumps({"metrics_report_interval_ms": 1000})],
        ray_env=ray_environment(10))
    server.grpc_port = GRPC_PORT
    server.monitor_user_config = monitor_user_config()
    return server, _stack(server)


def _stack(server: VersionsServer) -> Stack:
    def haproxy_pids() -> list[int]:
        return [p for p in server.cluster.cluster_pids() if procs.comm(p) == "haproxy"]

    return Stack(base_url=f"http://{HOST}:{PORTS.http}", headers={},
                 dashboard_url=f"http://{HOST}:{PORTS.dashboard}",
                 repository=server.work / "models", outbox=server.work / "vigil-outbox.sqlite",
                 haproxy_pids=haproxy_pids,
                 ray_metrics_url=f"http://{HOST}:{RAY_METRICS_PORT}/metrics",
                 webhook_target=TARGET, receiver_port=RECEIVER_PORT)


def prepare(server: VersionsServer) -> None:
    """mlp/2 (mlp/1's bytes) published and promoted: the replacement replica must serve it."""
    repository = server.start()
    publish_copy(repository, first_version(repository, "mlp"), "2")
    publish_copy(repository, first_version(repository, "breast_cancer"), "2")
    answer = server.admin("mlp", "promote", version="2", force=True, reason="faults: setup")
    if answer.status != 200:
        raise StartError(f"promoting mlp/2 failed: {answer.status} {answer.doc}")


def run_one(name: str, server: VersionsServer, stack: Stack, down_s: float) -> Outcome:
    if name == "replica_killed":
        return replica_killed(stack)
    if name == "monitor_killed":
        return monitor_killed(stack)
    if name == "alias_board_killed":
        return alias_board_killed(stack, "mlp", ("1", "2"))
    if name == "haproxy_killed":
        return haproxy_killed(stack)
    if name == "webhook_down":
        return webhook_down(stack, down_s)
    if name == "head_restarted":
        return head_restarted(server, stack)
    raise ValueError(name)


def _aliases(stack: Stack, model: str) -> dict[str, Any]:
    """A model's aliases, its rollout by version, step and status (the counts of judged windows
    move on with the traffic)."""
    state = read_aliases(stack.repository, model)
    rollout = state.rollout
    return {"production": state.production, "shadow": state.shadow,
            "canary": None if state.canary is None else dataclasses.asdict(state.canary),
            "rollout": None if rollout is None else (rollout.version, rollout.step,
                                                     rollout.status)}


def _durable(server: VersionsServer, stack: Stack) -> dict[str, Any]:
    """What must come back from disk: the index, every model's aliases (a running rollout
    among them), the firing alerts and the outbox's deliveries."""
    state = outbox_state(stack.outbox)
    return {
        "index": sorted((r["name"], r["version"]) for r in server.index()),
        "aliases": {m: _aliases(stack, m) for m in ("breast_cancer", "mlp")},
        "firing": sorted(k for k, v in state["alerts"].items() if json.loads(v).get("firing")),
        "pending": sorted(k for k, v in state["deliveries"].items() if v == "pending"),
    }


def head_restarted(server: VersionsServer, stack: Stack) -> Outcome:
    """Every process of the Ray cluster stopped (as `make stop` does), then `ray start` and
    `serve deploy` of the same config again: the versions, the aliases with a rollout running,
    the alert states and the outbox come back from disk, and the rollout's candidate serves."""
    out = Outcome("head_restarted")
    started = server.admin("breast_cancer", "rollout", version="2", force=True,
                           reason="faults: head restart", plan=SLOW_ROLLOUT)
    out.figures["rollout_started"] = started.status
    try:
        with stack.load() as load:
            time.sleep(3 * WARM_S)
            before = _durable(server, stack)
            fault = time.monotonic()
            server.cluster.stop()
            stopped = time.monotonic()
            server.cluster = RayCluster(server.cluster.label, PORTS, ha_proxy=True,
                                        num_cpus=os.cpu_count() or 2, extra_args=server.ray_args,
                                        extra_env=server.ray_env)
            server.cluster.start()
            server.cluster.deploy(server.config, "vigil.yaml")
            server.cluster.wait_running("vigil")
            server.cluster.wait_running("monitor")
            back = wait_until(lambda: server.client.get("/v2/health/ready").status_code == 200
                              and time.monotonic(), 120, 0.5)
            served = wait_until(lambda: {s.version for s in load.between(
                time.monotonic() - 2, time.monotonic()) if s.model == "breast_cancer" and s.ok}
                >= {"1", "2"}, 60, 1.0)
            time.sleep(AFTER_S)
            after = _durable(server, stack)
            firing_metric = server.client.get("/monitor/metrics").text
    finally:
        try:
            server.admin("breast_cancer", "rollout-abort", reason="faults: restore")
        except httpx.HTTPError as exc:  # the cluster did not come back: nothing to restore
            log(f"could not abort the rollout: {exc}")
    out.count(load, fault, back)
    out.recover_s = None if back is None else back - fault
    out.lost = f"{out.failed} requests failed while the cluster was down (none retried)"
    shown = {k for k in before["firing"] if metric_sum(
        firing_metric, "vigil_alert_firing", model=k.split("/")[0], version=k.split("/")[1],
        rule=k.split("/")[2]) == 1}
    out.figures.update(stop_s=round(stopped - fault, 1), firing=len(before["firing"]),
                       pending_before=len(before["pending"]),
                       rollout=before["aliases"]["breast_cancer"]["rollout"] is not None)
    return out.judge(
        recovered=back is not None,
        same_versions=before["index"] == after["index"],
        same_aliases_and_rollout=before["aliases"] == after["aliases"]
        and before["aliases"]["breast_cancer"]["rollout"] is not None,
        candidate_serves_again=bool(served),
        alert_state_back=set(before["firing"]) <= set(after["firing"])
        and shown == set(before["firing"]),
        pending_back=set(before["pending"]) <= set(after["pending"]) | {
            k for k, v in outbox_state(stack.outbox)["deliveries"].items() if v == "delivered"},
    )


def table(outcomes: list[Outcome]) -> str:
    head = (f"{'scenario':<20} {'sent':>7} {'failed':>6} {'window':>7} {'w.fail':>6} "
            f"{'err %':>7} {'recover s':>9}  {'verdict':<7} lost")
    lines = [head, "-" * len(head)]
    for o in outcomes:
        recover = "-" if o.recover_s is None else f"{o.recover_s:.2f}"
        lines.append(f"{o.name:<20} {o.sent:>7} {o.failed:>6} {o.window_sent:>7} "
                     f"{o.window_failed:>6} {100 * o.error_ratio:>7.3f} {recover:>9}  "
                     f"{'PASS' if o.passed else 'FAIL':<7} {o.lost}")
    for o in outcomes:
        failed = [k for k, v in o.checks.items() if not v]
        lines.append(f"{o.name}: {'PASS' if o.passed else 'FAIL ' + ', '.join(failed)}; "
                     + json.dumps(o.figures, default=str))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.faults", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--receiver-down-s", type=float, default=60.0,
                        help="how long webhook_down keeps the receiver down")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "load_tests" / "results" /
                        "faults.json")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := set(names) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    begin_run()
    server, stack = start()
    outcomes: list[Outcome] = []
    started = time.monotonic()
    try:
        prepare(server)
        for name in names:
            log(f"scenario {name}")
            try:
                outcome = run_one(name, server, stack, args.receiver_down_s)
            except Exception as exc:  # noqa: BLE001 - one scenario's crash is its FAIL
                traceback.print_exc()
                outcome = Outcome(name).judge(ran=False)
                outcome.lost = f"scenario crashed: {type(exc).__name__}: {exc}"[:300]
            outcomes.append(outcome)
            log(f"{name}: {'PASS' if outcome.passed else 'FAIL'} {outcome.checks}")
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        with procs.signals_deferred():
            server.stop()
    print()
    print(table(outcomes))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"seconds": round(time.monotonic() - started, 1),
                                    "concurrency": stack.concurrency,
                                    "scenarios": [o.row() for o in outcomes]}, indent=2,
                                   default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if outcomes and all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
