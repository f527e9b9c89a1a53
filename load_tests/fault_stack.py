"""What the fault scenarios share: the Stack they run on (where Vigil answers, its Ray dashboard
and files), the Outcome they return, and how they find and kill Vigil's processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from load_tests.fault_load import Load, bodies

REPLICA_CLASS = "ServeReplica:vigil:ModelServer"
MONITOR_CLASS = "ServeReplica:monitor:Monitor"
BOARD_NAME = "vigil-alias-board"
WARM_S = 3.0  # load before the fault
AFTER_S = 3.0  # load after the recovery


@dataclass
class Stack:
    """A running Vigil: its front door, token headers, Ray dashboard and files."""

    base_url: str
    headers: dict[str, str]
    dashboard_url: str
    repository: Path
    outbox: Path
    haproxy_pids: Callable[[], list[int]] = list
    ray_metrics_url: str | None = None  # Ray's metrics export (the replicas' counters)
    webhook_target: str | None = None  # the monitor's webhook target that webhook_down uses
    receiver_port: int = 0
    concurrency: int = 16

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30)

    def load(self) -> Load:
        return Load(self.base_url, self.headers, bodies(self.repository), self.concurrency)


@dataclass
class Outcome:
    name: str
    sent: int = 0
    failed: int = 0
    window_sent: int = 0
    window_failed: int = 0
    recover_s: float | None = None
    lost: str = ""
    passed: bool = False
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def error_ratio(self) -> float:
        return self.window_failed / self.window_sent if self.window_sent else 0.0

    def count(self, load: Load, fault: float, recovered: float | None) -> None:
        """Requests over the whole run, and over the fault window: those in flight from the
        fault to the recovery (at least 10 s, so a fast recovery is not judged on a handful of
        requests), the ones the fault caught mid-way included."""
        self.sent, self.failed = len(load.shots), sum(not s.ok for s in load.shots)
        end = max(recovered or time.monotonic(), fault + 10.0)
        window = load.during(fault, end)
        self.window_sent, self.window_failed = len(window), sum(not s.ok for s in window)
        self.figures["statuses"] = load.statuses(load.shots[0].sent if load.shots else 0, 1e18)

    def judge(self, **checks: bool) -> Outcome:
        self.checks.update(checks)
        self.passed = all(self.checks.values())
        return self

    def row(self) -> dict[str, Any]:
        return {"scenario": self.name, "sent": self.sent, "failed": self.failed,
                "window_sent": self.window_sent, "window_failed": self.window_failed,
                "error_ratio": round(self.error_ratio, 5),
                "recover_s": None if self.recover_s is None else round(self.recover_s, 2),
                "lost": self.lost, "passed": self.passed, "checks": self.checks,
                "figures": self.figures}


# ------------------------------------------------------------------ what is running where


def actors(stack: Stack, class_name: str) -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(address=stack.dashboard_url,
                       filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])


def board_actor(stack: Stack) -> Any | None:
    from ray.util.state import list_actors

    found = list_actors(address=stack.dashboard_url,
                        filters=[("name", "=", BOARD_NAME), ("state", "=", "ALIVE")])
    return found[0] if found else None


def http_port(pid: int, headers: dict[str, str]) -> int | None:
    """The port on which a replica process answers HTTP itself (Serve's direct ingress)."""
    try:
        ports = sorted({c.laddr.port for c in psutil.Process(pid).net_connections("tcp")
                        if c.status == psutil.CONN_LISTEN})
    except psutil.Error:
        return None
    for port in ports:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", headers=headers,
                         timeout=2).status_code == 200:
                return port
        except httpx.HTTPError:
            continue
    return None


def served_versions(port: int, stack: Stack) -> dict[str, str | None]:
    """model -> the version that answers an infer sent straight to this replica's port."""
    out: dict[str, str | None] = {}
    for body in bodies(stack.repository):
        if body.payload != "json":
            continue
        r = httpx.post(f"http://127.0.0.1:{port}/v2/models/{body.model}/infer",
                       content=body.content, headers={**stack.headers, **body.headers}, timeout=10)
        out[body.model] = r.json().get("model_version") if r.status_code == 200 else None
    return out


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def outbox_state(path: Path, target: str | None = None) -> dict[str, Any]:
    """The alert states and the deliveries of the outbox file, read as it is on disk."""
    if not path.exists():
        return {"alerts": {}, "deliveries": {}}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        alerts = {f"{m}/{v}/{r}": s for m, v, r, s in
                  db.execute("SELECT model, version, rule, state FROM alerts")}
        rows = db.execute("SELECT event_id, target, state FROM deliveries").fetchall()
    finally:
        db.close()
    deliveries = {f"{e}@{t}": s for e, t, s in rows if target is None or t == target}
    return {"alerts": alerts, "deliveries": deliveries}
