"""The monitor's Prometheus collector: yields the latest window results at scrape time.

Every metric the monitor exports is declared here, nowhere else. Names are ``vigil_<what>_<unit>``
(booleans and scores have no unit); labels are model, version and at most one of feature,
method, output, quantile, kind. Gauges describe the last closed window of each model version;
counters (``_total``) count since the monitor started. A version whose window failed to evaluate,
or that has no profile, exports no drift or quality gauges, only its latency, errors and counters.

A column whose statistics failed in the last window (monitoring.drift status "failed", or a
quality ``error``) exports no score, verdict or quality ratio; ``vigil_failed_columns`` counts such
columns per model version (0 when none), so an alert can fire on ``vigil_failed_columns > 0``; the
drift JSON (``failed_columns``) says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitoring.latency import QUANTILES
from monitoring.webhooks import OUTCOMES, SECONDS_BUCKETS, DeliveryStats
from monitoring.window import ClosedWindow

MV = ["model", "version"]
VIOLATION_KINDS = ("missing_column", "wrong_dtype", "wrong_shape", "unexpected_column")
# Why samples were dropped: at the replica (buffer full); rows whose tensors misfit the version's
# layout; whole messages for a version not monitored, or that the monitor cannot read
# (vigil.core.messages.UnreadableMessage.REASONS).
DROP_KINDS = (
    "replica", "schema", "unknown_version", "not_a_message", "schema_version", "malformed"
)


@dataclass(frozen=True)
class VersionSnapshot:
    """What the collector reads about one model version at scrape time."""

    model: str
    version: str
    profile_loaded: bool | None  # None: not a served version (the '_unknown' bucket of drops)
    latest: ClosedWindow | None = None
    windows_evaluated: int = 0
    current_rows: int = 0
    rows_received: int = 0
    requests_received: int = 0
    rows_dropped: Mapping[str, int] = field(default_factory=dict)  # kind -> rows
    requests_dropped: Mapping[str, int] = field(default_factory=dict)  # kind -> requests
    messages_dropped: Mapping[str, int] = field(default_factory=dict)  # kind -> whole messages
    rows_agreeing: int = 0  # shadow rows that agreed with production's answers
    rows_compared: int = 0  # shadow rows compared with production's answers


def _gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=[*MV, *extra])


def _counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=[*MV, *extra])


class MonitorCollector(Collector):
    """Reads `snapshot()` on every scrape; holds no metric state of its own."""

    def __init__(self, snapshot: Callable[[], Iterable[VersionSnapshot]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # names vary with the models served: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        g = {
            "profile": _gauge("vigil_profile_loaded", "1 when the version's reference profile "
                              "is loaded (drift and quality exported), 0 when it has none."),
            "score": _gauge("vigil_feature_drift_score", "Drift test score of a feature in the "
                            "last window: p-value (ks, chisquare, z) or distance.",
                            ("feature", "method")),
            "drifted": _gauge("vigil_feature_drifted", "1 when the feature drifted in the last "
                              "window.", ("feature", "method")),
            "share": _gauge("vigil_drift_share_ratio", "Share of tested features that drifted "
                            "in the last window."),
            "dataset": _gauge("vigil_dataset_drift", "1 when the drifted share reached the "
                              "configured drift_share in the last window."),
            "pscore": _gauge("vigil_prediction_drift_score", "Drift test score of a model output "
                             "column in the last window.", ("output", "method")),
            "pdrifted": _gauge("vigil_prediction_drifted", "1 when the output column drifted in "
                               "the last window.", ("output", "method")),
            "missing": _gauge("vigil_missing_ratio", "Share of missing values of a column in the "
                              "last window.", ("feature",)),
            "range": _gauge("vigil_out_of_range_ratio", "Share of a numeric column's values "
                            "outside the reference range in the last window.", ("feature",)),
            "unseen": _gauge("vigil_unseen_categories_ratio", "Share of a categorical column's "
                             "values absent from the reference in the last window.", ("feature",)),
            "violations": _gauge("vigil_schema_violation_columns", "Columns with a schema "
                                 "violation in the last window, by kind.", ("kind",)),
            "failed": _gauge("vigil_failed_columns", "Columns whose drift test or quality "
                             "statistics failed in the last window (no score exported for them; "
                             "the reason is in the drift JSON's failed_columns)."),
            "rows": _gauge("vigil_window_rows", "Sampled rows in the last window."),
            "requests": _gauge("vigil_window_requests", "Requests in the last window."),
            "open": _gauge("vigil_open_window_rows", "Sampled rows in the window still open."),
            "latency": _gauge("vigil_window_latency_seconds", "Request latency quantile over "
                              "the last window.", ("quantile",)),
            "errors": _gauge("vigil_window_error_ratio", "Share of requests in the last window "
                             "that failed: kind server (5xx, no answer), client (4xx but 499) or "
                             "cancelled (499: the client went away or the request timed out).",
                             ("kind",)),
            "time": _gauge("vigil_last_window_timestamp_seconds", "When the last window closed "
                           "(unix time)."),
            "agreement": _gauge("vigil_shadow_agreement_ratio", "Share of the rows compared in "
                                "the last window whose outputs, run on this version as its "
                                "model's shadow, agreed with production's answer (no sample "
                                "when the last window compared none)."),
        }
        c = {
            "rows_in": _counter("vigil_sample_rows_received_total", "Sampled rows received."),
            "requests_in": _counter("vigil_sample_requests_received_total",
                                    "Request facts (latency, status) received."),
            "rows_out": _counter("vigil_sample_rows_dropped_total", "Sampled rows dropped, by "
                                 "kind: replica (replica buffer full), schema (did not match the "
                                 "version's signature or profile), unknown_version, or why a "
                                 "message could not be read (not_a_message, schema_version, "
                                 "malformed).", ("kind",)),
            "requests_out": _counter("vigil_sample_requests_dropped_total", "Request facts "
                                     "dropped, by kind as for rows.", ("kind",)),
            "messages_out": _counter("vigil_sample_messages_dropped_total", "Whole sample "
                                     "messages dropped, by kind as for rows.", ("kind",)),
            "windows": _counter("vigil_windows_evaluated_total", "Windows closed and evaluated."),
            "compared": _counter("vigil_shadow_compared_rows_total", "Rows of this version's "
                                 "runs as its model's shadow compared with production's answers."),
            "agreeing": _counter("vigil_shadow_agreeing_rows_total", "Compared shadow rows whose "
                                 "outputs agreed with production's answers."),
        }
        for snap in self._snapshot():
            self._add(snap, g, c)
        yield from g.values()
        yield from c.values()

    def _add(self, snap: VersionSnapshot, g: dict, c: dict) -> None:
        mv = [snap.model, snap.version]
        for kind in DROP_KINDS:
            c["rows_out"].add_metric([*mv, kind], snap.rows_dropped.get(kind, 0))
            c["requests_out"].add_metric([*mv, kind], snap.requests_dropped.get(kind, 0))
            c["messages_out"].add_metric([*mv, kind], snap.messages_dropped.get(kind, 0))
        c["rows_in"].add_metric(mv, snap.rows_received)
        c["requests_in"].add_metric(mv, snap.requests_received)
        if snap.profile_loaded is None:
            return
        c["windows"].add_metric(mv, snap.windows_evaluated)
        c["compared"].add_metric(mv, snap.rows_compared)
        c["agreeing"].add_metric(mv, snap.rows_agreeing)
        g["profile"].add_metric(mv, float(snap.profile_loaded))
        g["open"].add_metric(mv, snap.current_rows)
        window = snap.latest
        if window is None:
            return
        g["rows"].add_metric(mv, window.rows)
        g["requests"].add_metric(mv, window.requests)
        g["time"].add_metric(mv, window.closed_at)
        lat = window.latency
        for q, value in zip(QUANTILES, (lat.p50, lat.p95, lat.p99), strict=True):
            if value is not None:
                g["latency"].add_metric([*mv, str(q)], value)
        g["errors"].add_metric([*mv, "server"], lat.error_ratio)
        g["errors"].add_metric([*mv, "client"], lat.client_error_ratio)
        g["errors"].add_metric([*mv, "cancelled"], lat.cancelled_ratio)
        if window.shadow_agreement is not None:
            g["agreement"].add_metric(mv, window.shadow_agreement)
        if window.result is None:
            return
        drift, quality = window.result.drift, window.result.quality
        for col in drift.features:
            if col.status == "tested":
                labels = [*mv, col.name, str(col.method)]
                g["score"].add_metric(labels, col.score)
                g["drifted"].add_metric(labels, float(col.drifted))
        for col in drift.outputs:
            if col.status == "tested":
                labels = [*mv, col.name, str(col.method)]
                g["pscore"].add_metric(labels, col.score)
                g["pdrifted"].add_metric(labels, float(col.drifted))
        g["share"].add_metric(mv, drift.share_drifted)
        g["dataset"].add_metric(mv, float(drift.dataset_drift))
        g["failed"].add_metric(mv, len(window.result.failed_columns))
        for column in quality.columns:
            if not column.present or column.error is not None:
                continue
            g["missing"].add_metric([*mv, column.name], column.missing_ratio)
            if column.kind == "numeric":
                g["range"].add_metric([*mv, column.name], column.out_of_range_share)
            else:
                g["unseen"].add_metric([*mv, column.name], column.unseen_share)
        for kind in VIOLATION_KINDS:
            count = sum(v.violation == kind for v in quality.violations)
            g["violations"].add_metric([*mv, kind], count)


class AlertCollector(Collector):
    """Alert states and webhook delivery, read at scrape time (on the monitor's window thread).

    ``vigil_alert_firing`` has one series per (model, version, rule) the rules have judged or
    that fires; delivery series exist per configured target (zeros included) and per target
    that still has rows in the outbox.
    """

    def __init__(
        self,
        firing: Callable[[], Iterable[tuple[str, str, str, bool]]],
        stats: DeliveryStats,
        targets: Callable[[], Iterable[str]],
    ) -> None:
        self._firing = firing
        self._stats = stats
        self._targets = targets

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        firing = GaugeMetricFamily("vigil_alert_firing", "1 while the alert of this rule fires for "
                                   "the model version, 0 when it does not.", labels=[*MV, "rule"])
        for model, version, rule, on in self._firing():
            firing.add_metric([model, version, rule], float(on))
        yield firing
        stats = self._stats
        targets = sorted({*self._targets(), *stats.pending, *(t for t, _ in stats.attempts)})
        attempts = CounterMetricFamily(
            "vigil_webhook_deliveries_total", "Delivery attempts by outcome: delivered (2xx), "
            "rejected (a status that is not retried: dead-lettered), http_error (408, 429, 5xx: "
            "retried), timeout, connection_error.", labels=["target", "outcome"])
        dead = CounterMetricFamily("vigil_webhook_dead_letters_total", "Deliveries given up "
                                   "(refused, or out of attempts).", labels=["target"])
        pending = GaugeMetricFamily("vigil_webhook_outbox_pending", "Deliveries waiting in the "
                                    "outbox (first attempt or retry).", labels=["target"])
        seconds = HistogramMetricFamily("vigil_webhook_delivery_seconds", "Duration of one "
                                        "delivery attempt, any outcome.", labels=["target"])
        for target in targets:
            for outcome in OUTCOMES:
                attempts.add_metric([target, outcome], stats.attempts.get((target, outcome), 0))
            dead.add_metric([target], stats.dead_letters.get(target, 0))
            pending.add_metric([target], stats.pending.get(target, 0))
            counts = stats.seconds_buckets.get(target, [0] * (len(SECONDS_BUCKETS) + 1))
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, SECONDS_BUCKETS), "+Inf"), counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric([target], buckets, stats.seconds_sum.get(target, 0.0))
        yield from (attempts, dead, pending, seconds)
