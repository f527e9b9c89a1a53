"""The servers under test, each on its own ports: bare uvicorn reference, plain Ray Serve, Vigil."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from load_tests import procs

REPO_ROOT = Path(__file__).resolve().parents[1]
VIGIL_CONFIG = REPO_ROOT / "configs" / "serve.yaml"
_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


class StartError(RuntimeError):
    """A server under test could not be started or never became ready."""


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ---------------------------------------------------------------- reference (uvicorn)


class ReferenceServer:
    """load_tests.reference_server under uvicorn: N worker processes, uvloop, httptools, no
    access log. Runs in its own session; stopped by process group."""

    def __init__(self, port: int, workers: int, repository: Path, work_dir: Path) -> None:
        self.port, self.workers, self.repository = port, workers, repository
        self.log = work_dir / "reference.log"
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []

    def start(self, timeout_s: float = 90.0) -> None:
        if procs.port_in_use(self.port):
            raise StartError(f"reference: port {self.port} is already in use")
        self.command = [
            sys.executable, "-m", "uvicorn", "load_tests.reference_server:app",
            "--host", HOST, "--port", str(self.port), "--workers", str(self.workers),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ]  # fmt: skip
        env = {**os.environ, "BENCH_MODEL_REPOSITORY": str(self.repository)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"reference exited with {self.proc.returncode}: {_tail(self.log)}")
            try:
                if http_call(self.port, "GET", "/v2/health/ready", timeout_s=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise StartError(f"reference not ready after {timeout_s:.0f}s: {_tail(self.log)}")

    def protected_pids(self) -> set[int]:
        if self.proc is None or self.proc.poll() is not None:
            return set()
        return {self.proc.pid, *procs.descendants(self.proc.pid)}

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_process_group(self.proc.pid)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self.proc = None


# ---------------------------------------------------------------- a private Ray cluster


@dataclass(frozen=True)
class RayPorts:
    """Non-default ports so a developer's `make serve` / `serve run` on this machine is untouched."""

    gcs: int
    dashboard: int
    client_server: int
    dashboard_agent: int
    http: int  # Serve's http_options.port
    haproxy_stats: int = 8494
    haproxy_metrics: int = 9191
    fallback_http: int = 8590
    fallback_grpc: int = 9590
    ingress_http_min: int = 32100
    ingress_grpc_min: int = 42100

    def listening(self, ha_proxy: bool) -> list[int]:
        """Ports that must be free before `ray start` (Serve's own ones are not checked there)."""
        ports = [self.gcs, self.dashboard, self.client_server, self.dashboard_agent, self.http]
        if ha_proxy:
            ports += [self.haproxy_stats, self.haproxy_metrics, self.fallback_http,
                      self.ingress_http_min, self.ingress_http_min + 1]  # fmt: skip
        return ports


