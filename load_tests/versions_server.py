"""The model-version benches' server: Vigil on a private Ray cluster over a temp repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from load_tests import procs
from load_tests.targets import (
    HOST,
    REPO_ROOT,
    RayCluster,
    RayPorts,
    StartError,
    replica_ids,
    vigil_config,
)
from vigil.core import repository as repo
from vigil.core.repository import MANIFEST_FILE, MODEL_FILE, ModelVersion

REPLICA_TITLE = "ServeReplica:vigil:ModelServer"
MONITOR_TITLE = "ServeReplica:monitor:Monitor"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile (KiB) and Threads from /proc/<pid>/status; {} when gone."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "Threads")
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0])
    return found if len(found) == len(wanted) else {}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_models(work: Path) -> Path:
    """`vigil examples build` into the temp dir (the checkout's models/ is left alone)."""
    repository = work / "models"
    command = [
        str(Path(sys.executable).parent / "vigil"),
        "examples",
        "build",
        "--models-dir",
        str(repository),
        "--no-progress",
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise StartError(f"vigil examples build failed: {(done.stdout + done.stderr)[-1500:]}")
    return repository


def first_version(repository: Path, model: str) -> ModelVersion:
    return repo.scan(repository, [model])[model][0]


def publish_copy(
    repository: Path, source: ModelVersion, version: str, cache: dict[Path, bytes] | None = None
) -> ModelVersion:
    """Publish `source`'s ONNX bytes (and its profile, reference and held-out files) again as
    `version`: the bytes are the same, but each version is its own InferenceSession in every
    replica. `cache` keeps the source's files between calls."""
    m = source.manifest
    cache = {} if cache is None else cache

    def read(path: Path) -> bytes:
        if path not in cache:
            cache[path] = path.read_bytes()
        return cache[path]

    extra = {
        p.name: read(p)
        for p in source.path.iterdir()
        if p.is_file() and p.name not in (MODEL_FILE, MANIFEST_FILE)
    }
    return repo.publish(
        repository,
        m.name,
        version,
        read(source.model_file),
        m.inputs,
        m.outputs,
        metadata=m.metadata,
        max_batch_rows=m.max_batch_rows,
        lineage={"published_by": "load_tests", "source_sha256": m.sha256},
        extra_files=extra,
    )


def validate_for_promotion(repository: Path, model: str, version: str) -> dict[str, Any]:
    """Run the model gate on `version` as `vigil models validate` does (the verdict goes into its
    lineage, where promote reads it). Returns {"passed", "failed_checks"}; a version that does not
    pass needs `force` (and a reason) to be promoted."""
    from vigil.tools import model_gate

    verdict = model_gate.validate(repository, model, version, actor="load_tests")
    return {
        "passed": bool(verdict.get("passed")),
        "failed_checks": [c["name"] for c in verdict.get("checks", []) if not c.get("passed")],
    }


def infer_body(source: ModelVersion) -> bytes:
    """A one-row JSON infer body for the version's single FP32 input."""
    (spec,) = source.manifest.inputs
    width = int(spec.shape[1])
    return orjson.dumps(
        {
            "inputs": [
                {
                    "name": spec.name,
                    "shape": [1, width],
                    "datatype": spec.datatype,
                    "data": [0.5] * width,
                }
            ]
        }
    )


@dataclass
class AdminAnswer:
    status: int
    doc: dict[str, Any]
    client_s: float  # from sending the request to having read its answer
    sent: float  # time.monotonic() just before sending
    answered: float  # time.monotonic() once the answer was read


class VersionsServer:
    """configs/serve.yaml (HAProxy, 2 replicas, batching and sampling on) deployed on a private Ray
    cluster, both applications reading a temp `vigil examples build` repository. No tokens file:
    the server is open to its own host (loopback), the admin routes included."""

    def __init__(self, label: str, ports: RayPorts, keep_logs: bool,
                 ray_args: list[str] | None = None, ray_env: dict[str, str] | None = None) -> None:
        self.ports = ports
        self.ray_args = list(ray_args or [])  # more `ray start` flags
        self.ray_env = dict(ray_env or {})  # more environment for the cluster (vigil-haproxy)
        self.work = Path(tempfile.mkdtemp(prefix=f"vigil-{label}-"))
        self.cluster = RayCluster(
            label, ports, ha_proxy=True, num_cpus=os.cpu_count() or 2, keep_logs=keep_logs,
            extra_args=self.ray_args, extra_env=self.ray_env,
        )
        self.repository: Path | None = None
        self.client = httpx.Client(base_url=f"http://{HOST}:{ports.http}", timeout=120)
        self.replicas: list[str] = []
        self.notes: list[str] = []
        # The Monitor's user_config instead of configs/serve.yaml's (None: as shipped).
        self.monitor_user_config: dict[str, Any] | None = None
        self.monitor_args: dict[str, Any] = {}  # added to the Monitor's args
        self.config: dict[str, Any] = {}  # the Serve config deployed
        self.grpc_port = 0  # grpc_options.port instead of configs/serve.yaml's (0: as shipped)

    def start(self) -> Path:
        # A developer's tokens file would switch auth on for the replicas (through Ray's env).
        os.environ.pop("VIGIL_TOKENS_FILE", None)
        log("vigil examples build into a temp dir")
        self.repository = build_models(self.work)
        log("ray start with RAY_SERVE_ENABLE_HA_PROXY=1, serve deploy configs/serve.yaml")
        started = time.monotonic()
        try:
            self.cluster.start()
        except StartError as exc:
            # On a loaded 2-core machine the raylet can time out waiting for its agents (seen:
            # "Timed out waiting for file .../metrics_agent_port"): one more try, from scratch.
            last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [""]
            self.notes.append(f"first `ray start` failed, retried: {last[0].strip()[:300]}")
            log("ray start failed; retrying once")
            self.cluster.stop()
            self.cluster = RayCluster(
                self.cluster.label,
                self.ports,
                ha_proxy=True,
                num_cpus=os.cpu_count() or 2,
                keep_logs=self.cluster.keep_logs,
                extra_args=self.ray_args,
                extra_env=self.ray_env,
            )
            self.cluster.start()
        config = vigil_config(self.ports, batching_enabled=True)
        if self.grpc_port:
            config["grpc_options"]["port"] = self.grpc_port
        for app in config["applications"]:
            app.setdefault("args", {})["model_repository"] = str(self.repository)
            if app["name"] == "monitor":
                app["args"].update(self.monitor_args)
                if self.monitor_user_config is not None:
                    app["deployments"][0]["user_config"] = self.monitor_user_config
        self.config = config
        self.cluster.deploy(config, "vigil.yaml")
        self.replicas = replica_ids(self.cluster.wait_running("vigil"))
        log(f"Vigil up in {time.monotonic() - started:.0f}s, {len(self.replicas)} replicas")
        return self.repository

    def admin(self, model: str, action: str, **body: Any) -> AdminAnswer:
        sent = time.monotonic()
        r = self.client.post(f"/v2/repository/models/{model}/{action}", json=body)
        answered = time.monotonic()
        try:
            doc = r.json()
        except ValueError:
            doc = {"error": r.text[:500]}
        return AdminAnswer(r.status_code, doc, answered - sent, sent, answered)

    def index(self) -> list[dict[str, Any]]:
        r = self.client.post("/v2/repository/index", json={})
        r.raise_for_status()
        return r.json()

    def infer_version(self, model: str, body: bytes) -> tuple[int, str | None]:
        r = self.client.post(
            f"/v2/models/{model}/infer", content=body, headers={"Content-Type": "application/json"}
        )
        return r.status_code, (r.json().get("model_version") if r.status_code == 200 else None)

    def loaded_by_replica(self) -> dict[str, list[str]]:
        """replica id -> the model versions it holds ("name/version"), from /v2/vigil/batching
        asked straight at each replica's own HTTP port (Serve's direct-ingress range, private
        to this cluster), since HAProxy keeps sending one client to one replica."""
        found: dict[str, list[str]] = {}
        first = self.ports.ingress_http_min
        for port in range(first, first + 16):
            try:
                r = httpx.get(f"http://{HOST}:{port}/v2/vigil/batching", timeout=5)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                doc = r.json()
                found[str(doc.get("replica"))] = sorted(doc.get("models", {}))
        return found

    def pids(self, title: str = REPLICA_TITLE) -> list[int]:
        """This cluster's processes whose command line holds `title` (Ray retitles workers)."""
        return [p for p in self.cluster.cluster_pids() if title in procs.cmdline(p)]

    def status(self, title: str = REPLICA_TITLE) -> dict[int, dict[str, int]]:
        """pid -> VmRSS, RssAnon, RssFile (KiB) and Threads of each process titled `title`."""
        out = {}
        for pid in self.pids(title):
            if found := proc_status(pid):
                out[pid] = found
        return out

    def log_dir(self) -> str | None:
        if self.cluster.temp_dir is None:
            return None
        return str(self.cluster.temp_dir / "session_latest" / "logs")

    def stop(self) -> list[str]:
        self.client.close()
        notes = self.cluster.stop()
        procs.reap()
        shutil.rmtree(self.work, ignore_errors=True)
        return notes


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def begin_run() -> tuple[bool, float, dict[str, Any]]:
    """What both version benchmarks do first: SIGTERM/SIGHUP end the run like Ctrl-C (so the
    cluster is stopped), become the subreaper of what Ray leaves, and note the machine.
    Returns (subreaper, monotonic start, machine info)."""
    import signal

    from load_tests import report
    from load_tests.targets import REPO_ROOT

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    subreaper = procs.become_subreaper()
    started = time.monotonic()
    info = report.machine_info(None, REPO_ROOT)
    info["cpu_busy_at_start"] = round(procs.cpu_busy_fraction(1.0), 3)
    return subreaper, started, info
