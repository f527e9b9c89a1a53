"""One real Ray instance per test session, with configs/serve.yaml deployed through Serve's REST
API (what `serve deploy` does), on 127.0.0.1 only.

The repository holds the two examples plus the test models of tests/graphs.py (models that must
never be batched, and one that runs as long as asked). Auth is on, as in production: a tokens
file beside the repository holds a token with every scope, created by `vigil tokens create`;
`vigil.auth` is its Authorization header."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from load_tests.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "configs" / "serve.yaml"


@dataclass
class VigilCluster:
    base_url: str
    dashboard_url: str
    config: dict[str, Any]
    models_dir: Path
    metrics_port: int
    token: str
    grpc_port: int = 0

    @property
    def grpc_url(self) -> str:
        """host:port of the gRPC service (tritonclient.grpc's `url`)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def tokens_file(self) -> Path:
        return self.models_dir.parent / "tokens.yaml"

    def get(self, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """GET with the all-scopes token."""
        kwargs.setdefault("timeout", 30)
        return httpx.get(f"{self.base_url}{path}", headers={**self.auth, **(headers or {})},
                         **kwargs)

    def deploy(self, config: dict[str, Any]) -> None:
        """Submit a Serve config exactly as `serve deploy` does."""
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        ServeSubmissionClient(self.dashboard_url).deploy_applications(config)

    def replica_actor_ids(self) -> set[str]:
        """The live replica actors of the model server (their identity across reconfigures)."""
        from ray import serve
        from ray.util.state import list_actors

        app = serve.status().applications.get("vigil")
        if app is None or app.status != "RUNNING":
            return set()
        actors = list_actors(
            address=self.dashboard_url,
            filters=[("class_name", "=", "ServeReplica:vigil:ModelServer"), ("state", "=", "ALIVE")],
        )
        return {a.actor_id for a in actors}

    def serving(self) -> bool:
        return self.get("/v2/models/mlp/ready", timeout=2).status_code == 200

    def with_user_config(self, **changes: Any) -> dict[str, Any]:
        config = copy.deepcopy(self.config)
        deployment = config["applications"][0]["deployments"][0]
        deployment["user_config"] = {**deployment["user_config"], **changes}
        return config


def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - still starting
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")


def _kill_leftover_haproxy(node_id: str) -> None:
    # Ray's HAProxy outlives a forced Ray shutdown; stop ours so the next session's ports are free.
    out = subprocess.run(["pgrep", "-f", f"haproxy-serve/{node_id}"], capture_output=True, text=True)
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


@pytest.fixture(scope="session")
def vigil(tmp_path_factory) -> VigilCluster:
    import ray
    from ray import serve

    from vigil.tools.examples import build_examples

    models_dir = tmp_path_factory.mktemp("models")
    build_examples(models_dir)
    publish_test_models(models_dir)
    token = create_token("tests", "infer,monitor,admin", models_dir)

    dashboard_port = free_port()
    metrics_port = free_port()
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        log_to_driver=False,
    )
    node_id = ray.get_runtime_context().get_node_id()
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    http_port = free_port()
    config["http_options"]["port"] = http_port
    grpc_port = free_port()
    config["grpc_options"]["port"] = grpc_port
    for app in config["applications"]:  # the model server and the monitor read one repository
        if "model_repository" in app.get("args", {}):
            app["args"]["model_repository"] = str(models_dir)
    cluster = VigilCluster(
        base_url=f"http://127.0.0.1:{http_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        config=config,
        models_dir=models_dir,
        metrics_port=metrics_port,
        token=token,
        grpc_port=grpc_port,
    )
    try:
        wait_for(lambda: cluster.deploy(config) or True, 60, "dashboard accepting deploys", 1.0)
        wait_for(lambda: len(cluster.replica_actor_ids()) == 2 and cluster.serving(), 180,
                 "two replicas serving", 1.0)
        yield cluster
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            _kill_leftover_haproxy(node_id)


@pytest.fixture
def client(vigil: VigilCluster):
    """An HTTP client carrying the all-scopes token."""
    with httpx.Client(base_url=vigil.base_url, timeout=30, headers=vigil.auth) as c:
        yield c


def publish_test_models(models_dir: Path) -> None:
    """The models no version may batch, and the slow one (tests/graphs.py), undeclared."""
    from tests.graphs import COUPLED_MODELS, SLOW_MODEL
    from vigil.core.repository import publish

    for name, (builder, inputs, outputs) in {**COUPLED_MODELS, "slow": SLOW_MODEL}.items():
        publish(models_dir, name, "1", builder().SerializeToString(), inputs, outputs)


def publish_copies(models_dir: Path, names: Iterable[str], versions: Iterable[str]) -> None:
    """Each name published at each version with breast_cancer's graph and manifest: models a
    test may break or change without touching the session's own."""
    from vigil.core.repository import publish, scan

    source = scan(models_dir, ["breast_cancer"])["breast_cancer"][0]
    data, m = source.model_file.read_bytes(), source.manifest
    for name in names:
        for version in versions:
            publish(models_dir, name, version, data, m.inputs, m.outputs)


def repository_rows(vigil: VigilCluster, model: str) -> dict[str, dict]:
    """The repository index's rows of one model, by version."""
    index = httpx.post(f"{vigil.base_url}/v2/repository/index", json={}, headers=vigil.auth,
                       timeout=60).json()
    return {r["version"]: r for r in index if r["name"] == model}


def create_token(name: str, scopes: str, models_dir: Path) -> str:
    """`vigil tokens create` as a user runs it; the token is the last line it prints."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("vigil")), "tokens", "create", name,
         "--scopes", scopes, "--models-dir", str(models_dir)],
        capture_output=True, text=True, check=True,
    ).stdout
    return out.strip().splitlines()[-1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked runs_last go after every other: they disturb the session's shared server
    beyond what they restore (a replica SIGKILLed and replaced: see tests/integration/
    test_faults.py for what its replacement was seen to lack)."""
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)