class RayCluster:
    """`ray start --head` on 127.0.0.1 with its own temp dir and ports, Serve's CLI against its
    dashboard, and a stop that ends only this cluster's processes (never `ray stop`, which would
    end every Ray on the machine, a developer's included)."""

    def __init__(
        self,
        label: str,
        ports: RayPorts,
        ha_proxy: bool,
        num_cpus: int,
        protected: Callable[[], set[int]] = set,
        keep_logs: bool = False,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])  # more `ray start` flags (a metrics port)
        self.label, self.ports, self.ha_proxy, self.num_cpus = label, ports, ha_proxy, num_cpus
        self.extra_env = dict(extra_env or {})  # e.g. HAProxy's limits, as the Makefile sets
        self.protected, self.keep_logs = protected, keep_logs
        self.temp_dir: Path | None = None
        self.haproxy_dir: Path | None = None
        self.dashboard = f"http://{HOST}:{ports.dashboard}"
        self.env: dict[str, str] = {}
        self.started = False

    def _environment(self) -> dict[str, str]:
        assert self.temp_dir is not None
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RAY_ADDRESS", "RAY_SERVE_", "RAY_AUTH"))
        }
        assert self.haproxy_dir is not None
        haproxy = self.haproxy_dir
        p = self.ports
        env.update(
            {
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_USAGE_STATS_ENABLED": "0",
                # A private loopback cluster: no token auth, whatever ~/.ray/auth_token holds
                # (with a token file present, `ray start` would turn it on and the CLI would not).
                "RAY_AUTH_MODE": "disabled",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
                ),
                "RAY_SERVE_ENABLE_HA_PROXY": "1" if self.ha_proxy else "0",
                # As the Makefile ships it (docs/performance.md).
                "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
                # Everything HAProxy-mode Serve would otherwise put at fixed, shared places.
                "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(haproxy / "haproxy.cfg"),
                "RAY_SERVE_HAPROXY_SOCKET_PATH": str(haproxy / "admin.sock"),
                "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(haproxy),
                "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(haproxy / "server-state"),
                "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(haproxy / "metrics.sock"),
                "RAY_SERVE_HAPROXY_STATS_PORT": str(p.haproxy_stats),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(p.haproxy_metrics),
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(p.fallback_http),
                "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(p.fallback_grpc),
                "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(p.ingress_http_min),
                "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(p.ingress_http_min + 99),
                "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(p.ingress_grpc_min),
                "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(p.ingress_grpc_min + 99),
                **self.extra_env,
            }
        )
        return env

    def start(self) -> None:
        busy = [port for port in self.ports.listening(self.ha_proxy) if procs.port_in_use(port)]
        if busy:
            raise StartError(f"{self.label}: ports {busy} are already in use on {HOST}")
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix=f"vb-{self.label}-", dir="/tmp"))
        # Serve adds a 56-character node id under HAProxy's dir; HAProxy allows 97-byte sockets.
        self.haproxy_dir = Path(tempfile.mkdtemp(prefix="vbh", dir="/tmp"))
        self.env = self._environment()
        p = self.ports
        command = [
            str(_BIN / "ray"), "start", "--head", "--node-ip-address", HOST,
            "--port", str(p.gcs), "--dashboard-host", HOST, "--dashboard-port", str(p.dashboard),
            "--include-dashboard", "true", "--ray-client-server-port", str(p.client_server),
            "--dashboard-agent-listen-port", str(p.dashboard_agent),
            "--num-cpus", str(self.num_cpus), "--object-store-memory", str(512 * 1024 * 1024),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats", *self.extra_args,
        ]  # fmt: skip
        self.started = True  # from here on stop() has something to clean up
        done = self._cli(command, timeout_s=180)
        if done.returncode != 0:
            raise StartError(f"{self.label}: ray start failed: {done.stdout[-1500:]}")

    def _cli(self, command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                command, check=False, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout_s,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            return subprocess.CompletedProcess(command, 124, stdout=f"timed out: {out}")

    def deploy(self, config: dict[str, Any], name: str) -> Path:
        """`serve deploy` a config (written next to the cluster's temp files) to this cluster."""
        assert self.temp_dir is not None
        path = self.temp_dir / name
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = self._cli(
            [str(_BIN / "serve"), "deploy", str(path), "--address", self.dashboard], timeout_s=120
        )
        if done.returncode != 0:
            raise StartError(f"{self.label}: serve deploy failed: {done.stdout[-1500:]}")
        return path

    def applications(self) -> dict[str, Any]:
        status, _, body = http_call(self.ports.dashboard, "GET", "/api/serve/applications/")
        if status != 200:
            raise StartError(f"{self.label}: dashboard answered {status}: {body[:300]!r}")
        return orjson.loads(body).get("applications") or {}

    def wait_running(self, app: str, timeout_s: float = 240.0) -> dict[str, Any]:
        """Poll Serve's REST API until the application is RUNNING with every replica RUNNING."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                found = self.applications().get(app)
            except (OSError, StartError, ValueError) as exc:
                found, last = None, str(exc)
            if found is not None:
                last = f"{found.get('status')}: {found.get('message', '')[:500]}"
                if found.get("status") == "DEPLOY_FAILED":
                    raise StartError(f"{self.label}: application {app} failed: {last}")
                replicas = replica_ids(found)
                deployments = found.get("deployments", {}).values()
                if (
                    found.get("status") == "RUNNING"
                    and replicas
                    and all(d.get("status") == "HEALTHY" for d in deployments)
                ):
                    return found
            time.sleep(1.0)
        raise StartError(
            f"{self.label}: application {app} not running after {timeout_s:.0f}s ({last})"
        )

    def cluster_pids(self) -> list[int]:
        """This cluster's processes: those naming our temp dir, their descendants, and whatever
        re-parented to us (we are a subreaper), minus the protected ones (the reference server)."""
        if self.temp_dir is None:
            return []
        keep = self.protected()
        table = procs.parents()
        roots = procs.pids_with_cmdline(str(self.temp_dir))
        # Ray's client server names the GCS, not the temp dir, and outlived a cluster that
        # failed to deploy (it held the client port against the next one).
        roots += procs.pids_with_cmdline(f"--address={HOST}:{self.ports.gcs} ")
        found = set(roots)
        for pid in roots:
            found.update(procs.descendants(pid, table))
        found.update(procs.descendants(os.getpid(), table))
        found.discard(os.getpid())
        return sorted(found - keep)

    def stop(self) -> list[str]:
        """End every process of this cluster, as `ray stop` would for this one cluster only:
        SIGTERM, then SIGKILL after 3 s. (A polite `serve shutdown` first took up to 20 s with
        HAProxy and bought nothing, since everything is ended anyway.) Returns notes."""
        notes: list[str] = []
        if not self.started:
            return notes
        pids = self.cluster_pids()
        names = {pid: procs.comm(pid) for pid in pids}
        killed = procs.stop_pids(pids, grace_s=3.0)
        if killed:
            which = sorted(names.get(p, "?") for p in killed)
            print(
                f"{self.label}: {len(killed)} of {len(pids)} Ray processes needed SIGKILL "
                f"after 3 s of SIGTERM ({', '.join(which)})",
                flush=True,
            )
        left = [p for p in self.cluster_pids() if procs.alive(p)]
        if left:
            procs.stop_pids(left, grace_s=2.0)
            notes.append(f"{self.label}: second sweep stopped {len(left)} processes")
        if self.haproxy_dir is not None:
            shutil.rmtree(self.haproxy_dir, ignore_errors=True)
        if self.temp_dir is not None and not self.keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.started = False
        return notes


def replica_ids(app: dict[str, Any]) -> list[str]:
    ids = []
    for deployment in app.get("deployments", {}).values():
        for replica in deployment.get("replicas", []):
            if replica.get("state") == "RUNNING":
                ids.append(replica.get("replica_id"))
    return sorted(ids)


# ---------------------------------------------------------------- Serve configs


def plain_serve_config(ports: RayPorts, repository: Path, replicas: int) -> dict[str, Any]:
    """Ray's default HTTP proxy in front of load_tests.plain_serve_app (2 replicas, 0.5 CPU)."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": HOST, "port": ports.http},
        "logging_config": {"enable_access_log": False, "log_level": "INFO", "encoding": "TEXT"},
        "applications": [
            {
                "name": "plain",
                "route_prefix": "/",
                "import_path": "load_tests.plain_serve_app:build_app",
                "args": {"model_repository": str(repository), "num_replicas": replicas},
            }
        ],
    }


