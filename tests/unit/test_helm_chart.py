"""The Helm chart (helm/vigil) lints, renders, and what it renders is valid: built-in kinds against
Kubernetes' schemas (kubernetes-validate, strict), RayService and the prometheus-operator kinds
against their CRDs (unknown fields refused), and the serve config against Ray Serve's schema and
the applications' own settings. Secrets stay references, tokens are on, containers are non-root.
helm itself, rendering and the chart's generated parts: tests/helm_chart.py."""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm_chart import (
    ASSETS,
    CHART,
    CRD_FILES,
    CRDS,
    HELM_VERSION,
    KUBERNETES_VERSION,
    MONITOR_CHART_ARGS,
    ROOT,
    RULE_FILES,
    SCHEMA_FILE,
    SYNC,
    app,
    asset_args,
    closed,
    deployment,
    env,
    generated_definitions,
    helm_binary,
    is_generated,
    mounts_by_volume,
    one,
    pod_templates,
    render,
    run_helm,
    serve_config,
    template,
    volumes,
)


@pytest.fixture(scope="session")
def helm() -> Path:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"the pinned helm ({HELM_VERSION}) is a linux/amd64 binary; this is "
                    f"{sys.platform}/{platform.machine()}")
    return helm_binary()


# A values file that switches on everything optional, over the GPU values.
FULL_VALUES = {
    "ingress": {"enabled": True, "className": "nginx", "host": "vigil.example.com",
                "tlsSecret": "vigil-tls",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "64m"},
                "grpc": {"enabled": True, "tlsSecret": "vigil-grpc-tls"}},
    "monitor": {
        "secretEnv": [{"name": "VIGIL_WEBHOOK_SECRET", "secretName": "vigil-webhooks",
                       "key": "retrain"},
                      {"name": "VIGIL_WEBHOOK_SECRET_OLD", "secretName": "vigil-webhooks",
                       "key": "retrain-old"}],
        "secretEnvFrom": ["vigil-more-webhooks"],
    },
    "head": {"extraRayResources": {"reports": 2}, "podAnnotations": {"team": "ml"},
             "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                 {"weight": 1, "preference": {"matchExpressions": [
                     {"key": "node-role", "operator": "In", "values": ["system"]}]}}]}}},
    "imagePullSecrets": [{"name": "regcred"}],
    "autoscaling": {"version": "v2"},
    "ray": {"extraEnv": [{"name": "RAY_SERVE_HAPROXY_NBTHREAD", "value": "8"}],
            "haProxyLimits": {"timeoutClientS": 20, "maxconn": 20000, "timeoutHttpRequestS": 15}},
    "monitoring": {"rayPodMonitor": {"labels": {"release": "kube-prometheus-stack"}},
                   "monitorServiceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
                   "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}},
                   "grafanaDashboard": {"folder": "Vigil"}},
    "serve": {"applications": {"monitor": {"deployments": {"Monitor": {"user_config": {
        "webhooks": [{"name": "retrain", "url": "http://retrain.ml.svc:9000/events",
                      "secret_env": ["VIGIL_WEBHOOK_SECRET", "VIGIL_WEBHOOK_SECRET_OLD"]}]}}}}}},
}
VARIANTS = ("default", "gpu", "full")


@pytest.fixture(scope="session")
def variant_args(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    full = tmp_path_factory.mktemp("helm") / "full.yaml"
    full.write_text(yaml.safe_dump(FULL_VALUES))
    gpu = ["-f", str(CHART / "values-gpu.yaml")]
    return {"default": [], "gpu": gpu, "full": [*gpu, "-f", str(full)]}


@pytest.fixture(scope="session")
def rendered(helm: Path, variant_args: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, *args) for name, args in variant_args.items()}


# ---------------------------------------------------------------- lint and validity


def test_helm_is_the_pinned_binary(helm: Path):
    result = run_helm(helm, "version", "--short")
    assert result.returncode == 0 and result.stdout.startswith(HELM_VERSION), result


