"""The shipped Serve configs are valid for `serve run` and `serve deploy`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.settings import BatchSettings, ServerSettings

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["serve.yaml", "serve.gpu.yaml", "serve-autoscaling.yaml"])
def test_config_is_a_valid_serve_deploy_schema(name):
    doc = yaml.safe_load((CONFIGS / name).read_text())
    schema = ServeDeploySchema.model_validate(doc)
    assert schema.http_options.host == "127.0.0.1"
    assert schema.logging_config.enable_access_log is False
    app = next(a for a in schema.applications if a.name == "vigil")  # serve.yaml adds the monitor
    assert app.route_prefix == "/" and app.import_path == "serving.app:build_app"
    # Our own parts of it validate against our settings (unknown keys rejected).
    ServerSettings(**app.args)
    (deployment,) = app.model_dump(exclude_unset=True)["deployments"]
    batching = BatchSettings(**deployment["user_config"])
    assert deployment["max_ongoing_requests"] >= batching.max_batch_rows
    assert deployment["ray_actor_options"]["num_cpus"] > 0
    assert deployment["autoscaling_config"]["min_replicas"] >= 1


def test_cpu_config_fits_several_replicas_on_a_small_node():
    doc = yaml.safe_load((CONFIGS / "serve.yaml").read_text())
    assert 0 < doc["applications"][0]["deployments"][0]["ray_actor_options"]["num_cpus"] < 1


def test_autoscaling_config_is_serve_yaml_with_one_to_four_quarter_cpu_replicas():
    """configs/serve-autoscaling.yaml (`make autoscale`) differs from serve.yaml only in the model
    server's autoscaling_config and CPUs: 1 to 4 replicas that fit a 2-core node with the monitor,
    deciding within seconds, on Vigil's working-requests policy."""
    shipped = yaml.safe_load((CONFIGS / "serve.yaml").read_text())
    scaling = yaml.safe_load((CONFIGS / "serve-autoscaling.yaml").read_text())
    server = scaling["applications"][0]["deployments"][0]
    auto = server.pop("autoscaling_config")
    cpus = server.pop("ray_actor_options")["num_cpus"]
    for key in ("autoscaling_config", "ray_actor_options"):
        shipped["applications"][0]["deployments"][0].pop(key)
    assert scaling == shipped
    assert (auto["min_replicas"], auto["initial_replicas"], auto["max_replicas"]) == (1, 1, 4)
    assert auto["policy"]["policy_function"] == "serving.autoscale:working_requests_policy"
    assert auto["upscale_delay_s"] <= 10 and auto["downscale_delay_s"] <= 60
    monitor_cpus = scaling["applications"][1]["deployments"][0]["ray_actor_options"]["num_cpus"]
    assert auto["max_replicas"] * cpus + monitor_cpus <= 2


def test_gpu_config_asks_for_a_gpu_and_cuda():
    doc = yaml.safe_load((CONFIGS / "serve.gpu.yaml").read_text())
    app = doc["applications"][0]
    assert app["args"]["runtime"]["providers"][0] == "cuda"
    assert app["deployments"][0]["ray_actor_options"]["num_gpus"] > 0


@pytest.mark.parametrize("name", ["serve.yaml", "serve.gpu.yaml", "serve-autoscaling.yaml"])
def test_monitor_application_validates_against_its_settings(name):
    from monitoring.settings import MonitorAppSettings, MonitorSettings

    doc = yaml.safe_load((CONFIGS / name).read_text())
    monitor = next(a for a in doc["applications"] if a["name"] == "monitor")
    assert monitor["route_prefix"] == "/monitor"
    MonitorAppSettings(**monitor["args"])
    (deployment,) = monitor["deployments"]
    assert deployment["num_replicas"] == 1  # its windows are its state
    MonitorSettings(**deployment["user_config"])


@pytest.mark.parametrize("name", ["serve.yaml", "serve.gpu.yaml", "serve-autoscaling.yaml"])
def test_grpc_is_served_on_8001_with_the_body_limit_as_its_message_limit(name):
    """The gRPC service on Triton's and KServe's port, its servicer function importable, and
    the replicas' gRPC message limit max_body_bytes plus 64 KiB for the message's own fields."""
    import importlib

    schema = ServeDeploySchema.model_validate(yaml.safe_load((CONFIGS / name).read_text()))
    assert schema.grpc_options.port == 8001
    (function,) = schema.grpc_options.grpc_servicer_functions
    module, _, attribute = function.rpartition(".")
    assert callable(getattr(importlib.import_module(module), attribute))
    app = next(a for a in schema.applications if a.name == "vigil")
    limit = int(app.runtime_env["env_vars"]["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"])
    assert limit == ServerSettings(**app.args).max_body_bytes + 65536
