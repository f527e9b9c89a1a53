"""The serving replica's metrics, declared once per process (ray.serve.metrics).

Ray's exporter prefixes every name with `ray_`, so `vigil_request_duration_seconds` is scraped as
`ray_vigil_request_duration_seconds`. Ray adds deployment, replica and application tags itself and
exports one series per replica: sum them in queries (configs/prometheus/recording_rules.yml does).
"""

from __future__ import annotations

import threading
from functools import lru_cache

from ray.serve import metrics

LATENCY_BOUNDARIES = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
]
ROWS_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384]
UNKNOWN_MODEL = "_unknown"  # label for requests naming no served model: keeps cardinality fixed
# Ray drops a gauge value no one has set for about 20 s (seen with Ray 2.60: a value set once is
# gone from the scrape ~18 s later), so a replica sets its gauges again this often.
GAUGE_REFRESH_S = 5.0


class ReplicaMetrics:
    """Every metric a serving replica exports; tags are limited to model, version, protocol,
    status code and a few fixed sets (the reason a request ended, why samples were dropped)."""

    def __init__(self) -> None:
        # One call per metric, written out: tests/unit/test_prometheus_rules.py and
        # test_dashboards.py read these declarations (name, kind, tag keys) from this file.
        self._declare_requests()
        self._declare_repository()
        self._declare_samples()
        self._declare_front_door()
        self._gauge_lock = threading.Lock()
        self._loaded: dict[str, int] = {}  # the last count of each served model, to set again
        self._faults: dict[tuple[str, str], int] = {}  # the faults by (model, kind), likewise
        self._refresher: threading.Thread | None = None
        self._stop = threading.Event()

    def _declare_requests(self) -> None:
        """Requests, their latency, and the batches they run in."""
        self.request_duration = metrics.Histogram(
            "vigil_request_duration_seconds",
            description="Time from request arrival at the replica to response, by status code.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model", "version", "protocol", "code"),
        )
        self.requests = metrics.Counter(
            "vigil_requests_total",
            description="Inference requests by status code and reason (serving.protocol.Reason: "
            "ok, client, not_ready, model_run, model_output, shadow_refused, internal, "
            "cancelled) and protocol (json, binary: HTTP; grpc, grpc_raw: gRPC's typed and raw "
            "contents, counted by the HTTP status of their gRPC code).",
            tag_keys=("model", "version", "protocol", "code", "reason"),
        )
        self.inference_duration = metrics.Histogram(
            "vigil_inference_duration_seconds",
            description="Time one onnxruntime run takes (one batch).",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model", "version"),
        )
        self.batch_rows = metrics.Histogram(
            "vigil_batch_rows",
            description="Rows stacked into one model run.",
            boundaries=ROWS_BOUNDARIES,
            tag_keys=("model", "version"),
        )
        self.queue_wait = metrics.Histogram(
            "vigil_queue_wait_seconds",
            description="Time a request waits for its batch to start.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("model", "version"),
        )

    def _declare_repository(self) -> None:
        """What a replica holds loaded, and the faults it sees in the repository."""
        self.loaded_versions = metrics.Gauge(
            "vigil_loaded_versions",
            description="Versions of a model this replica holds loaded (a session each): the "
            "aliased ones and unaliased ones used lately (serving.settings.LoadingSettings).",
            tag_keys=("model",),
        )
        self.fault_gauge = metrics.Gauge(
            "vigil_model_repository_faults",
            description="Faults of a model's repository entry this replica sees, by kind "
            "(vigil.core.repository_health.FaultKind: unreadable, aliases, missing, modified, "
            "broken_alias): the files differ from what is served, or cannot be read.",
            tag_keys=("model", "reason"),
        )

    def _declare_samples(self) -> None:
        """What reaches the monitor, and what was dropped on the way."""
        self.samples_dropped = metrics.Counter(
            "vigil_samples_dropped_rows_total",
            description="Sampled rows a replica dropped instead of sending them to the monitor.",
            tag_keys=("model", "version", "reason"),
        )
        self.sample_requests_dropped = metrics.Counter(
            "vigil_samples_dropped_requests_total",
            description="Request facts (latency and status, one per request, sampled or not) a "
            "replica dropped instead of sending them to the monitor, by reason (buffer_full, "
            "monitor_busy, monitor_unavailable): the monitor's request counts, error ratios and "
            "latency quantiles miss these requests.",
            tag_keys=("model", "version", "reason"),
        )
        self.samples_sent = metrics.Counter(
            "vigil_samples_sent_rows_total",
            description="Sampled rows a replica handed to the monitor.",
            tag_keys=("model", "version"),
        )
        self.prediction_records_dropped = metrics.Counter(
            "vigil_feedback_records_dropped_total",
            description="Prediction records (one per answered request, what labels join to) a "
            "replica dropped instead of sending them to the monitor, by reason (buffer_full, "
            "layout, monitor_busy, monitor_unavailable): labels for those requests will be "
            "unknown_id.",
            tag_keys=("model", "version", "reason"),
        )

    def _declare_front_door(self) -> None:
        """Requests refused before inference: by the token guard, and at the front door."""
        self.auth_rejections = metrics.Counter(
            "vigil_auth_rejected_total",
            description="Requests refused for want of a valid bearer token (code 401) or of the "
            "scope their route needs (403), by scope needed ('any': any valid token).",
            tag_keys=("code", "scope"),
        )
        self.front_door_refusals = metrics.Counter(
            "vigil_front_door_refused_total",
            description="Inference requests cut off at the front door, by reason: body_timeout "
            "(408, the body did not arrive in time), client_cap (429, the client had "
            "front_door.max_in_flight_per_client requests in flight), client_left (499, the "
            "client went away while sending its body).",
            tag_keys=("reason",),
        )

    def auth_rejected(self, code: int, scope: str | None) -> None:
        self.auth_rejections.inc(1, {"code": str(code), "scope": scope or "any"})

    def refused(self, reason: str) -> None:
        self.front_door_refusals.inc(1, {"reason": reason})

    def for_model(self, model: str, version: str) -> ModelBatchMetrics:
        return ModelBatchMetrics(self, {"model": model, "version": version})

    def request_done(
        self, model: str, version: str, protocol: str, code: int, reason: str, seconds: float
    ) -> None:
        tags = {"model": model, "version": version, "protocol": protocol, "code": str(code)}
        self.request_duration.observe(seconds, tags)
        tags["reason"] = reason
        self.requests.inc(1, tags)

    def loaded(self, counts: dict[str, int]) -> None:
        """How many versions of each model are loaded now (0 for a model no longer served).
        Set again every GAUGE_REFRESH_S while served; a 0 is set once, then left to age out
        (so models that come and go do not pile up here)."""
        with self._gauge_lock:
            for model, count in counts.items():
                self.loaded_versions.set(count, {"model": model})
                if count:
                    self._loaded[model] = count
                else:
                    self._loaded.pop(model, None)
            self._start_refresher()

    def repository_faults(self, faults: dict[tuple[str, str], int]) -> None:
        """The repository faults by (model, kind) now: each set, and set again every
        GAUGE_REFRESH_S while it lasts; one that cleared is set to 0 once."""
        with self._gauge_lock:
            for model, kind in self._faults.keys() - faults.keys():
                self._set_faults(0, model, kind)
            self._faults = dict(faults)
            for (model, kind), count in faults.items():
                self._set_faults(count, model, kind)
            self._start_refresher()

    def _set_faults(self, count: int, model: str, kind: str) -> None:
        self.fault_gauge.set(count, {"model": model, "reason": kind})

    def _start_refresher(self) -> None:
        if self._refresher is None:
            self._refresher = threading.Thread(
                target=self._refresh_gauges, name="vigil-gauge-refresh", daemon=True)
            self._refresher.start()

    def _refresh_gauges(self) -> None:
        while not self._stop.wait(GAUGE_REFRESH_S):
            with self._gauge_lock:
                for model, count in self._loaded.items():
                    self.loaded_versions.set(count, {"model": model})
                for (model, kind), count in self._faults.items():
                    self._set_faults(count, model, kind)


class ModelBatchMetrics:
    """The batching observer for one model version (see serving.batching.BatchObserver)."""

    def __init__(self, parent: ReplicaMetrics, tags: dict[str, str]) -> None:
        self._parent = parent
        self._tags = tags

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        self._parent.batch_rows.observe(rows, self._tags)
        self._parent.inference_duration.observe(seconds, self._tags)

    def request_queued(self, wait_seconds: float) -> None:
        self._parent.queue_wait.observe(wait_seconds, self._tags)


@lru_cache(maxsize=1)
def replica_metrics() -> ReplicaMetrics:
    """The process's single set of metrics, created on first use inside the replica."""
    return ReplicaMetrics()
