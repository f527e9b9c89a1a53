"""Build the Vigil Grafana dashboard as code (grafana-foundation-sdk) and write it as JSON.

Every panel query is a Prometheus expression in its target's ``expr``. Rates and histogram
quantiles of the replicas' metrics come from the recording rules in
``configs/prometheus/recording_rules.yml`` (series named ``level:vigil_<metric>:<operations>``)
where a rule exists, and are otherwise written over the raw series: the replicas' histograms and
counters (``ray_vigil_*``, exported by Ray's metrics agent), Ray Serve's own metrics
(``ray_serve_*``), the monitor's (``vigil_*``) and, where a GPU node runs it, the NVIDIA DCGM
exporter's (``DCGM_FI_*``). Quantiles always come from histogram buckets, never from
pre-computed quantile gauges. The output is deterministic (fixed uid and ids, sorted keys), so
the committed ``configs/grafana/vigil.json`` can be checked against this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from vigil.tools.panels import (
    DS, MV, NO_DRIFT_DRIFT, OK_FIRING, RATE, Q, common, distribution, graph, quantiles, rate,
    row, select, single, thresholds, timeline,
)

DEFAULT_OUT = Path("configs/grafana/vigil.json")
REGENERATE = "vigil dashboards build"
UID = "vigil"

# -- the rows ------------------------------------------------------------------------------------

ALL_VERSIONS = 'model=~"$model", model!="_unknown"'
MVL = "{{model}}/{{version}}"  # the legend of a series by model and version
SERVE_BY = "application, deployment"
GPU_BY = "Hostname, gpu, modelName"
GPU_WHERE = ("From the NVIDIA DCGM exporter, where present: empty unless dcgm-exporter runs on the "
             "GPU nodes (as the NVIDIA GPU operator deploys it) and Prometheus scrapes it.")


def recorded(name: str, matcher: str = MV) -> str:
    """A series recorded by configs/prometheus/recording_rules.yml (1m rate windows), filtered."""
    return select(name, matcher)


def recorded_quantiles(metric: str, legend: str = MVL, matcher: str = MV) -> list[Q]:
    """p50, p95 and p99 of a histogram, as the recording rules compute them from its buckets."""
    return [Q(recorded(f"model_version:{metric}:p{n}_rate1m", matcher), f"{legend} p{n}")
            for n in (50, 95, 99)]


def traffic() -> db.Row:
    return row("Traffic", [
        graph("Request rate", "Inference requests per second at the replicas, by model and "
              "version (every status, cancelled requests included). model=\"_unknown\" counts "
              "requests naming no served model.", "reqps",
              [Q(recorded("model_version:vigil_requests:rate1m"), MVL)]),
        graph("Requests by protocol", "Requests per second by protocol: json and binary over "
              "HTTP (the binary tensor extension), grpc (typed contents) and grpc_raw "
              "(raw_input_contents) over gRPC; one set of metrics for both.", "reqps",
              [Q(f"sum by (protocol) "
                 f"({recorded('model_version_protocol:vigil_requests:rate1m')})",
                 "{{protocol}}")], stack=True),
        graph("Requests by status code", "Requests per second by HTTP status (a gRPC call by "
              "the status of its code: INVALID_ARGUMENT 400, CANCELLED 499): 400 bad input, "
              "401/403 auth, 404 unknown model or version, 413 too large, 499 cancelled (the "
              "client went away or Ray's request_timeout_s ran out), 503 not ready, 500 a bug.",
              "reqps", [Q(f"sum by (code) ({recorded('model_version_code:vigil_requests:rate1m')})",
                          "{{code}}")], stack=True),
        graph("Error ratio", "Share of requests that failed, by model and version: server (5xx), "
              "client (4xx except 499) and cancelled (499); 0 while there are none.",
              "percentunit", [
                  Q(recorded("model_version:vigil_request_errors:ratio_rate1m"), f"{MVL} server"),
                  Q(recorded("model_version:vigil_request_client_errors:ratio_rate1m"),
                    f"{MVL} client"),
                  Q(recorded("model_version:vigil_request_cancelled:ratio_rate1m"),
                    f"{MVL} cancelled"),
              ], max_val=1),
        graph("Request latency p50 / p95 / p99", "Time from the request's arrival at the replica "
              "to its response, by model and version, from the request duration histogram "
              "(buckets summed across replicas before the quantile).", "s",
              recorded_quantiles("vigil_request_duration_seconds")),
        distribution("Request latency distribution", "Requests per second in each latency bucket "
                     "(all selected models and versions); the upper bound of each bucket is on "
                     "the y axis.", "s",
                     Q(rate("ray_vigil_request_duration_seconds_bucket", "le"), "{{le}}",
                       "heatmap")),
        graph("Auth rejections", "Requests refused at a replica for want of a valid bearer token "
              "(401) or of the scope their route needs (403), by scope needed. Not filtered by "
              "model.", "reqps",
              [Q(recorded("code_scope:vigil_auth_rejected:rate1m", ""), "{{code}} {{scope}}")]),
    ])


def batching() -> db.Row:
    return row("Batching", [
        graph("Rows per batch p50 / p95 / p99", "Rows stacked into one model run, by model and "
              "version. A version without batching (max_batch_rows 0) runs each request alone.",
              "none", recorded_quantiles("vigil_batch_rows")),
        graph("Model runs per second", "onnxruntime runs (batches) per second, by model and "
              "version.", "ops", [Q(recorded("model_version:vigil_batches:rate1m"), MVL)]),
        graph("Queue wait p50 / p95 / p99", "Time a request waits for its batch to start, by "
              "model and version (0 for versions without batching).", "s",
              recorded_quantiles("vigil_queue_wait_seconds")),
        graph("Model run time p50 / p95 / p99", "Time one onnxruntime run (one batch) takes, by "
              "model and version.", "s", recorded_quantiles("vigil_inference_duration_seconds")),
    ])


def ray_serve() -> db.Row:
    healthy = f"sum by ({SERVE_BY}) (ray_serve_deployment_replica_healthy)"
    return row("Ray Serve", [
        graph("Replicas: healthy vs target", "Healthy replicas per deployment, the replica "
              "count the controller is moving to, and (autoscaling deployments only) the "
              "autoscaling policy's raw decision before min/max bounds. All applications; not "
              "filtered by model.", "short", [
                  Q(healthy, "{{application}}/{{deployment}} healthy"),
                  Q(f"max by ({SERVE_BY}) (ray_serve_autoscaling_target_replicas)",
                    "{{application}}/{{deployment}} target"),
                  Q(f"max by ({SERVE_BY}) (ray_serve_autoscaling_desired_replicas)",
                    "{{application}}/{{deployment}} desired"),
              ], steps=True),
        graph("Ongoing and queued requests", "Requests being processed at the replicas, and "
              "requests waiting in a deployment handle for a replica (calls between deployments; "
              "HTTP requests through HAProxy go straight to a replica).", "short", [
                  Q(f"sum by ({SERVE_BY}) (ray_serve_replica_processing_queries)",
                    "{{application}}/{{deployment}} ongoing"),
                  Q(f"sum by ({SERVE_BY}) (ray_serve_deployment_queued_queries)",
                    "{{application}}/{{deployment}} queued"),
              ]),
        graph("Autoscaling: ongoing requests per replica vs target", "The requests the "
              "autoscaler sees, per healthy replica, against the deployment's "
              "target_ongoing_requests. Only deployments with an autoscaling_config report "
              "these.", "short", [
                  Q(f"max by ({SERVE_BY}) (ray_serve_autoscaling_total_requests) / {healthy}",
                    "{{application}}/{{deployment}} per replica"),
                  Q(f"max by ({SERVE_BY}) (ray_serve_autoscaling_target_ongoing_requests)",
                    "{{application}}/{{deployment}} target"),
              ]),
        graph("Replica utilisation", "Share of replica capacity used by user code over Ray's "
              "rolling window (user code time / (window x max_ongoing_requests)), highest "
              "replica per deployment.", "percent",
              [Q(f"max by ({SERVE_BY}) (ray_serve_replica_utilization_percent)",
                 "{{application}}/{{deployment}}")]),
    ])


def gpu() -> db.Row:
    used = f"sum by ({GPU_BY}) (DCGM_FI_DEV_FB_USED)"
    free = f"sum by ({GPU_BY}) (DCGM_FI_DEV_FB_FREE)"
    legend = "{{Hostname}} GPU {{gpu}} ({{modelName}})"
    return row("GPU", [
        graph("GPU utilisation", f"Time the GPU was busy, per GPU. {GPU_WHERE}", "percent",
              [Q(f"avg by ({GPU_BY}) (DCGM_FI_DEV_GPU_UTIL)", legend)], width=8, max_val=100),
        graph("GPU memory used", f"Framebuffer memory in use, per GPU. {GPU_WHERE}", "mbytes",
              [Q(used, legend)], width=8),
        graph("GPU memory used share", f"Framebuffer memory in use over used + free, per GPU. "
              f"{GPU_WHERE}", "percentunit", [Q(f"{used} / ({used} + {free})", legend)],
              width=8, max_val=1),
    ])


def drift() -> db.Row:
    by_feature = "model, version, feature, method"
    scores = table.Panel()
    scores = common(scores, "Feature drift (last window)", "Each feature's drift test in the "
                     "monitor's last closed window: the score is a p-value for ks, chisquare and "
                     "z (drift when small) and a distance for wasserstein and jensenshannon (drift "
                     "when large); drifted is the test's verdict. Failed columns have no row.",
                     "none", [
                         Q(f"max by ({by_feature}) (vigil_feature_drift_score{{{MV}}})", "",
                           "instant"),
                         Q(f"max by ({by_feature}) (vigil_feature_drifted{{{MV}}})", "",
                           "instant"),
                     ], 24, 10)
    scores = (scores.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
              .with_transformation(dm.DataTransformerConfig(id_val="organize", options={
                  "excludeByName": {"Time": True},
                  "renameByName": {"Value #A": "score", "Value #B": "drifted"},
              }))
              .override_by_name("drifted", [dm.DynamicConfigValue(id_val="mappings",
                                                                  value=NO_DRIFT_DRIFT)])
              .sort_by([cb.TableSortByFieldState().display_name("drifted").desc(True)])
              .cell_height(cm.TableCellHeight.SM))
    return row("Drift", [
        scores,
        graph("Drifted feature share", "Share of the tested features that drifted in each "
              "window; dataset drift is declared when it reaches the monitor's drift_share "
              "(0.5 by default).", "percentunit",
              [Q(f"max by (model, version) (vigil_drift_share_ratio{{{MV}}})",
                 "{{model}}/{{version}}")], max_val=1, steps=True),
        timeline("Dataset drift", "1 (drift) while the drifted share of the last window reached "
                 "drift_share.", [Q(f"max by (model, version) (vigil_dataset_drift{{{MV}}})",
                                    "{{model}}/{{version}}")], NO_DRIFT_DRIFT),
        graph("Prediction drift score", "Drift test score of each model output column in the "
              "last window: a p-value (drift when small) or a distance (drift when large), by "
              "method.", "none",
              [Q(f"max by (model, version, output, method) (vigil_prediction_drift_score{{{MV}}})",
                 "{{model}}/{{version}} {{output}} ({{method}})")], steps=True),
        timeline("Prediction drift", "1 (drift) while the output column drifted in the last "
                 "window.", [Q(f"max by (model, version, output) (vigil_prediction_drifted{{{MV}}})",
                               "{{model}}/{{version}} {{output}}")], NO_DRIFT_DRIFT),
        single("Since the last window", "Seconds since the monitor last closed a window for the "
               "model version; it grows without traffic (windows close on rows and/or seconds).",
               "s", [Q(f"time() - max by (model, version) "
                       f"(vigil_last_window_timestamp_seconds{{{MV}}})", "{{model}}/{{version}}")],
               width=12, height=8),
        graph("Rows per window", "Sampled rows in each closed window, by model and version: too "
              "few make the drift tests inconclusive.", "short",
              [Q(f"max by (model, version) (vigil_window_rows{{{MV}}})", "{{model}}/{{version}}")],
              steps=True),
    ])


def quality() -> db.Row:
    def ratio(metric: str, title: str, description: str) -> timeseries.Panel:
        return graph(title, description, "percentunit",
                     [Q(f"max by (model, version, feature) ({metric}{{{MV}}})",
                        "{{model}}/{{version}} {{feature}}")], width=8, max_val=1, steps=True)

    return row("Data quality", [
        ratio("vigil_missing_ratio", "Missing values", "Share of missing values of each column "
              "in the last window."),
        ratio("vigil_out_of_range_ratio", "Out-of-range values", "Share of a numeric column's "
              "values outside the reference range in the last window."),
        ratio("vigil_unseen_categories_ratio", "Unseen categories", "Share of a categorical "
              "column's values absent from the reference in the last window."),
        graph("Schema violations", "Columns with a schema violation in the last window, by kind "
              "(missing_column, wrong_dtype, wrong_shape, unexpected_column).", "short",
              [Q(f"sum by (model, version, kind) (vigil_schema_violation_columns{{{MV}}})",
                 "{{model}}/{{version}} {{kind}}")], width=8, steps=True),
        graph("Failed columns", "Columns whose drift test or quality statistics failed in the "
              "last window (they export no score; the drift JSON's failed_columns says why).",
              "short", [Q(f"max by (model, version) (vigil_failed_columns{{{MV}}})",
                          "{{model}}/{{version}}")], width=8, steps=True),
        graph("Sampled rows dropped", "Rows dropped on the way to the monitor: at the replica "
              "(reason buffer_full, monitor_busy, monitor_unavailable) and at the monitor (kind "
              "replica as reported by the replicas, schema, unknown_version, not_a_message, "
              "schema_version, malformed).", "suffix: rows/s", [
                  Q(recorded("model_version_reason:vigil_samples_dropped_rows:rate1m"),
                    f"{MVL} replica: {{{{reason}}}}"),
                  Q(recorded("model_version_kind:vigil_sample_rows_dropped:rate1m"),
                    f"{MVL} monitor: {{{{kind}}}}"),
              ], width=8),
        graph("Sampled rows sent and received", "Rows the replicas handed to the monitor and "
              "rows the monitor received.", "suffix: rows/s", [
                  Q(recorded("model_version:vigil_samples_sent_rows:rate1m"), f"{MVL} sent"),
                  Q(recorded("model_version:vigil_sample_rows_received:rate1m"),
                    f"{MVL} received"),
              ], width=24),
    ])


def alerts() -> db.Row:
    return row("Alerts and webhooks", [
        single("Alerts firing", "Alerts firing now for the selected model versions (one per "
               "model, version and rule).", "none",
               [Q(f"sum(vigil_alert_firing{{{MV}}}) or vector(0)", "firing")],
               steps=thresholds((None, "green"), (1, "red")), height=8),
        timeline("Alert state", "Each alert rule's state per model version: firing from the "
                 "window that crossed its threshold for N windows until it resolves.",
                 [Q(f"max by (model, version, rule) (vigil_alert_firing{{{MV}}})",
                    "{{model}}/{{version}} {{rule}}")], OK_FIRING, width=18),
        graph("Webhook delivery attempts by outcome", "Delivery attempts per second by target "
              "and outcome: delivered (2xx), http_error (408, 429, 5xx: retried), timeout, "
              "connection_error (retried), rejected (dead-lettered).", "ops",
              [Q(recorded("target_outcome:vigil_webhook_deliveries:rate1m", ""),
                 "{{target}} {{outcome}}")], stack=True),
        graph("Webhook delivery latency p50 / p95 / p99", "Duration of one delivery attempt, any "
              "outcome, by target.", "s",
              quantiles("vigil_webhook_delivery_seconds", "target", "", "{{target}}")),
        graph("Outbox pending", "Deliveries waiting in the outbox (first attempt or retry), by "
              "target; a level that keeps rising means the receiver is down or slow.", "short",
              [Q("sum by (target) (vigil_webhook_outbox_pending)", "{{target}}")], steps=True),
        graph("Dead letters", "Deliveries given up (refused, or out of attempts) per interval, "
              "by target; `vigil webhooks retry --all-dead` sends them again.", "short",
              [Q(f"sum by (target) (increase(vigil_webhook_dead_letters_total{RATE}))",
                 "{{target}}")]),
        graph("Outbox rows", "Events and delivery rows (by state) held in the webhook outbox: "
              "its retention (outbox_retention_s, outbox_max_events) deletes delivered and dead "
              "ones, so they stay flat; pending ones wait for their receiver.", "short", [
                  Q("max(vigil_webhook_outbox_events)", "events"),
                  Q("max by (state) (vigil_webhook_outbox_deliveries)", "deliveries {{state}}"),
              ], steps=True),
        graph("Outbox bytes", "Size of the webhook outbox file with its write-ahead log, flat "
              "under the outbox's retention.", "bytes",
              [Q("max(vigil_webhook_outbox_bytes)", "outbox")], steps=True),
    ])


def traffic_split() -> db.Row:
    live = f'{MV}, model!="_unknown"'
    by_version = recorded("model_version:vigil_requests:rate1m", live)
    by_model = f"sum by (model) ({recorded('model_version:vigil_requests:rate1m', ALL_VERSIONS)})"
    share = f"{by_version} / ignoring(version) group_left {by_model}"
    return row("Canary and production traffic", [
        graph("Traffic share by version", "Each version's share of its model's requests (the "
              "denominator counts every version of the model, whatever the version filter): a "
              "canary's weight, as served.", "percentunit", [Q(share, MVL)],
              stack=True, max_val=1),
        single("Current split", "The latest share of each model's requests per version.",
               "percentunit", [Q(share, MVL)], width=12, height=8),
        graph("Server error ratio by version", "5xx share of each version's requests, to compare "
              "a canary with production.", "percentunit",
              [Q(recorded("model_version:vigil_request_errors:ratio_rate1m", live), MVL)],
              max_val=1),
        graph("p95 latency by version", "p95 request latency of each version, to compare a "
              "canary with production.", "s",
              [recorded_quantiles("vigil_request_duration_seconds", matcher=live)[1]]),
        graph("Rollout weight", "The candidate's weight at each step of a progressive rollout "
              "(`vigil models rollout`); the series ends when it is promoted or rolled back.",
              "percentunit", [Q(select("vigil_rollout_weight", ALL_VERSIONS), MVL)],
              steps=True, max_val=1),
        graph("Rollout checks", "The rollout's checks of judged candidate windows, by check and "
              "outcome (pass, fail, no_verdict), over 5 minutes.", "short",
              [Q('sum by (model, check, outcome) (increase(vigil_rollout_checks_total'
                 '{model=~"$model"}[5m]))', "{{model}} {{check}} {{outcome}}")], steps=True),
    ])


ROWS = (traffic, batching, ray_serve, gpu, drift, quality, alerts, traffic_split)


def _variables() -> list[Any]:
    def labels(name: str, label: str, query: str, description: str) -> db.QueryVariable:
        return (db.QueryVariable(name).label(label).description(description).datasource(DS)
                .query(query).refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dm.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
                .all_value(".*")
                .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"])))

    return [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .description("The Prometheus that scrapes Ray's metrics agent and the monitor."),
        labels("model", "Model", "label_values(ray_vigil_requests_total, model)",
               "Served models (the replicas' request counter)."),
        labels("version", "Version", 'label_values(ray_vigil_requests_total{model=~"$model"}, '
               "version)", "Versions of the selected models."),
    ]


BUILT_IN_ANNOTATION = {
    "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
    "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
    "type": "dashboard",
}


def _alert_annotation() -> db.AnnotationQuery:
    """Regions on every graph while a Vigil alert fires for a selected model version."""
    return (db.AnnotationQuery().name("Vigil alerts").datasource(DS).enable(True)
            .icon_color("red")
            .expr(f"max by (model, version, rule) (vigil_alert_firing{{{MV}}}) == 1"))


def _numbered(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _numbered(panel.get("panels", []))


def build() -> dict:
    """The dashboard as a JSON-ready dict, with fixed panel ids (1, 2, ... in order)."""
    dash = (db.Dashboard("Vigil").uid(UID).description(
                "ONNX model serving on Ray Serve and its drift monitor: traffic, batching, Ray "
                "Serve, GPU, drift, data quality, alerts and webhooks, canary traffic. Needs the "
                "recording rules of configs/prometheus/recording_rules.yml. Generated "
                f"by vigil.tools.dashboards ({REGENERATE}); edit the module, not this JSON.")
            .tags(["vigil", "ray-serve", "ml-monitoring"]).timezone("browser").refresh("30s")
            .time("now-1h", "now").tooltip(dm.DashboardCursorSync.CROSSHAIR).editable()
            .variables(_variables()).annotation(_alert_annotation()))
    for make_row in ROWS:
        dash = dash.with_row(make_row())
    data = json.loads(json.dumps(dash.build(), cls=JSONEncoder))
    # What the SDK has no builder for: Grafana's own annotations, and how Prometheus annotations
    # are titled and tagged.
    alerts = data["annotations"]["list"][0]
    alerts.update(titleFormat="{{rule}} firing", textFormat="{{model}}/{{version}}",
                  tagKeys="model,version,rule", step="60s", useValueForTime=False)
    data["annotations"]["list"].insert(0, json.loads(json.dumps(BUILT_IN_ANNOTATION)))
    for number, panel in enumerate(_numbered(data["panels"]), start=1):
        panel["id"] = number
    for variable in data["templating"]["list"]:
        variable["id"] = variable["name"]
    return data


def render() -> str:
    """The dashboard's JSON text: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(path: Path = DEFAULT_OUT) -> bool:
    """Write the dashboard to `path`; True when the file changed."""
    text = render()
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def is_current(path: Path = DEFAULT_OUT) -> bool:
    """True when `path` holds exactly what `render()` would write."""
    return path.is_file() and path.read_text(encoding="utf-8") == render()