@pytest.mark.parametrize("variant", VARIANTS)
def test_chart_lints_strictly(helm, variant_args, variant):
    result = run_helm(helm, "lint", "--strict", str(CHART), *asset_args(), *variant_args[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_built_in_objects_validate_strictly(rendered, variant):
    import kubernetes_validate

    objects = rendered[variant]
    builtin = [o for o in objects if (o["apiVersion"].split("/")[0], o["kind"]) not in CRD_FILES]
    assert {o["kind"] for o in builtin} >= {"PersistentVolumeClaim", "Service"}
    for obj in builtin:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    # The pod templates inside the RayService, against the real PodTemplateSpec as well.
    for name, pod in pod_templates(objects).items():
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
             "template": pod},
            KUBERNETES_VERSION, strict=True,
        )


@pytest.fixture(scope="session")
def crd_validators() -> dict[tuple[str, str], Any]:
    import jsonschema

    if not CRDS.is_dir():
        pytest.skip(f"no CRDs at {CRDS} (shared/crds beside the project, or VIGIL_CRDS_DIR): the "
                    "RayService and monitoring objects cannot be checked here")
    validators = {}
    for (group, kind), file_name in CRD_FILES.items():
        crd = yaml.safe_load((CRDS / file_name).read_text())
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
        for version in crd["spec"]["versions"]:
            schema = closed(version["schema"]["openAPIV3Schema"])
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft4Validator(schema)
    return validators


