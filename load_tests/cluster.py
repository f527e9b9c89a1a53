"""A two-node Ray cluster on this machine, each node a host of its own: Vigil across machines.

    sudo make cluster            # or: python -m load_tests.cluster [--basic] [--out FILE]

Network namespaces (load_tests.cluster_net) give the head (10.77.0.1) and the worker
(10.77.0.2) their own addresses; `ray start --head` runs in one and `ray start --address` in the
other (load_tests.cluster_ray); configs/serve.yaml goes on with `serve deploy`, tokens on, with
what a cluster needs changed and said: HAProxy on every node binds 0.0.0.0:8000 (its own
address), the ModelServer runs two replicas at most one per node (`max_replicas_per_node: 1`, so
one lands on each), and the monitor is pinned to the head (a custom resource only the head
declares: its outbox is on the head's disk). The repository and tokens file sit on one path both
nodes read (/tmp/vglc/shared: the same file system here; a ReadWriteMany volume on real machines).

Checks, in order: where every replica runs; answers from replicas on both nodes through both
proxies; the monitor's windows grow by the rows sent to each node's replica alone; drift found
on rows served by the worker's replica alone; promote and rollback served by both replicas when
the command returns; a revoked token refused on both nodes. Without --basic, then: the worker's
raylet SIGKILLed under load spread over both proxies (load_tests.cluster_load), the error
ratio, when the Service-like client stopped failing, where the worker's replica went, the
outbox on the head intact; the worker started again and its replica back.

Prints a table and the placement, writes JSON (--out). Exit 0 when every check passed, 1 when
one failed, 2 when namespaces cannot be made here (not root, no `ip`). Everything it made
(namespaces, links, Ray processes, /tmp/vglc) is removed whatever happens.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import yaml

from load_tests import cluster_net, cluster_ray, procs
from load_tests.cluster_load import Load, Service, infer_body, summarize
from load_tests.cluster_ray import BASE_DIR, HEAD_RESOURCE, HTTP_PORT, RayNode, wait_for

ROOT = Path(__file__).resolve().parents[1]
MODEL = "breast_cancer"
SHARED = BASE_DIR / "shared"  # the repository and tokens file: one path every node reads
REPOSITORY = SHARED / "models"
OUTBOX = BASE_DIR / "head-disk" / "vigil-outbox.sqlite"
WINDOW_ROWS = 200
REPLICA_CLASS = "ServeReplica:vigil:ModelServer"


def log(message: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cluster_config(head: cluster_net.Node) -> dict[str, Any]:
    """configs/serve.yaml with what a cluster needs (the module docstring says what and why)."""
    config = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    config["http_options"]["host"] = "0.0.0.0"  # every node's HAProxy on its own address
    vigil, monitor = config["applications"]
    vigil["args"]["model_repository"] = str(REPOSITORY)
    server = vigil["deployments"][0]
    server.pop("autoscaling_config")
    server["num_replicas"] = 2
    server["max_replicas_per_node"] = 1
    monitor["args"].update(model_repository=str(REPOSITORY), outbox_path=str(OUTBOX),
                           public_url=f"http://{head.address}:{HTTP_PORT}/monitor")
    mon = monitor["deployments"][0]
    mon["ray_actor_options"]["resources"] = {HEAD_RESOURCE: 1}
    mon["user_config"]["window"] = {"rows": WINDOW_ROWS, "seconds": 60}
    return config


def prepare_repository() -> tuple[str, str]:
    """The examples, breast_cancer/2 (version 1's bytes) through the gate, and two tokens:
    (all scopes, an infer-only one the scenario revokes)."""
    from load_tests.versions_server import first_version, publish_copy, validate_for_promotion
    from vigil.tools.examples import build_examples

    build_examples(REPOSITORY)
    publish_copy(REPOSITORY, first_version(REPOSITORY, MODEL), "2")
    verdict = validate_for_promotion(REPOSITORY, MODEL, "2")
    if not verdict.get("passed"):
        raise RuntimeError(f"breast_cancer/2 did not pass the gate: {verdict}")
    return vigil_token("cluster", "infer,monitor,admin"), vigil_token("revokee", "infer")


def vigil_cli(*args: str, token: str = "", timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIGIL_TOKEN": token} if token else dict(os.environ)
    return subprocess.run([str(Path(sys.executable).with_name("vigil")), *args], env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def vigil_token(name: str, scopes: str) -> str:
    done = vigil_cli("tokens", "create", name, "--scopes", scopes, "--models-dir", str(REPOSITORY))
    if done.returncode != 0:
        raise RuntimeError(f"vigil tokens create: {done.stderr}")
    return done.stdout.strip().splitlines()[-1]


class Scenario:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.net = cluster_net.nodes(1)
        self.head, self.worker = self.net
        self.ray_head = RayNode(self.head, self.head, resources={HEAD_RESOURCE: 1})
        self.ray_worker = RayNode(self.worker, self.head)
        self.result: dict[str, Any] = {"checks": {}, "figures": {}}
        self.token = self.revokee = ""
        frame = pd.read_parquet(REPOSITORY / MODEL / "1" / "reference.parquet") \
            if (REPOSITORY / MODEL / "1").exists() else None
        self.reference = frame

    # ------------------------------------------------------------------ helpers

    @property
    def proxies(self) -> dict[str, str]:
        return {n.name: f"http://{n.address}:{HTTP_PORT}" for n in self.net}

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def check(self, name: str, ok: bool, detail: Any) -> None:
        self.result["checks"][name] = {"ok": bool(ok), "detail": detail}
        log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    def rows(self, n: int, shift_std: float = 0.0, seed: int = 0) -> np.ndarray:
        frame = self.reference
        assert frame is not None
        features = [c for c in frame.columns if c not in ("target", "prediction")]
        x = frame[features].sample(n, replace=True, random_state=seed).to_numpy(np.float32)
        if shift_std:
            x += np.float32(shift_std) * frame[features].std().to_numpy(np.float32)
        return x

    def replicas(self) -> dict[str, dict[str, Any]]:
        """replica id -> node name, address, HTTP port, actor state (ALIVE ones with a port)."""
        names = {n.address: n.name for n in self.net}
        addresses = cluster_ray.nodes_alive(self.head)
        ports: dict[str, tuple[str, int]] = {}
        for ray_node in (self.ray_head, self.ray_worker):
            for rid, (host, port) in cluster_ray.replica_ports(ray_node.haproxy_dir).items():
                host = ray_node.node.address if host.startswith("127.") else host
                ports.setdefault(rid, (host, port))
        found = {}
        for actor in cluster_ray.actors(self.head, REPLICA_CLASS):
            if actor["state"] != "ALIVE":
                continue
            rid = (actor["name"] or "").rsplit("#", 1)[-1]
            address = addresses.get(actor["node_id"], "?")
            found[rid] = {"node": names.get(address, "?"), "address": address,
                          "node_id": actor["node_id"], "pid": actor["pid"],
                          "port": ports.get(rid, (None, None))[1]}
        return found

    def replica_on(self, node: str) -> dict[str, Any]:
        (replica,) = [r for r in self.replicas().values() if r["node"] == node]
        return replica

    def direct(self, replica: dict[str, Any]) -> str:
        return f"http://{replica['address']}:{replica['port']}"

    def infer(self, base: str, x: np.ndarray, token: str | None = None,
              path: str = f"/v2/models/{MODEL}/infer") -> httpx.Response:
        return httpx.post(f"{base}{path}", content=infer_body(x), timeout=30, headers={
            "Authorization": f"Bearer {token or self.token}", "content-type": "application/json"})

    def drift_doc(self, version: str = "1") -> dict[str, Any]:
        """The monitor's windows of `version`: production's, "1", until promote_rollback. Named,
        never left to the monitor, whose default is the newest version ("2", which these
        phases send nothing)."""
        answer = httpx.get(f"{self.proxies['head']}/monitor/v1/models/{MODEL}/drift",
                           params={"windows": 100, "version": version}, headers=self.auth,
                           timeout=30)
        answer.raise_for_status()
        return answer.json()

    @staticmethod
    def rows_seen(doc: dict[str, Any]) -> int:
        return doc["open_window"]["rows"] + sum(w["rows"] for w in doc["windows"])

    # ------------------------------------------------------------------ phases

    def start(self) -> None:
        subprocess.run([str(cluster_ray.BIN / "ray"), "get-auth-token", "--generate"],
                       env=cluster_ray.ray_env(), capture_output=True, check=True, timeout=60)
        cluster_net.create(self.net)
        t_head = self.ray_head.start()
        t_worker = self.ray_worker.start()
        wait_for(lambda: len(cluster_ray.nodes_alive(self.head)) == 2, 60, "two nodes alive")
        self.result["figures"]["ray_start_s"] = {"head": round(t_head, 1),
                                                 "worker": round(t_worker, 1)}
        started = time.monotonic()
        self.result["figures"]["deploy_attempts"] = cluster_ray.deploy(
            cluster_config(self.head), self.head, BASE_DIR / "serve.cluster.yaml")

        def running() -> bool:
            apps = cluster_ray.applications(self.head)
            return (all(apps.get(a, {}).get("status") == "RUNNING" for a in ("vigil", "monitor"))
                    and len({r["node"] for r in self.replicas().values() if r["port"]}) == 2)

        wait_for(running, 300, "both applications RUNNING, a replica on each node", 2.0)
        for base in self.proxies.values():
            wait_for(lambda b=base: self.infer(b, self.rows(1)).status_code == 200, 60,
                     f"{base} answering")
        self.result["figures"]["deploy_to_serving_s"] = round(time.monotonic() - started, 1)

    def placement(self) -> list[dict[str, Any]]:
        addresses = cluster_ray.nodes_alive(self.head)
        names = {n.address: n.name for n in self.net}
        rows = []
        for cls in (REPLICA_CLASS, "ServeReplica:monitor:Monitor", "ServeController",
                    "HAProxyManager", "ProxyActor", "_Board"):
            for actor in cluster_ray.actors(self.head, cls):
                if actor["state"] != "ALIVE":
                    continue
                address = addresses.get(actor["node_id"], "?")
                rows.append({"actor": cls, "name": actor["name"], "node": names.get(address, "?"),
                             "address": address, "node_id": actor["node_id"][:12],
                             "pid": actor["pid"]})
        return rows

    def answers_from_both(self) -> None:
        """Requests through each proxy: which replica (node) answered /v2/vigil/batching, and
        inference through both proxies."""
        by_replica = self.replicas()
        seen: dict[str, dict[str, int]] = {}
        ok = 0

        def one(base: str) -> tuple[str, bool]:
            answer = httpx.get(f"{base}/v2/vigil/batching", headers=self.auth, timeout=30)
            node = by_replica.get(answer.json().get("replica"), {}).get("node", "?")
            return node, self.infer(base, self.rows(1)).status_code == 200

        # Concurrent: HAProxy balances by least connections, so one request at a time always
        # finds the same (first) server idle and goes there.
        from concurrent.futures import ThreadPoolExecutor

        for proxy, base in self.proxies.items():
            seen[proxy] = {}
            with ThreadPoolExecutor(8) as pool:
                for node, answered in pool.map(one, [base] * 30):
                    seen[proxy][node] = seen[proxy].get(node, 0) + 1
                    ok += answered
        nodes = {n for counts in seen.values() for n in counts}
        self.check("answers_from_replicas_on_both_nodes",
                   nodes == {"head", "worker1"} and ok == 60,
                   {"answered_by_node_per_proxy": seen, "inferences_ok": f"{ok}/60"})

    def samples_from_both(self) -> None:
        """Rows sent to one node's replica alone (its own port, past HAProxy) must show up in
        the monitor's windows: the monitor (on the head) gets samples from both nodes."""
        grown = {}
        for node in ("head", "worker1"):
            replica = self.replica_on(node)
            before = self.rows_seen(self.drift_doc())
            sent = 0
            for i in range(5):
                sent += len(x := self.rows(10, seed=100 + i))
                assert self.infer(self.direct(replica), x).status_code == 200
            started = time.monotonic()
            after = before
            while time.monotonic() - started < 30 and after < before + sent:
                time.sleep(0.5)
                after = self.rows_seen(self.drift_doc())
            grown[node] = {"replica": replica, "rows_sent": sent,
                           "window_rows_grew_by": after - before,
                           "seen_after_s": round(time.monotonic() - started, 2)}
        self.check("samples_from_both_nodes_in_monitor_windows",
                   all(g["window_rows_grew_by"] >= g["rows_sent"] for g in grown.values()), grown)

    def drift_on_worker(self) -> None:
        """Shifted rows to the worker's replica alone until a window of only those rows closes."""
        replica = self.replica_on("worker1")
        first = self.drift_doc()["windows_evaluated"]
        started = time.monotonic()
        for i in range(2 * WINDOW_ROWS // 20 + 2):
            assert self.infer(self.direct(replica), self.rows(20, 3.0, seed=200 + i)) \
                .status_code == 200

        def drifted() -> dict[str, Any] | None:
            doc = self.drift_doc()
            if doc["windows_evaluated"] < first + 2:
                return None
            return doc["windows"][-1]

        window = wait_for(drifted, 60, "a closed window of the worker's shifted rows", 0.5)
        drift = window.get("drift") or {}
        self.check("drift_detected_on_worker_traffic", bool(drift.get("dataset_drift")), {
            "window": window["index"], "rows": window["rows"],
            "share_drifted": drift.get("share_drifted"),
            "seconds_from_first_row": round(time.monotonic() - started, 2)})

    def promote_rollback(self) -> None:
        """After each command returns, each replica (asked on its own port) serves the change."""
        figures = {}
        for action, args in (("promote", ("2", "--reason", "cluster scenario")),
                             ("rollback", ("--reason", "cluster scenario"))):
            started = time.monotonic()
            done = vigil_cli("models", action, MODEL, *args, "--url", self.proxies["head"],
                             "--insecure", token=self.token)
            took = time.monotonic() - started
            served = {}
            for node in ("head", "worker1"):
                answer = self.infer(self.direct(self.replica_on(node)), self.rows(1))
                served[node] = answer.json().get("model_version")
            figures[action] = {"exit": done.returncode, "command_s": round(took, 2),
                               "served_right_after": served,
                               "said": (done.stdout.strip().splitlines() or [""])[-1][:160]}
            if done.returncode != 0:
                figures[action]["stderr"] = done.stderr[-500:]
        self.check("promote_and_rollback_on_both_nodes_before_return",
                   all(f["exit"] == 0 and set(f["served_right_after"].values()) == {w}
                       for f, w in ((figures["promote"], "2"), (figures["rollback"], "1"))),
                   figures)

    def revoke(self) -> None:
        """The infer-only token works on both proxies, is revoked, and is refused on both."""
        targets = {f"proxy {n}": b for n, b in self.proxies.items()}
        targets.update({f"replica {n}": self.direct(self.replica_on(n)) for n in ("head", "worker1")})
        before = {k: self.infer(b, self.rows(1), self.revokee).status_code for k, b in targets.items()}
        done = vigil_cli("tokens", "revoke", "revokee", "--models-dir", str(REPOSITORY))
        revoked_at = time.monotonic()
        refused_after: dict[str, float | None] = dict.fromkeys(targets)
        while time.monotonic() - revoked_at < 10 and None in refused_after.values():
            for key, base in targets.items():
                if refused_after[key] is None and \
                        self.infer(base, self.rows(1), self.revokee).status_code == 401:
                    refused_after[key] = round(time.monotonic() - revoked_at, 2)
            time.sleep(0.05)
        still_ok = self.infer(self.proxies["worker1"], self.rows(1)).status_code
        self.check("revoked_token_refused_on_both_nodes",
                   done.returncode == 0 and set(before.values()) == {200}
                   and None not in refused_after.values() and still_ok == 200,
                   {"before": before, "refused_401_after_s": refused_after,
                    "other_token_still_ok": still_ok})

    def outbox_state(self) -> dict[str, Any]:
        if not OUTBOX.exists():
            return {"exists": False}
        with sqlite3.connect(f"file:{OUTBOX}?mode=ro", uri=True, timeout=5) as db:
            events = db.execute("SELECT count(*) FROM events").fetchone()[0]
            alerts = db.execute("SELECT count(*) FROM alerts").fetchone()[0]
        return {"exists": True, "bytes": OUTBOX.stat().st_size, "events": events,
                "alerts": alerts}

    def kill_worker(self) -> None:
        """SIGKILL the worker's raylet under load; measure; then bring the worker back."""
        figures: dict[str, Any] = {}
        old = self.replica_on("worker1")
        outbox_before = self.outbox_state()
        service = Service(list(self.proxies.values()))
        load = Load(service, self.token, infer_body(self.rows(1)), self.args.concurrency)
        service.run_probes()
        load.start()
        t0 = time.time()
        time.sleep(self.args.steady_s)
        raylet = self.ray_worker.raylet_pid()
        assert raylet is not None, "the worker's raylet is not running"
        t_kill = time.time()
        os.kill(raylet, signal.SIGKILL)
        log(f"SIGKILL worker raylet pid {raylet}")
        dead_after = None
        admin: dict[str, Any] = {}
        while time.time() - t_kill < self.args.fault_s:
            if dead_after is None and "worker1" not in self._alive_names():
                dead_after = round(time.time() - t_kill, 1)
            if dead_after is not None and not admin:
                admin = self.admin_round()  # the alias board and the head's replica, alone
            time.sleep(0.5)
        figures["admin_while_worker_dead"] = admin
        replicas_after = self.replicas()
        app = cluster_ray.applications(self.head).get("vigil", {})
        server = app.get("deployments", {}).get("ModelServer", {})
        t_restart = time.time()
        self.ray_worker.stop()  # what the dead node left (HAProxy, workers), as a new pod starts clean
        self.ray_worker.start()
        back = wait_for(lambda: any(r["node"] == "worker1" and r["port"]
                                    for r in self.replicas().values()), 180,
                        "a replica on the restarted worker", 1.0)
        t_back = time.time()
        time.sleep(self.args.steady_s)
        load.stop()
        service.stop()
        t_end = time.time()
        failed_times = [o.t for o in load.outcomes if o.status != 200 and o.t >= t_kill]
        last_failure = max(failed_times) if failed_times else None
        figures.update({
            "before_kill": summarize(load.outcomes, t0, t_kill),
            "kill_to_restart": summarize(load.outcomes, t_kill, t_restart),
            "restart_to_replica_back": summarize(load.outcomes, t_restart, t_back),
            "after_back": summarize(load.outcomes, t_back, t_end),
            "whole_run": summarize(load.outcomes, t0, t_end),
            "worker_marked_dead_after_s": dead_after,
            "last_failed_request_after_kill_s":
                round(last_failure - t_kill, 2) if last_failure else 0.0,
            "readiness_changes": [(round(t - t_kill, 2), e, r) for t, e, r in service.changes],
            "worker_replica_before": {"id": old, "node": "worker1"},
            "replicas_while_worker_dead": replicas_after,
            "model_server_status_while_dead": {"status": server.get("status"),
                                               "message": (server.get("message") or "")[:300],
                                               "replica_states": server.get("replica_states")},
            "worker_rejoin_to_replica_back_s": round(t_back - t_restart, 1),
            "replicas_after_rejoin": back and self.replicas(),
            "outbox_before_kill": outbox_before,
            "outbox_after_kill": self.outbox_state(),
        })
        monitor = httpx.get(f"{self.proxies['head']}/monitor/v1/status", headers=self.auth,
                            timeout=30).status_code
        figures["monitor_status_after"] = monitor
        self.result["figures"]["worker_killed"] = figures
        during = figures["kill_to_restart"]
        self.check("worker_killed_head_keeps_serving",
                   during["requests"] > 0 and figures["after_back"]["failed"] == 0
                   and monitor == 200
                   and all(a["exit"] == 0 for a in figures["admin_while_worker_dead"].values()),
                   {k: figures[k] for k in ("admin_while_worker_dead",
                       "kill_to_restart", "after_back", "last_failed_request_after_kill_s",
                       "worker_marked_dead_after_s", "worker_rejoin_to_replica_back_s")})
        after = figures["outbox_after_kill"]
        self.check("outbox_on_head_survives_worker_death",
                   after.get("exists") and after.get("events", 0) >= outbox_before.get("events", 0),
                   {"before": outbox_before, "after": after})

    def admin_round(self) -> dict[str, Any]:
        """promote 2 then rollback through the head's proxy: exit codes and seconds."""
        out = {}
        for action, args in (("promote", ("2",)), ("rollback", ())):
            started = time.monotonic()
            done = vigil_cli("models", action, MODEL, *args, "--reason", "cluster scenario",
                             "--url", self.proxies["head"], "--insecure", token=self.token)
            out[action] = {"exit": done.returncode, "s": round(time.monotonic() - started, 2),
                           "said": (done.stdout.strip().splitlines() or [""])[-1][:160]
                           or done.stderr.strip()[-300:]}
        return out

    def _alive_names(self) -> set[str]:
        names = {n.address: n.name for n in self.net}
        return {names.get(a, a) for a in cluster_ray.nodes_alive(self.head).values()}

    def serve_log_lines(self) -> dict:
        """The last telling lines of each node's Serve logs (kept in the JSON on failure):
        replicas', and the controller's and proxies' (a failed start is told there)."""
        import re

        patterns = {"replica_*": "monitor|sample|Traceback|Error",
                    "controller_*": "WARNING|ERROR|Traceback|Error|proxy|Proxy",
                    "proxy_*": "WARNING|ERROR|Traceback|Error|HAProxy|started|ready"}
        found = {}
        for ray_node in (self.ray_head, self.ray_worker):
            for glob, pattern in patterns.items():
                for path in ray_node.temp_dir.glob(f"session_*/logs/serve/{glob}"):
                    try:
                        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                                 if re.search(pattern, ln)]
                    except OSError:
                        continue
                    if lines:
                        found[f"{ray_node.node.name}/{path.name}"] = lines[-12:]
        return found

    def stop(self) -> None:
        if not all(c["ok"] for c in self.result["checks"].values()):
            self.result["serve_logs"] = self.serve_log_lines()
        with procs.signals_deferred():
            for ray_node in (self.ray_worker, self.ray_head):
                try:
                    ray_node.stop()
                except Exception as exc:  # noqa: BLE001 - clean up the rest whatever happens
                    log(f"stopping {ray_node.node.name}: {exc}")
            removed = cluster_net.remove_leftovers()
            left = [p for n in self.net for p in cluster_ray.pids_in(n)]
            shutil.rmtree(BASE_DIR, ignore_errors=True)
            self.result["cleanup"] = {"removed": removed, "leftover_links": cluster_net.leftovers(),
                                      "leftover_processes": left}


def table(result: dict[str, Any]) -> str:
    lines = ["", "placement:", f"  {'actor':32} {'node':8} {'address':10} {'node id':13} pid"]
    for row in result.get("placement", []):
        lines.append(f"  {row['actor']:32} {row['node']:8} {row['address']:10} "
                     f"{row['node_id']:13} {row['pid']}")
    lines += ["", "checks:"]
    for name, check in result["checks"].items():
        lines.append(f"  {'PASS' if check['ok'] else 'FAIL'}  {name}")
    killed = result["figures"].get("worker_killed")
    if killed:
        lines += ["", "worker raylet SIGKILLed under load (Service-like client over both proxies):",
                  f"  {'period':26} {'requests':>8} {'failed':>6} {'ratio':>7} {'p50 ms':>7} "
                  f"{'p99 ms':>7}"]
        for key in ("before_kill", "kill_to_restart", "restart_to_replica_back", "after_back",
                    "whole_run"):
            s = killed[key]
            lines.append(f"  {key:26} {s['requests']:>8} {s['failed']:>6} "
                         f"{s['error_ratio'] if s['error_ratio'] is not None else '-':>7} "
                         f"{s['p50_ms'] or '-':>7} {s['p99_ms'] or '-':>7}")
        lines += [f"  last failed request: {killed['last_failed_request_after_kill_s']} s after "
                  f"the kill; worker marked dead after {killed['worker_marked_dead_after_s']} s; "
                  f"replica back {killed['worker_rejoin_to_replica_back_s']} s after the worker "
                  f"rejoined"]
    ok = all(c["ok"] for c in result["checks"].values())
    lines += ["", f"{'PASS' if ok else 'FAIL'}: {sum(c['ok'] for c in result['checks'].values())}"
                  f"/{len(result['checks'])} checks"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--basic", action="store_true",
                        help="the round trip only (no worker kill): what `make test` runs")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steady-s", type=float, default=8.0, help="load before and after")
    parser.add_argument("--fault-s", type=float, default=30.0,
                        help="seconds the worker stays dead under load")
    parser.add_argument("--out", type=Path, default=ROOT / "load_tests/results/cluster.json")
    args = parser.parse_args(argv)
    # This process is a client of a token-auth cluster (Serve's CLI, the state API): the
    # token is ~/.ray/auth_token, as on the nodes. An inherited RAY_AUTH_TOKEN (the test
    # session's own instance sets one) or RAY_ADDRESS would point it at another cluster.
    os.environ["RAY_AUTH_MODE"] = "token"
    for inherited in ("RAY_AUTH_TOKEN", "RAY_ADDRESS"):
        os.environ.pop(inherited, None)
    why_not = cluster_net.available()
    if why_not:
        print(f"SKIP: {why_not}", flush=True)
        return 2
    BASE_DIR.parent.mkdir(parents=True, exist_ok=True)
    lock = open("/tmp/vglc.lock", "w")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another cluster scenario is running (/tmp/vglc.lock)", flush=True)
        return 2
    procs.become_subreaper()

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # the finally below still cleans up

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    scenario: Scenario | None = None
    result: dict[str, Any] = {"checks": {}, "figures": {}}
    try:
        cluster_net.remove_leftovers()
        shutil.rmtree(BASE_DIR, ignore_errors=True)
        REPOSITORY.mkdir(parents=True)
        OUTBOX.parent.mkdir(parents=True)
        token, revokee = prepare_repository()
        scenario = Scenario(args)
        scenario.token, scenario.revokee = token, revokee
        result = scenario.result
        result["setup"] = {"nodes": {n.name: n.address for n in scenario.net},
                           "repository": str(REPOSITORY), "outbox": str(OUTBOX),
                           "shared_path_note": "one file system: both nodes read the same path"}
        scenario.start()
        result["placement"] = scenario.placement()
        phases = [scenario.answers_from_both, scenario.samples_from_both,
                  scenario.drift_on_worker, scenario.promote_rollback, scenario.revoke]
        if not args.basic:
            phases.append(scenario.kill_worker)
        for phase in phases:  # one phase failing still lets the others show what they show
            try:
                phase()
            except Exception as exc:  # noqa: BLE001 - a failed check; the next phase runs
                log(f"{phase.__name__} error: {type(exc).__name__}: {exc}")
                result["checks"][f"{phase.__name__}_ran"] = {"ok": False,
                                                             "detail": f"{exc!r:.2000}"}
        if not args.basic:
            result["placement_after_rejoin"] = scenario.placement()
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - a failed check, cleaned up
        log(f"scenario error: {type(exc).__name__}: {exc}")
        result["checks"]["scenario_completed"] = {"ok": False, "detail": f"{exc!r:.2000}"}
    finally:
        if scenario is not None:
            scenario.stop()
        else:
            cluster_net.remove_leftovers()
            shutil.rmtree(BASE_DIR, ignore_errors=True)
    cleanup = result.get("cleanup", {})
    result["checks"]["cleaned_up"] = {
        "ok": not cleanup.get("leftover_links") and not cleanup.get("leftover_processes"),
        "detail": cleanup}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    print(table(result), flush=True)
    print("RESULT " + json.dumps({k: v["ok"] for k, v in result["checks"].items()}), flush=True)
    return 0 if all(c["ok"] for c in result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