def vigil_config(
    ports: RayPorts, batching_enabled: bool, sampling_enabled: bool = True,
    feedback_enabled: bool | None = None,
) -> dict[str, Any]:
    """configs/serve.yaml as it is, except the HTTP port, absolute model repositories (the apps
    are built in a Ray worker, not in this directory), and the model server's batching
    `user_config.enabled`, `args.sampling.enabled` and (unless None) `args.feedback.enabled`."""
    config = yaml.safe_load(VIGIL_CONFIG.read_text())
    config.setdefault("http_options", {})["port"] = ports.http
    for app in config["applications"]:
        repo = Path(app.get("args", {}).get("model_repository", "models"))
        if not repo.is_absolute():
            app.setdefault("args", {})["model_repository"] = str((REPO_ROOT / repo).resolve())
        if app["name"] != "vigil":
            continue
        sampling = app["args"].setdefault("sampling", {})
        sampling["enabled"] = sampling_enabled
        if feedback_enabled is not None:
            app["args"].setdefault("feedback", {})["enabled"] = feedback_enabled
        for deployment in app.get("deployments", []):
            if "user_config" in deployment:
                deployment["user_config"] = {
                    **deployment["user_config"],
                    "enabled": batching_enabled,
                }
    return config


def vigil_replicas(config: dict[str, Any]) -> int:
    """How many replicas configs/serve.yaml starts ModelServer with (the reference gets as many
    uvicorn workers and plain Serve as many replicas)."""
    app = next(a for a in config["applications"] if a["name"] == "vigil")
    deployment = app["deployments"][0]
    if "num_replicas" in deployment and isinstance(deployment["num_replicas"], int):
        return deployment["num_replicas"]
    scaling = deployment.get("autoscaling_config") or {}
    return int(scaling.get("initial_replicas") or scaling.get("min_replicas") or 1)


def vigil_batching_by_replica(ports: RayPorts, probes: int = 4) -> dict[str, bool]:
    """replica id -> batching `enabled`, from Vigil's /v2/vigil/batching. Asked through HAProxy
    and, since HAProxy keeps sending a lone client to one replica, also straight at each replica's
    own HTTP port (Serve's direct-ingress range, private to this cluster)."""
    found: dict[str, bool] = {}
    targets = [ports.http] * probes + list(
        range(ports.ingress_http_min, ports.ingress_http_min + 16)
    )
    for port in targets:
        try:
            status, _, body = http_call(port, "GET", "/v2/vigil/batching", timeout_s=3)
        except OSError:
            continue
        if status == 200:
            doc = orjson.loads(body)
            found[str(doc.get("replica"))] = bool(doc.get("batching", {}).get("enabled"))
    return found
