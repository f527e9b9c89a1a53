"""Deploys configs/serve.gpu.yaml's model server on a Ray node that declares GPUs it does not have
and reports, as JSON, where Ray placed the replicas and what onnxruntime ran on.

Run by tests/integration/test_gpu_placement.py in a process of its own (the integration session
already holds a Ray instance without GPUs):

    python -m tests.gpu_placement_check MODELS_DIR

The application is submitted as `serve run configs/serve.gpu.yaml` submits it (Serve's controller
client with the config), with these changes only: the model repository, the
monitor application and the samples sent to it left out, no HTTP proxy, fixed replica counts
instead of autoscaling, and each phase's num_gpus and require_gpu. Phases:

  refused  the config as shipped (require_gpu: true), 1 replica: it must fail to start here.
  whole    require_gpu: false, num_gpus 1, 2 replicas on the 2 declared GPUs.
  shared   require_gpu: false, num_gpus 0.5, 4 replicas: two on each declared GPU.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
GPU_CONFIG = ROOT / "configs" / "serve.gpu.yaml"
APP = "vigil"
REPLICA_CLASS = "ServeReplica:vigil:ModelServer"
DECLARED_GPUS = 2
DECLARED_CPUS = 4  # logical: four 1-CPU replicas in the shared phase


def phase_config(
    models_dir: Path, num_gpus: float, replicas: int, require_gpu: bool
) -> dict[str, Any]:
    """serve.gpu.yaml's vigil application, changed only as the module docstring says."""
    config = yaml.safe_load(GPU_CONFIG.read_text())
    config["proxy_location"] = "Disabled"
    config["applications"] = [copy.deepcopy(a) for a in config["applications"] if a["name"] == APP]
    (app,) = config["applications"]
    app["args"]["model_repository"] = str(models_dir)
    app["args"]["sampling"] = {"enabled": False}  # no monitor application to send them to
    app["args"]["runtime"]["require_gpu"] = require_gpu
    (deployment,) = app["deployments"]
    deployment.pop("autoscaling_config")
    deployment["num_replicas"] = replicas
    deployment["ray_actor_options"]["num_gpus"] = num_gpus
    return config


def wait_for(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.25)
    raise TimeoutError(f"{what} not reached in {timeout}s (last: {last!r})")


def app_status() -> tuple[str, str]:
    from ray import serve

    app = serve.status().applications.get(APP)
    return (app.status.value, app.message) if app else ("NOT_STARTED", "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replicas(dashboard: str) -> list[Any]:
    from ray.util.state import list_actors

    return list_actors(
        address=dashboard,
        filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")],
        detail=True,
    )


def replica_states(expected: int) -> dict[str, dict[str, Any]]:
    """GET /v2/vigil/batching's document from every live replica, asked through the app's
    handle (requests land on replicas at random: ask until each has answered)."""
    from ray import serve

    handle = serve.get_app_handle(APP)
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 60
    while len(seen) < expected and time.monotonic() < deadline:
        response = handle.batching_state.remote(None).result(timeout_s=30)
        doc = json.loads(response.body)
        seen[doc["replica"]] = doc
    return seen


def run_phase(
    client, dashboard: str, models_dir: Path, num_gpus: float, count: int, require_gpu: bool
) -> dict:
    from ray.serve.schema import ServeDeploySchema

    from ray import serve

    config = phase_config(models_dir, num_gpus, count, require_gpu)
    client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
    try:
        if require_gpu:
            wait_for(lambda: app_status()[0] == "DEPLOY_FAILED", 80, "DEPLOY_FAILED")
            deployment = serve.status().applications[APP].deployments["ModelServer"]
            return {"status": app_status()[0], "message": deployment.message}
        return placement(dashboard, num_gpus, count)
    finally:  # each phase starts from an empty cluster, not from a rolling update
        serve.delete(APP)


def placement(dashboard: str, num_gpus: float, count: int) -> dict:
    import ray

    seen: list[Any] = []

    def settled() -> bool:
        seen[:] = [app_status(), replicas(dashboard)]
        return seen[0][0] == "RUNNING" and len(seen[1]) == count

    try:
        wait_for(settled, 80, f"{count} replicas running")
    except TimeoutError as exc:
        status, live = seen
        raise TimeoutError(f"{exc}: {status}, {[a.required_resources for a in live]}") from None
    live = seen[1]
    states = replica_states(count)
    return {
        "status": app_status()[0],
        "required_resources": [dict(a.required_resources) for a in live],
        "gpus_available": ray.available_resources().get("GPU", 0.0),
        "gpus_total": ray.cluster_resources().get("GPU", 0.0),
        "replicas": {
            rid: {"accelerators": doc["accelerators"],
                  "providers": {m: v["providers"] for m, v in doc["models"].items()}}
            for rid, doc in states.items()
        },
    }


def fallback_log_lines(session_dir: Path) -> list[str]:
    """The runtime's CPU-fallback warnings, from the replicas' logs (vigil's loggers have no
    handler of their own in a replica: warnings reach the worker's stderr, worker-*.err)."""
    lines: list[str] = []
    for path in sorted((session_dir / "logs").rglob("*")):
        if path.is_file() and path.suffix in (".log", ".err", ".out"):
            for line in path.read_text(errors="replace").splitlines():
                if "CUDA was asked for" in line or "onnxruntime offers CUDA" in line:
                    lines.append(line)
    return lines


def main(models_dir: Path) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve
    from ray.serve._private import api as serve_api

    dashboard_port = free_port()
    dashboard = f"http://127.0.0.1:{dashboard_port}"  # the state API asks it for the actors
    ray.init(
        address="local",
        num_cpus=DECLARED_CPUS,
        num_gpus=DECLARED_GPUS,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
    )
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())
    try:
        # What `serve run CONFIG` does: start Serve with the config's options, then hand the
        # config to the controller.
        client = serve_api.serve_start(proxy_location="Disabled")
        result = {
            "refused": run_phase(client, dashboard, models_dir, 1, 1, require_gpu=True),
            "whole": run_phase(
                client, dashboard, models_dir, 1, DECLARED_GPUS, require_gpu=False
            ),
            "shared": run_phase(
                client, dashboard, models_dir, 0.5, 2 * DECLARED_GPUS, require_gpu=False
            ),
        }
        result["fallback_log_lines"] = fallback_log_lines(session_dir)
        return result
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))), flush=True)
