"""Starting and stopping the peer servers (MLServer, LitServe, BentoML), each from its own
virtual environment, in a session of its own, stopped with every process it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from load_tests import procs
from load_tests.peer_envs import PeerEnv
from load_tests.targets import HOST, REPO_ROOT, StartError, http_call

BATCH_SIZE = 64  # the largest concurrency measured: a full batch is every client at once
BATCH_WAIT_S = 0.002  # Vigil's batch_wait_timeout_s in configs/serve.yaml
WORKERS = 2  # Vigil's initial replicas, the reference's uvicorn workers
MODELS = ("breast_cancer", "mlp")


class PeerServer:
    """One peer under test: its command, environment, readiness probe and settings."""

    family = ""
    ready_path = "/"

    def __init__(
        self, env: PeerEnv, port: int, batching: bool, repository: Path, work: Path
    ) -> None:
        self.env, self.port, self.batching = env, port, batching
        self.repository, self.work = repository, work / self.label
        self.work.mkdir(parents=True, exist_ok=True)
        self.log = self.work / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def label(self) -> str:
        return f"{self.family}-batch" if self.batching else self.family

    def ports(self) -> list[int]:
        return [self.port]

    def command(self) -> list[str]:
        raise NotImplementedError

    def knobs(self) -> dict[str, str]:
        """PEER_* variables the peer's server code reads."""
        return {}

    def settings(self) -> dict[str, Any]:
        """What was configured, for the report."""
        raise NotImplementedError

    def ready(self) -> bool:
        return http_call(self.port, "GET", self.ready_path, timeout_s=2)[0] == 200

    # ------------------------------------------------------------ lifecycle

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "VIRTUAL_ENV", "PYTHON"))}  # fmt: skip
        env.update(
            PATH=f"{self.env.bin}{os.pathsep}{env.get('PATH', '')}",
            VIRTUAL_ENV=str(self.env.path),
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
            BENCH_MODEL_REPOSITORY=str(self.repository),
            PEER_PORT=str(self.port),
            PEER_WORKERS=str(WORKERS),
            BENTOML_DO_NOT_TRACK="true",
        )
        env.update(self.knobs())
        return env

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until ready; returns the seconds it took."""
        busy = [p for p in self.ports() if procs.port_in_use(p)]
        if busy:
            raise StartError(f"{self.label}: ports {busy} are already in use on {HOST}")
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.work, env=self.environment(), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise StartError(f"{self.label} exited with {self.proc.returncode}: {self.tail()}")
            try:
                if self.ready():
                    return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.3)
        raise StartError(f"{self.label} not ready after {timeout_s:.0f}s: {self.tail()}")

    def pids(self, protected: Collection[int] = ()) -> list[int]:
        """The server's processes: its tree, plus whatever re-parented to us (a subreaper)
        once its parent died, minus `protected` (the reference server)."""
        table = procs.parents()
        found = set(procs.descendants(os.getpid(), table))
        if self.proc is not None:
            found.add(self.proc.pid)
        return sorted(p for p in found - set(protected) if procs.alive(p))

    def stop(self, protected: Collection[int] = (), grace_s: float = 10.0) -> dict[str, Any]:
        """SIGTERM to the process group, then to every remaining process by id, SIGKILL after
        grace_s; then check that none is left and no port stays bound."""
        facts: dict[str, Any] = {"processes": 0, "sigkill": [], "left": [], "ports_bound": []}
        if self.proc is None:
            return facts
        started = time.monotonic()
        pids = self.pids(protected)
        facts["processes"] = len(pids)
        names = {p: procs.comm(p) for p in pids}
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(procs.alive(p) for p in pids):
            procs.reap()
            time.sleep(0.2)
        survivors = [p for p in pids if procs.alive(p)]
        facts["alive_after_group_sigterm"] = [f"{p} {names.get(p, '?')}" for p in survivors]
        killed = procs.stop_pids(survivors, grace_s=3.0)
        facts["sigkill"] = [f"{p} {names.get(p, '?')}" for p in killed]
        late = [p for p in self.pids(protected) if p not in pids]  # forked while stopping
        if late:
            procs.stop_pids(late, grace_s=2.0)
        facts["left"] = [p for p in self.pids(protected)]
        for _ in range(25):
            facts["ports_bound"] = [p for p in self.ports() if procs.port_in_use(p)]
            if not facts["ports_bound"]:
                break
            time.sleep(0.2)
        facts["stop_s"] = round(time.monotonic() - started, 1)
        self.proc = None
        return facts

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class MLServerPeer(PeerServer):
    family = "mlserver"
    ready_path = "/v2/health/ready"

    def ports(self) -> list[int]:
        return [self.port, self.port + 100, self.port + 200]  # HTTP, gRPC, metrics

    def server_settings(self) -> dict[str, Any]:
        return {
            "debug": False, "parallel_workers": 0, "host": HOST, "http_port": self.port,
            "grpc_port": self.port + 100, "metrics_port": self.port + 200,
            "metrics_dir": str(self.work / "metrics"), "load_models_at_startup": True,
        }  # fmt: skip

    def model_settings(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": name, "implementation": "load_tests.peers.mlserver_runtime.OnnxRuntime",
        }  # fmt: skip
        if self.batching:
            doc.update(max_batch_size=BATCH_SIZE, max_batch_time=BATCH_WAIT_S)
        return doc

    def command(self) -> list[str]:
        folder = self.work / "repository"
        for name in MODELS:
            (folder / name).mkdir(parents=True, exist_ok=True)
            (folder / name / "model-settings.json").write_text(
                json.dumps(self.model_settings(name))
            )
        (folder / "settings.json").write_text(json.dumps(self.server_settings()))
        return [str(self.env.bin / "mlserver"), "start", str(folder)]

    def ready(self) -> bool:
        return all(
            http_call(self.port, "GET", path, timeout_s=2)[0] == 200
            for path in ["/v2/health/ready", *(f"/v2/models/{m}/ready" for m in MODELS)]
        )

    def settings(self) -> dict[str, Any]:
        return {
            "settings.json": self.server_settings(),
            "model-settings.json": self.model_settings("<model>"),
            "processes": "one (parallel_workers 0: inference in the HTTP server's process)",
            "runtime": "load_tests.peers.mlserver_runtime.OnnxRuntime (decode with NumpyCodec, "
            "outputs built with the model's own shapes)",
        }


class LitServePeer(PeerServer):
    family = "litserve"
    ready_path = "/health"

    def knobs(self) -> dict[str, str]:
        return {
            "PEER_MAX_BATCH": str(BATCH_SIZE if self.batching else 1),
            "PEER_BATCH_TIMEOUT_S": str(BATCH_WAIT_S),
            "PEER_API_SERVERS": str(WORKERS),
        }

    def command(self) -> list[str]:
        return [str(self.env.python), "-m", "load_tests.peers.litserve_api"]

    def settings(self) -> dict[str, Any]:
        return {
            "LitServer": {"accelerator": "cpu", "devices": 1, "workers_per_device": WORKERS,
                          "timeout": 60, "fast_queue": False},
            "run": {"num_api_servers": WORKERS, "log_level": "warning"},
            "LitAPI": {"max_batch_size": BATCH_SIZE if self.batching else 1,
                       "batch_timeout": BATCH_WAIT_S if self.batching else 0.0},
            "processes": f"{WORKERS} uvicorn API servers + {WORKERS} inference workers per model "
            f"({WORKERS * len(MODELS)}), each model's workers on its own queue",
        }  # fmt: skip


class BentoMLPeer(PeerServer):
    family = "bentoml"
    ready_path = "/readyz"

    def knobs(self) -> dict[str, str]:
        return {"PEER_MAX_BATCH": str(BATCH_SIZE if self.batching else 1),
                "PEER_MAX_LATENCY_MS": "1000"}  # fmt: skip

    def command(self) -> list[str]:
        return [str(self.env.bin / "bentoml"), "serve",
                "load_tests.peers.bentoml_service:OnnxService",
                "--host", HOST, "--port", str(self.port)]  # fmt: skip

    def settings(self) -> dict[str, Any]:
        api: dict[str, Any] = {"inputs": "list[dict[str, Any]] (V2 `inputs`)", "sync": True}
        if self.batching:
            api.update(batchable=True, max_batch_size=BATCH_SIZE, max_latency_ms=1000)
        return {
            "service": {"workers": WORKERS, "threads": 1, "logging.access.enabled": False},
            "api": api,
            "extras": "uvloop and httptools installed (pip does not bring them)",
        }


FAMILIES = {"mlserver": MLServerPeer, "litserve": LitServePeer, "bentoml": BentoMLPeer}