@pytest.mark.parametrize("variant", VARIANTS)
def test_custom_objects_validate_against_their_crds(rendered, crd_validators, variant):
    objects = rendered[variant]
    custom = [o for o in objects if (o["apiVersion"].split("/")[0], o["kind"]) in CRD_FILES]
    kinds = {o["kind"] for o in custom}
    assert {"RayService", "PodMonitor", "ServiceMonitor"} <= kinds
    for obj in custom:
        validator = crd_validators[(obj["apiVersion"], obj["kind"])]
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(
            f"{obj['kind']} {'.'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in errors[:20])
        assert set(obj["metadata"]) <= {"name", "labels", "annotations"}
        assert len(obj["metadata"]["name"]) <= 63


def test_the_validators_refuse_unknown_fields(rendered, crd_validators):
    """The checks above would notice a misspelt field (CRD schemas leave objects open)."""
    import kubernetes_validate

    objects = rendered["default"]
    service = copy.deepcopy(next(o for o in objects if o["kind"] == "Service"))
    service["spec"]["selectr"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    bad = copy.deepcopy(one(objects, "RayService"))
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "volumeMount"] = []
    bad["spec"]["rayClusterConfig"]["enableInTreeAutoscaler"] = True
    errors = list(crd_validators[(bad["apiVersion"], "RayService")].iter_errors(bad))
    assert len(errors) == 2 and all("Additional properties" in e.message for e in errors)
    bad = copy.deepcopy(one(objects, "PodMonitor"))
    bad["spec"]["podMetricsEndpoints"][0]["intervall"] = "10s"
    assert list(crd_validators[(bad["apiVersion"], "PodMonitor")].iter_errors(bad))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_checked_by_one_of_the_validators(rendered, variant):
    known = {"PersistentVolumeClaim", "Service", "Ingress", "ConfigMap"}
    for obj in rendered[variant]:
        assert obj["kind"] in known or (obj["apiVersion"].split("/")[0], obj["kind"]) in CRD_FILES


# ---------------------------------------------------------------- the serve config


@pytest.fixture
def no_vigil_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apps' settings read VIGIL_* from the environment: keep this shell's out of the check."""
    for name in list(os.environ):
        if name.startswith("VIGIL_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_serve_config_is_one_ray_and_the_apps_accept(rendered, variant, no_vigil_env):
    import jsonschema
    from ray.serve.schema import ServeDeploySchema

    from monitoring.settings import MonitorAppSettings, MonitorSettings
    from serving.settings import BatchSettings, ServerSettings

    config = serve_config(rendered[variant])
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.host == "0.0.0.0" and schema.http_options.port == 8000
    assert [a.name for a in schema.applications] == ["vigil", "monitor"]

    vigil, monitor = app(config, "vigil"), app(config, "monitor")
    ServerSettings(**vigil["args"])
    MonitorAppSettings(**monitor["args"])
    BatchSettings(**deployment(config, "vigil", "ModelServer")["user_config"])
    MonitorSettings(**deployment(config, "monitor", "Monitor")["user_config"])

    # Ray ignores keys it does not know; the chart's closed copy of its schema does not.
    definitions = json.loads(SCHEMA_FILE.read_text())["definitions"]
    for a in config["applications"]:
        for d in a["deployments"]:
            body = {k: v for k, v in d.items() if k != "name"}
            jsonschema.Draft7Validator(
                {"$ref": "#/definitions/RayDeployment", "definitions": definitions}).validate(body)


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """A serve config less what the chart owns (where the files are, the pod's host, the head pin)."""
    config = copy.deepcopy(config)
    config["http_options"].pop("host")
    for a in config["applications"]:
        for key in (*MONITOR_CHART_ARGS, "public_url"):
            a["args"].pop(key, None)
        for d in a["deployments"]:
            if a["name"] == "monitor":
                d.pop("ray_actor_options")
    return config


def test_default_values_mirror_configs_serve_yaml(rendered):
    shipped = yaml.safe_load((ROOT / "configs" / "serve.yaml").read_text())
    assert _normalised(serve_config(rendered["default"])) == _normalised(shipped)


def test_gpu_values_mirror_configs_serve_gpu_yaml(rendered):
    shipped = yaml.safe_load((ROOT / "configs" / "serve.gpu.yaml").read_text())
    ours = _normalised(serve_config(rendered["gpu"]))
    theirs = _normalised(shipped)
    assert app(ours, "vigil") == app(theirs, "vigil")
    assert {k: v for k, v in ours.items() if k != "applications"} == {
        k: v for k, v in theirs.items() if k != "applications"}


# ---------------------------------------------------------------- state, tokens, secrets


def _ray_resources(ray_start_params: dict[str, str]) -> dict[str, float]:
    """rayStartParams' resources: a JSON object inside a quoted string, '"{\\"a\\": 1}"'."""
    text = ray_start_params.get("resources")
    return json.loads(json.loads(text)) if text else {}


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_monitor_and_its_outbox_live_on_the_head(rendered, variant):
    objects = rendered[variant]
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    config = serve_config(objects)
    monitor = deployment(config, "monitor", "Monitor")
    assert monitor["num_replicas"] == 1
    assert monitor["ray_actor_options"]["resources"] == {
        "vigil_monitor": 1} | monitor["ray_actor_options"]["resources"]
    assert _ray_resources(cluster["headGroupSpec"]["rayStartParams"])["vigil_monitor"] == 1
    for group in cluster["workerGroupSpecs"]:
        assert "vigil_monitor" not in _ray_resources(group.get("rayStartParams", {}))

    pods = pod_templates(objects)
    outbox_path = Path(app(config, "monitor")["args"]["outbox_path"])
    mount = mounts_by_volume(pods["head"])["outbox"]
    assert outbox_path.parent == Path(mount["mountPath"]) and not mount.get("readOnly")
    claim = volumes(pods["head"])["outbox"]["persistentVolumeClaim"]["claimName"]
    pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim"
               and o["metadata"]["name"] == claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    for name, pod in pods.items():
        if name != "head":
            assert "outbox" not in volumes(pod)
    # A new cluster's head (RayService upgrade) joins the node that holds the claim.
    (term,) = pods["head"]["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"].items() <= pods["head"]["metadata"][
        "labels"].items()


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_repository_is_a_shared_claim_mounted_read_write(rendered, variant):
    """Read-write: the admin routes and the monitor's canary rollback write aliases.json and
    the audit log into it."""
    objects = rendered[variant]
    config = serve_config(objects)
    repository = Path(app(config, "vigil")["args"]["model_repository"])
    assert app(config, "monitor")["args"]["model_repository"] == str(repository)
    claims = set()
    for pod in pod_templates(objects).values():
        mount = mounts_by_volume(pod)["model-repository"]
        assert not mount.get("readOnly")
        assert repository.is_relative_to(mount["mountPath"]) and repository != Path(
            mount["mountPath"])  # a subfolder: the volume's root may hold lost+found
        volume = volumes(pod)["model-repository"]["persistentVolumeClaim"]
        assert not volume.get("readOnly")
        claims.add(volume["claimName"])
    (claim,) = claims
    pvc = next(o for o in objects if o["kind"] == "PersistentVolumeClaim"
               and o["metadata"]["name"] == claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_tokens_are_on_and_come_from_a_secret(rendered, variant):
    objects = rendered[variant]
    config = serve_config(objects)
    tokens_file = app(config, "vigil")["args"]["tokens_file"]
    for name in ("vigil", "monitor"):
        assert app(config, name)["args"]["auth"] == "tokens"
        assert app(config, name)["args"]["tokens_file"] == tokens_file
    for pod in pod_templates(objects).values():
        secret = volumes(pod)["tokens"]["secret"]
        assert secret["secretName"] == "vigil-tokens"
        assert secret["defaultMode"] & 0o077 in (0, 0o040)  # owner and fsGroup read only
        mount = mounts_by_volume(pod)["tokens"]
        assert Path(tokens_file).parent == Path(mount["mountPath"]) and mount["readOnly"]
        assert "subPath" not in mount  # a subPath mount never sees the Secret's updates
        assert env(pod)["VIGIL_TOKENS_FILE"]["value"] == tokens_file
    monitor = one(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "vigil-monitor-token", "key": "token"}}


def test_auth_none_is_explicit_and_drops_the_tokens_file(helm):
    objects = render(helm, "--set", "auth.mode=none")
    config = serve_config(objects)
    for name in ("vigil", "monitor"):
        assert app(config, name)["args"]["auth"] == "none"
        assert "tokens_file" not in app(config, name)["args"]
    for pod in pod_templates(objects).values():
        assert "tokens" not in volumes(pod) and "VIGIL_TOKENS_FILE" not in env(pod)
    assert "authorization" not in one(objects, "ServiceMonitor")["spec"]["endpoints"][0]


# Secret-looking literals: a Vigil token ("vigil_" + token_urlsafe(32): 43 characters, not a
# lower-case metric name) or a webhook secret.
_SECRETISH = re.compile(r"vigil_(?=[A-Za-z0-9_]*[A-Z-])[A-Za-z0-9_-]{40,}|whsec_[A-Za-z0-9+/=]{8,}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_is_rendered_only_references(rendered, variant):
    objects = rendered[variant]
    assert not [o for o in objects if o["kind"] == "Secret"]
    for obj in objects:
        assert not _SECRETISH.search(json.dumps(obj)), obj["kind"]
    config = serve_config(objects)
    webhooks = deployment(config, "monitor", "Monitor")["user_config"]["webhooks"]
    head = env(pod_templates(objects)["head"])
    for target in webhooks:
        names = [target["secret_env"]] if isinstance(target["secret_env"], str) else target[
            "secret_env"]
        for name in names:
            assert set(head[name]) == {"name", "valueFrom"}
            assert set(head[name]["valueFrom"]["secretKeyRef"]) == {"name", "key"}
    if variant == "full":
        assert webhooks and pod_templates(objects)["head"]["spec"]["containers"][0]["envFrom"] == [
            {"secretRef": {"name": "vigil-more-webhooks"}}]
        for name, pod in pod_templates(objects).items():  # only the Monitor's pod has them
            if name != "head":
                assert "VIGIL_WEBHOOK_SECRET" not in env(pod)


def test_a_webhook_whose_secret_is_not_provided_is_refused(helm, tmp_path):
    values = tmp_path / "webhook.yaml"
    values.write_text(yaml.safe_dump({"serve": {"applications": {"monitor": {"deployments": {
        "Monitor": {"user_config": {"webhooks": [
            {"name": "retrain", "url": "http://retrain:9000/events",
             "secret_env": "RETRAIN_SECRET"}]}}}}}}}))
    result = template(helm, "-f", str(values))
    assert result.returncode != 0
    assert "RETRAIN_SECRET" in result.stderr and "monitor.secretEnv" in result.stderr


# ---------------------------------------------------------------- security context


def _assert_locked_down(context: dict[str, Any], where: str) -> None:
    assert context["runAsNonRoot"] is True and context["runAsUser"] >= 1, where
    assert context["allowPrivilegeEscalation"] is False, where
    assert context["capabilities"] == {"drop": ["ALL"]}, where
    assert context["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_runs_as_non_root_on_a_read_only_root(rendered, variant):
    objects = rendered[variant]
    for name, pod in pod_templates(objects).items():
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 1000
        for container in [*spec["containers"], *spec.get("initContainers", [])]:
            _assert_locked_down(container["securityContext"], f"{name}/{container['name']}")
        # Ray writes /tmp/ray (and HAProxy /tmp/haproxy-serve): /tmp is an emptyDir.
        assert mounts_by_volume(pod)["tmp"]["mountPath"] == "/tmp"
        assert "emptyDir" in volumes(pod)["tmp"]
        assert volumes(pod)["dshm"]["emptyDir"]["medium"] == "Memory"
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    _assert_locked_down(cluster["autoscalerOptions"]["securityContext"], "autoscaler")
    assert {"name": "tmp", "mountPath": "/tmp"} in cluster["autoscalerOptions"]["volumeMounts"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_ray_containers_get_the_makefiles_environment(rendered, variant):
    for pod in pod_templates(rendered[variant]).values():
        assert env(pod)["RAY_SERVE_ENABLE_HA_PROXY"]["value"] == "1"
        assert env(pod)["RAY_SERVE_HAPROXY_METRICS_ENABLED"]["value"] == "0"
        assert env(pod)["RAY_USAGE_STATS_ENABLED"]["value"] == "0"
        assert env(pod)["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"]["value"] == "60"
    assert one(rendered[variant], "RayService")["spec"]["rayClusterConfig"]["authOptions"] == {
        "mode": "token"}


@pytest.mark.parametrize(("variant", "timeout", "maxconn", "header_timeout"),
                         [("default", "10", "8192", "10"), ("gpu", "10", "8192", "10"),
                          ("full", "20", "20000", "15")])
def test_haproxy_limits_reach_every_ray_container(rendered, variant, timeout, maxconn,
                                                  header_timeout):
    for pod in pod_templates(rendered[variant]).values():
        assert env(pod)["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]["value"] == timeout
        assert env(pod)["RAY_SERVE_HAPROXY_MAXCONN"]["value"] == maxconn
        assert env(pod)["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"]["value"] == "65536"
        assert env(pod)["RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE"]["value"] == "65536"
        # The header timeout, through Vigil's wrapper where Dockerfile.gpu installs it.
        assert env(pod)["RAY_SERVE_HAPROXY_BINARY_PATH"]["value"] == "/opt/vigil/bin/vigil-haproxy"
        assert env(pod)["VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S"]["value"] == header_timeout


def test_an_empty_header_timeout_wrapper_leaves_rays_haproxy_alone(helm):
    objects = render(helm, "--set", "ray.haProxyLimits.headerTimeoutWrapper=")
    for pod in pod_templates(objects).values():
        assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in env(pod)
        assert "VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S" not in env(pod)
        assert env(pod)["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]["value"] == "10"


def test_the_images_wrapper_is_where_the_chart_says():
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["haProxyLimits"]
    assert f"RAY_SERVE_HAPROXY_BINARY_PATH={values['headerTimeoutWrapper']} " in dockerfile
    assert f"VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S={values['timeoutHttpRequestS']} " in dockerfile
    # HAProxy's buffers: one figure in the chart, the image, the Makefile and the benchmark.
    buffers = values["bufferBytes"]
    assert f"RAY_SERVE_HAPROXY_TUNE_BUFSIZE={buffers} " in dockerfile
    assert f"RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE={buffers} " in dockerfile
    assert f"RAY_SERVE_HAPROXY_TUNE_BUFSIZE ?= {buffers}\n" in (ROOT / "Makefile").read_text()
    # How long a node's proxy gets to start: one figure in the chart, the image, the Makefile,
    # the test session's Ray and the cluster scenario's nodes.
    ready_s = yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["proxyReadyTimeoutS"]
    assert f"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S={ready_s} " in dockerfile
    assert (f"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S ?= {ready_s}\n"
            in (ROOT / "Makefile").read_text())
    for where in ("tests/conftest.py", "load_tests/cluster_ray.py"):
        assert (f'"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "{ready_s}"'
                in (ROOT / where).read_text()), where
    from load_tests.bench_grpc import SHIPPED_BUFFERS
    assert set(SHIPPED_BUFFERS.values()) == {str(buffers)}
    # /opt/vigil/bin/vigil-haproxy: the console script pip makes from pyproject.toml.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["vigil-haproxy"] == "vigil.tools.haproxy_header_timeout:main"


# ---------------------------------------------------------------- GPU values


def test_gpu_values_put_the_model_server_on_gpu_workers(rendered):
    objects = rendered["gpu"]
    (group,) = one(objects, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    spec = group["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-gpu")
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    config = serve_config(objects)
    assert app(config, "vigil")["args"]["runtime"]["providers"] == ["cuda", "cpu"]
    assert deployment(config, "vigil", "ModelServer")["ray_actor_options"]["num_gpus"] > 0
    # CPU values: no GPU anywhere.
    assert "nvidia.com/gpu" not in json.dumps(one(rendered["default"], "RayService"))


def test_a_gpu_can_be_shared_between_replicas(helm):
    path = "serve.applications.vigil.deployments.ModelServer.ray_actor_options.num_gpus"
    config = serve_config(render(helm, "-f", str(CHART / "values-gpu.yaml"), "--set-json",
                                 f"{path}=0.5"))  # --set would pass the string "0.5"
    assert deployment(config, "vigil", "ModelServer")["ray_actor_options"]["num_gpus"] == 0.5


# ---------------------------------------------------------------- values.schema.json


def _merged(base: Any, over: Any) -> Any:
    """Helm's merge of a values file over another: maps deeply, everything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


def test_values_schema_is_valid_and_its_generated_definitions_are_current():
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    ours = {k: v for k, v in schema["definitions"].items() if is_generated(k)}
    assert ours == generated_definitions(), f"values.schema.json is stale: run {SYNC}"
    # Python's validator agrees with helm's on the shipped values.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    gpu = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(_merged(values, gpu))


def test_every_value_is_described():
    schema = json.loads(SCHEMA_FILE.read_text())
    definitions = schema["definitions"]

    def described(node: dict[str, Any]) -> bool:
        target = definitions.get(node.get("$ref", "").rsplit("/", 1)[-1], {})
        return "description" in node or "description" in target

    bare = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for name, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and not described(sub):
                bare.append(f"{path}.{name}")
            walk(sub, f"{path}.{name}")
        for sub in node.get("allOf") or []:
            walk(sub, path)
        walk(node.get("items"), f"{path}[]")

    walk(schema, "")
    assert not bare, f"values without a description in values.schema.json: {bare}"


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("bogus=1", "bogus"),
        ("head.bogus=1", "bogus"),
        ("monitoring.rayPodMonitor.bogus=true", "bogus"),
        ("serve.applications.vigil.args.bogus=1", "bogus"),
        ("serve.applications.vigil.args.tokens_file=/tmp/t.yaml", "tokens_file"),
        ("serve.applications.monitor.args.outbox_path=/tmp/o.sqlite", "outbox_path"),
        ("serve.applications.vigil.deployments.ModelServer.user_config.max_batch_rows=0",
         "max_batch_rows"),
        ("serve.applications.vigil.deployments.ModelServer.ray_actor_options.num_gpus=-1",
         "num_gpus"),
        ("serve.applications.vigil.deployments.ModelServer.ray_actor_options.num_gpu=1",
         "num_gpu"),
        ("serve.applications.monitor.deployments.Monitor.num_replicas=2", "num_replicas"),
        ("serve.http_options.host=127.0.0.1", "host"),
        ("serve.applications.monitor.deployments.Monitor.user_config.window.rows=0", "rows"),
        ("auth.mode=open", "mode"),
        ("worker.maxReplicas=0", "maxReplicas"),
        ("ray.haProxyLimits.timeoutClientS=0", "timeoutClientS"),
        ("ray.haProxyLimits.maxconn=10", "maxconn"),
        ("ray.haProxyLimits.timeoutHttpRequestS=0", "timeoutHttpRequestS"),
        ("ray.haProxyLimits.headerTimeoutWrapper=vigil-haproxy", "headerTimeoutWrapper"),
        ("ray.proxyReadyTimeoutS=1", "proxyReadyTimeoutS"),
        ("ingress.nginxLimits.proxyBodySize=lots", "proxyBodySize"),
        ("head.rayStartParams.resources=x", "resources"),
    ],
)
def test_values_schema_refuses_unknown_keys_and_out_of_bounds_values(helm, setting, complaint):
    result = template(helm, "--set", setting)
    assert result.returncode != 0, f"--set {setting} was accepted"
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


# ---------------------------------------------------------------- monitoring objects


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("variant", VARIANTS)
def test_monitoring_objects_select_what_they_mean(rendered, variant):
    objects = rendered[variant]
    pods = pod_templates(objects)
    kuberay = {"head": {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}}
    # PodMonitor: every Ray pod, on ports the containers declare (labels as KubeRay adds them).
    pod_monitor = one(objects, "PodMonitor")
    for name, pod in pods.items():
        labels = {**pod["metadata"]["labels"], "ray.io/is-ray-node": "yes",
                  **kuberay.get(name, {"ray.io/node-type": "worker"})}
        assert _labels_match(pod_monitor["spec"]["selector"]["matchLabels"], labels)
        ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
        assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= ports
    # ServiceMonitor -> the monitor Service -> the head pod only.
    (service,) = [o for o in objects if o["kind"] == "Service"]
    service_monitor = one(objects, "ServiceMonitor")
    assert _labels_match(service_monitor["spec"]["selector"]["matchLabels"],
                         service["metadata"]["labels"])
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert service_monitor["spec"]["endpoints"][0]["path"] == "/monitor/metrics"
    head_labels = {**pods["head"]["metadata"]["labels"], **kuberay["head"]}
    assert _labels_match(service["spec"]["selector"], head_labels)
    for name, pod in pods.items():
        if name != "head":
            assert not _labels_match(service["spec"]["selector"], pod["metadata"]["labels"])


def test_scrape_jobs_are_the_ones_the_rules_name(rendered):
    objects = rendered["default"]
    jobs = set()
    for endpoint in [*one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"],
                     *one(objects, "ServiceMonitor")["spec"]["endpoints"]]:
        (job,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
        assert "sourceLabels" not in job
        jobs.add(job["replacement"])
    assert {"ray", "vigil-monitor"} <= jobs
    named = set()
    for name in RULE_FILES:
        original = ROOT / "configs" / "prometheus" / name
        if original.exists():
            named |= set(re.findall(r'job="([^"]+)"', original.read_text()))
    assert named <= jobs, f"the rules select jobs no monitor of the chart makes: {named - jobs}"


def _ingresses(objects) -> dict[str, dict]:
    """The chart's Ingresses by component: "http" (the serve port) and "grpc"."""
    return {o["metadata"]["labels"].get("app.kubernetes.io/component", "http"): o
            for o in objects if o["kind"] == "Ingress"}


def test_ingress_routes_to_the_serve_service(rendered):
    objects = rendered["full"]
    serve_service = one(objects, "RayService")["spec"]["serveService"]
    (rule,) = _ingresses(objects)["http"]["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == serve_service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in serve_service["spec"]["ports"]}
    monitor_args = app(serve_config(objects), "monitor")["args"]
    assert monitor_args["public_url"] == "https://vigil.example.com/monitor"
    assert not [o for o in rendered["default"] if o["kind"] == "Ingress"]


def test_the_grpc_port_is_served_and_has_its_own_grpc_ingress(rendered):
    """serve.grpc_options.port on every Ray container and on the serve Service (appProtocol
    h2c), and, when asked, a second Ingress whose backend speaks gRPC to that port."""
    objects = rendered["full"]
    service = one(objects, "RayService")["spec"]
    port = serve_config(objects)["grpc_options"]["port"]
    assert port == 8001
    (grpc_port,) = [p for p in service["serveService"]["spec"]["ports"] if p["name"] == "grpc"]
    assert (grpc_port["port"], grpc_port["appProtocol"]) == (port, "kubernetes.io/h2c")
    cluster = service["rayClusterConfig"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["template"]["spec"]["containers"][:1]
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in container["ports"]
    ingress = _ingresses(objects)["grpc"]
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "grpc.vigil.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["port"]["name"] == "grpc"
    assert ingress["spec"]["tls"] == [{"hosts": ["grpc.vigil.example.com"],
                                       "secretName": "vigil-grpc-tls"}]
    assert "grpc" not in _ingresses(rendered["default"])

def test_the_ingress_carries_nginx_limits_and_the_users_annotations_win(rendered, helm):
    annotations = _ingresses(rendered["full"])["http"]["metadata"]["annotations"]
    assert annotations == {"nginx.ingress.kubernetes.io/limit-connections": "100",
                           "nginx.ingress.kubernetes.io/proxy-body-size": "64m",
                           "nginx.ingress.kubernetes.io/proxy-read-timeout": "60"}
    result = template(helm, "--set", "ingress.enabled=true",
                      "--set", "ingress.nginxLimits.limitConnections=7",
                      "--set-string", "ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/"
                      "proxy-read-timeout=5")
    assert result.returncode == 0, result.stderr
    ingress = [o for o in yaml.safe_load_all(result.stdout) if o and o["kind"] == "Ingress"]
    assert ingress[0]["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/limit-connections": "7",
        "nginx.ingress.kubernetes.io/proxy-body-size": "64m",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "5"}
    off = template(helm, "--set", "ingress.enabled=true",
                   "--set", "ingress.nginxLimits.enabled=false")
    (plain,) = [o for o in yaml.safe_load_all(off.stdout) if o and o["kind"] == "Ingress"]
    assert "annotations" not in plain["metadata"]


@pytest.mark.parametrize("copy_path", list(ASSETS), ids=lambda p: p.name)
def test_chart_assets_are_byte_copies_of_the_originals(copy_path):
    original = ASSETS[copy_path]
    if not original.exists():
        pytest.skip(f"{original.relative_to(ROOT)} does not exist yet; once it does, {SYNC} "
                    f"copies it to {copy_path.relative_to(ROOT)}")
    assert copy_path.exists(), f"{copy_path.relative_to(ROOT)} is missing: run {SYNC}"
    assert copy_path.read_bytes() == original.read_bytes(), (
        f"{copy_path.relative_to(ROOT)} differs from {original.relative_to(ROOT)}: run {SYNC}")


def test_prometheus_rule_holds_the_groups_of_both_rule_files(rendered):
    copies = [CHART / "files" / name for name in RULE_FILES]
    if not all(p.exists() for p in copies):
        pytest.skip("helm/vigil/files/ has no copies of configs/prometheus/*.yml yet")
    expected = []
    for path in copies:
        expected += yaml.safe_load(path.read_text())["groups"]
    assert one(rendered["default"], "PrometheusRule")["spec"]["groups"] == expected


def test_grafana_dashboard_configmap(rendered):
    dashboard = CHART / "files" / "vigil.json"
    if not dashboard.exists():
        pytest.skip("helm/vigil/files/vigil.json (a copy of configs/grafana/vigil.json) not yet")
    configmap = one(rendered["full"], "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Vigil"}
    assert configmap["data"]["vigil.json"] == dashboard.read_text()
    json.loads(configmap["data"]["vigil.json"])


@pytest.mark.parametrize(
    "switch",
    ["rayPodMonitor", "monitorServiceMonitor", "prometheusRule", "grafanaDashboard"],
)
def test_each_monitoring_object_can_be_switched_off(helm, switch):
    kinds = {"rayPodMonitor": "PodMonitor", "monitorServiceMonitor": "ServiceMonitor",
             "prometheusRule": "PrometheusRule", "grafanaDashboard": "ConfigMap"}
    objects = render(helm, "--set", f"monitoring.{switch}.enabled=false")
    assert not [o for o in objects if o["kind"] == kinds[switch]]

