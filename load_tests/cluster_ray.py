"""Ray nodes in network namespaces: `ray start --head` in one, `ray start --address` in the others.

Every node runs with its own address (`--node-ip-address`), its own temp dir and HAProxy dir, and
the environment `make serve` gives Ray (HAProxy ingress, token auth, vigil-haproxy and its
limits) except RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER: the Makefile sets it to 0 to keep a single
node on 127.0.0.1, and at 0 Ray ignores --node-ip-address and refuses `ray start --address`
("Multi-node Ray clusters are not supported"); here it is 1.

A node's processes are the processes in its namespace (/proc/PID/ns/net): that finds its raylet
to kill, and stops every one of them (HAProxy included, which outlives a dead raylet) without
`ray stop`, which would end every Ray on this machine (the test session's, other users').
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from load_tests import procs
from load_tests.cluster_net import Node

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GCS_PORT = 6379
DASHBOARD_PORT = 8265
HTTP_PORT = 8000
BASE_DIR = Path("/tmp/vglc")  # short: Ray's unix sockets live under it (108-byte limit)
HEAD_RESOURCE = "vigil_monitor"  # only the head declares it (as the Helm chart): the outbox is there


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every `ray start` here: the Makefile's, made for a cluster."""
    n = os.sysconf("SC_OPEN_MAX")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIGIL_"))}
    env.update({
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # ~/.ray/auth_token: the same file on every node here
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "10",
        "RAY_SERVE_HAPROXY_MAXCONN": str(max(1024, (n - 512) * 2 // 5)),
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(haproxy_wrapper()),
        "VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S": "10",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",  # as the Makefile ships it
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **(extra or {}),
    })
    return env


def haproxy_wrapper() -> Path:
    """vigil-haproxy (the header timeout, as the Makefile ships it): the console script where it
    is installed, else a two-line script that runs the same module with this interpreter (an
    editable install made before the script existed has none)."""
    installed = BIN / "vigil-haproxy"
    if installed.exists():
        return installed
    script = BASE_DIR / "bin" / "vigil-haproxy"
    if not script.exists():
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(f"#!/bin/sh\nexec {sys.executable} -m vigil.tools.haproxy_header_timeout"
                          ' "$@"\n')
        script.chmod(0o755)
    return script


def netns_inode(node: Node) -> int:
    return os.stat(f"/run/netns/{node.netns}").st_ino


def pids_in(node: Node) -> list[int]:
    """Every live process whose network namespace is the node's."""
    try:
        inode = netns_inode(node)
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "net").st_ino == inode:
                    found.append(int(entry.name))
            except OSError:
                continue
    return [p for p in found if p != os.getpid() and procs.alive(p)]


@dataclass
class RayNode:
    node: Node
    head: Node
    resources: dict[str, float] = field(default_factory=dict)
    num_cpus: float = 1

    @property
    def is_head(self) -> bool:
        return self.node == self.head

    @property
    def temp_dir(self) -> Path:
        return BASE_DIR / f"ray-{self.node.short}"

    @property
    def haproxy_dir(self) -> Path:  # Serve adds the 56-character node id under it
        return BASE_DIR / f"hp-{self.node.short}"

    def env(self) -> dict[str, str]:
        h = self.haproxy_dir
        return ray_env({
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(h / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(h / "admin.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(h),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(h / "server-state"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(h / "metrics.sock"),
        })

    def start(self, timeout_s: float = 180) -> float:
        """`ray start` in the node's namespace; returns the seconds it took."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.haproxy_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(BIN / "ray"), "start", "--node-ip-address", self.node.address,
            "--num-cpus", str(self.num_cpus), "--object-store-memory", str(200 * 1024 * 1024),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
            "--resources", json.dumps(self.resources),
        ]  # fmt: skip
        if self.is_head:
            command += ["--head", "--port", str(GCS_PORT), "--dashboard-host", self.node.address,
                        "--dashboard-port", str(DASHBOARD_PORT), "--include-dashboard", "true"]
        else:
            command += ["--address", f"{self.head.address}:{GCS_PORT}"]
        started = time.monotonic()
        done = subprocess.run(
            [*self.node.exec_prefix(), *command], cwd=REPO_ROOT, env=self.env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"ray start on {self.node.name} failed: {done.stdout[-2000:]}")
        return time.monotonic() - started

    def raylet_pid(self) -> int | None:
        for pid in pids_in(self.node):
            if procs.comm(pid) == "raylet":
                return pid
        return None

    def stop(self) -> int:
        """End every process of the node (SIGTERM, SIGKILL after 3 s); returns how many."""
        pids = pids_in(self.node)
        procs.stop_pids(pids, grace_s=3.0)
        left = pids_in(self.node)
        if left:
            procs.stop_pids(left, grace_s=1.0)
        procs.reap()
        return len(pids)

    def remove_files(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self.haproxy_dir, ignore_errors=True)


def dashboard_url(head: Node) -> str:
    return f"http://{head.address}:{DASHBOARD_PORT}"


def serve_cli(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """Serve's CLI from this process (the client machine), against the head's dashboard."""
    return subprocess.run(
        [str(BIN / "serve"), *args], env=ray_env(), capture_output=True, text=True,
        timeout=timeout_s, check=False, cwd=REPO_ROOT,
    )  # fmt: skip


# What `serve deploy` says when the first deploy's Serve start gave up on a node's proxy while
# the controller goes on starting it (Ray 2.60, serve_start_async): the controller stays, so
# the same deploy again reaches it and no longer waits on that proxy.
PROXY_START_FAILURES = ("HTTP proxies not available after",
                        "class_name: HAProxyManager", "class_name: ProxyActor")


def deploy(config: dict[str, Any], head: Node, path: Path) -> int:
    """`serve deploy` of the config against the head; returns the attempts it took (a second
    only after a proxy start failure, as a user would run it again)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for attempt in (1, 2):
        done = serve_cli(["deploy", str(path), "--address", dashboard_url(head)])
        if done.returncode == 0:
            return attempt
        said = f"{done.stdout[-1500:]}{done.stderr[-1500:]}"
        if attempt == 2 or not any(f in said for f in PROXY_START_FAILURES):
            break
        print(f"serve deploy: a proxy failed to start, deploying again: {said[-300:]}",
              file=sys.stderr, flush=True)
    raise RuntimeError(f"serve deploy failed (attempt {attempt}): {said}")


def applications(head: Node) -> dict[str, Any]:
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    answer = httpx.get(f"{dashboard_url(head)}/api/serve/applications/", timeout=10,
                       headers=get_auth_headers_if_auth_enabled({}))
    answer.raise_for_status()
    return answer.json().get("applications") or {}


def nodes_alive(head: Node) -> dict[str, str]:
    """node id -> address of every ALIVE node (Ray's state API, over the dashboard)."""
    from ray.util.state import list_nodes

    return {n.node_id: n.node_ip for n in
            list_nodes(address=dashboard_url(head), filters=[("state", "=", "ALIVE")],
                       raise_on_missing_output=False)}  # a node just killed cannot answer


def actors(head: Node, class_name: str) -> list[dict[str, Any]]:
    """Every actor of the class, any state: id, state, node id, pid, name."""
    from ray.util.state import list_actors

    found = list_actors(address=dashboard_url(head), filters=[("class_name", "=", class_name)],
                        limit=1000, raise_on_missing_output=False)
    return [{"actor_id": a.actor_id, "state": a.state, "node_id": a.node_id, "pid": a.pid,
             "name": a.name} for a in found]


def replica_ports(haproxy_dir: Path) -> dict[str, tuple[str, int]]:
    """replica id (the tail of its actor name) -> (host, HTTP port) from the http-* backends of
    the HAProxy config Ray wrote on a node: every replica HAProxy can send to, on any node."""
    found: dict[str, tuple[str, int]] = {}
    for cfg in haproxy_dir.glob("*/haproxy.cfg"):
        backend = ""
        for line in cfg.read_text().splitlines():
            section = re.match(r"(backend|frontend|listen|defaults|global)\s*(\S*)", line)
            if section:
                backend = section.group(2) if section.group(1) == "backend" else ""
                continue
            server = re.match(r"\s+server\s+(\S+)\s+([\d.]+):(\d+)", line)
            if backend.startswith("http-") and server:
                found[server.group(1).rsplit("-", 1)[-1]] = (server.group(2), int(server.group(3)))
    return found


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached in {timeout_s:.0f} s (last: {last!r:.500})")
