"""Every server of the side-by-side run behind one small interface (start, processes, stop,
settings, versions): the bare reference, the peers, plain Ray Serve and Vigil as shipped."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from load_tests import peer_envs, procs
from load_tests.peer_servers import PeerServer
from load_tests.targets import (
    VIGIL_CONFIG,
    RayCluster,
    RayPorts,
    ReferenceServer,
    plain_serve_config,
    vigil_config,
)

_HTTP_PACKAGES = ("onnxruntime", "numpy", "uvicorn", "uvloop", "httptools", "starlette",
                  "fastapi", "pydantic", "orjson")  # fmt: skip


def _ours(*packages: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


class Target:
    """What the bench needs of a server under test."""

    label = ""
    port = 0

    def start(self) -> float:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def stop(self) -> dict[str, Any]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        raise NotImplementedError

    def versions(self) -> dict[str, str | None]:
        raise NotImplementedError

    def footprint(self) -> dict[str, Any]:
        """Processes and the sum of their resident memory, right after start (shared pages
        counted once per process)."""
        pids = self.pids()
        rss = sum(procs.memory_kib(p).get("VmRSS", 0) for p in pids)
        return {"processes": len(pids), "rss_sum_mib": round(rss / 1024, 1)}


def _ports_bound(ports: list[int], wait_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        bound = [p for p in ports if procs.port_in_use(p)]
        if not bound or time.monotonic() > deadline:
            return bound
        time.sleep(0.2)


class ReferenceTarget(Target):
    label = "reference"

    def __init__(self, server: ReferenceServer) -> None:
        self.server, self.port = server, server.port

    def start(self) -> float:
        started = time.monotonic()
        self.server.start()
        return time.monotonic() - started

    def pids(self) -> list[int]:
        return sorted(self.server.protected_pids())

    def stop(self) -> dict[str, Any]:
        pids = self.pids()
        self.server.stop()
        return {"processes": len(pids), "left": [p for p in pids if procs.alive(p)],
                "ports_bound": _ports_bound([self.port])}  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"command": " ".join(self.server.command[2:]) or "uvicorn load_tests.reference_server:app",
                "workers": self.server.workers,
                "inference": "onnxruntime in the event loop, intra_op_threads=1"}  # fmt: skip

    def versions(self) -> dict[str, str | None]:
        return _ours(*_HTTP_PACKAGES)


class PeerTarget(Target):
    def __init__(self, server: PeerServer, protected: Callable[[], set[int]]) -> None:
        self.server, self.protected = server, protected
        self.label, self.port = server.label, server.port

    def start(self) -> float:
        return self.server.start()

    def pids(self) -> list[int]:
        return self.server.pids(self.protected())

    def stop(self) -> dict[str, Any]:
        return self.server.stop(self.protected())

    def settings(self) -> dict[str, Any]:
        return {**self.server.settings(), "pins": self.server.env.requirements(),
                "why_pins": self.server.env.why}  # fmt: skip

    def versions(self) -> dict[str, str | None]:
        env = self.server.env
        return peer_envs.installed(env, (env.name, *_HTTP_PACKAGES))


class RayTarget(Target):
    """A private Ray cluster serving plain_serve_app (Ray's HTTP proxy) or Vigil as shipped
    (configs/serve.yaml, HAProxy), with the run's temporary model repository."""

    def __init__(self, label: str, ports: RayPorts, repository: Path, replicas: int,
                 protected: Callable[[], set[int]], keep_logs: bool = False) -> None:  # fmt: skip
        self.label, self.ports, self.port = label, ports, ports.http
        self.repository, self.replicas = repository, replicas
        self.vigil = label == "vigil"
        self.cluster = RayCluster(label, ports, ha_proxy=self.vigil, num_cpus=os.cpu_count() or 2,
                                  protected=protected, keep_logs=keep_logs)  # fmt: skip

    def config(self) -> dict[str, Any]:
        if not self.vigil:
            return plain_serve_config(self.ports, self.repository, self.replicas)
        config = vigil_config(self.ports, batching_enabled=True, sampling_enabled=True)
        for app in config["applications"]:
            app.setdefault("args", {})["model_repository"] = str(self.repository)
        return config

    def start(self) -> float:
        started = time.monotonic()
        self.cluster.start()
        self.cluster.deploy(self.config(), f"{self.label}.yaml")
        self.cluster.wait_running("vigil" if self.vigil else "plain")
        if self.vigil:
            self.cluster.wait_running("monitor")
        return time.monotonic() - started

    def pids(self) -> list[int]:
        return self.cluster.cluster_pids()

    def stop(self) -> dict[str, Any]:
        pids = self.pids()
        notes = self.cluster.stop()
        return {"processes": len(pids), "notes": notes,
                "left": [p for p in pids if procs.alive(p)],
                "ports_bound": _ports_bound(self.ports.listening(self.vigil))}  # fmt: skip

    def settings(self) -> dict[str, Any]:
        if not self.vigil:
            return {"app": "load_tests.plain_serve_app", "replicas": self.replicas,
                    "num_cpus_per_replica": 0.5, "max_ongoing_requests": 256,
                    "proxy": "Ray Serve's default HTTP proxy (no HAProxy)"}  # fmt: skip
        shipped = yaml.safe_load(VIGIL_CONFIG.read_text())
        deployment = shipped["applications"][0]["deployments"][0]
        return {"config": "configs/serve.yaml as shipped (port and model repository changed)",
                "ingress": "HAProxy -> replicas (RAY_SERVE_ENABLE_HA_PROXY=1)",
                "autoscaling": deployment.get("autoscaling_config"),
                "user_config": deployment.get("user_config"),
                "runtime": shipped["applications"][0]["args"].get("runtime"),
                "monitoring": "monitor app on, sampling on (as shipped)"}  # fmt: skip

    def versions(self) -> dict[str, str | None]:
        return _ours("ray", *_HTTP_PACKAGES)
