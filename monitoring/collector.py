"""The monitor's Prometheus collector: yields the latest window results at scrape time.

Every metric the monitor exports is declared once: a table of families (``VERSION_FAMILIES``:
name, type, help, labels, what each reads from a version's snapshot) here, and the alert,
delivery and state families in monitoring.collector_ops. Names are ``vigil_<what>_<unit>``
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

import dataclasses
import enum
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, get_args

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from monitoring.drift import ColumnDrift, WindowResult
from monitoring.latency import QUANTILES
from monitoring.quality import ColumnQuality, Violation
from monitoring.window import ClosedWindow

MV = ["model", "version"]
VIOLATION_KINDS: tuple[Violation, ...] = get_args(Violation)
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


Samples = Iterable[tuple[Sequence[str], float]]  # (labels after model and version, value)


class Needs(enum.Enum):
    """What a version's snapshot must hold for a family to have its samples."""

    NOTHING = "any snapshot, the '_unknown' bucket of drops included"
    SERVED = "a monitored version"
    WINDOW = "a monitored version with a closed window (the family reads the window)"
    RESULT = "... whose statistics were evaluated (the family reads the WindowResult)"


M = TypeVar("M", GaugeMetricFamily, CounterMetricFamily, HistogramMetricFamily)


@dataclass(frozen=True)
class Family(Generic[M]):
    """One metric family as exposed: name, type, help and label names."""

    name: str
    kind: type[M]
    help: str
    labels: tuple[str, ...]

    def new(self) -> M:
        """An empty family for one scrape."""
        return self.kind(self.name, self.help, labels=list(self.labels))


@dataclass(frozen=True)
class VersionFamily:
    """A family with one group of samples per model version, read from its snapshot (or its
    latest window, or that window's result, as `needs` says)."""

    family: Family[GaugeMetricFamily] | Family[CounterMetricFamily]
    needs: Needs
    read: Callable[[Any], Samples]


def _one(value: float) -> Samples:
    return (((), value),)


def _by_kind(counts: Mapping[str, int]) -> Samples:
    return (((kind,), counts.get(kind, 0)) for kind in DROP_KINDS)


def _latency(window: ClosedWindow) -> Samples:
    lat = window.latency
    return (((str(q),), v) for q, v in zip(QUANTILES, (lat.p50, lat.p95, lat.p99), strict=True)
            if v is not None)


def _errors(window: ClosedWindow) -> Samples:
    lat = window.latency
    return ((("server",), lat.error_ratio), (("client",), lat.client_error_ratio),
            (("cancelled",), lat.cancelled_ratio))


def _agreement(window: ClosedWindow) -> Samples:
    return () if window.shadow_agreement is None else _one(window.shadow_agreement)


def _tested(columns: Iterable[ColumnDrift], drifted: bool) -> Samples:
    """Each tested column's score, or its verdict (1.0 drifted, 0.0 not)."""
    for c in columns:
        if c.status == "tested":
            yield (c.name, str(c.method)), float(c.drifted) if drifted else float(c.score or 0.0)


def _quality(result: WindowResult, kinds: tuple[str, ...],
             value: Callable[[ColumnQuality], float]) -> Samples:
    """A ratio of every column of these kinds whose quality statistics hold."""
    return (((c.name,), value(c)) for c in result.quality.columns
            if c.present and c.error is None and c.kind in kinds)


def _violations(result: WindowResult) -> Samples:
    found = Counter(v.violation for v in result.quality.violations)
    return (((kind,), found[kind]) for kind in VIOLATION_KINDS)


def gauge(name: str, doc: str, *labels: str) -> Family[GaugeMetricFamily]:
    """A gauge family's declaration (collector_ops declares the monitor's own with it too)."""
    return Family(name, GaugeMetricFamily, doc, labels)


def counter(name: str, doc: str, *labels: str) -> Family[CounterMetricFamily]:
    """A counter family's declaration; the name ends in `_total`."""
    return Family(name, CounterMetricFamily, doc, labels)


def _per_version(family: Family[GaugeMetricFamily] | Family[CounterMetricFamily], needs: Needs,
                 read: Callable[[Any], Samples]) -> VersionFamily:
    """`family` with one group of samples per model version: model and version label first."""
    return VersionFamily(dataclasses.replace(family, labels=(*MV, *family.labels)), needs, read)


# Every family of the per-version metrics, in the order they are exposed.
VERSION_FAMILIES: tuple[VersionFamily, ...] = (
    _per_version(
        gauge("vigil_profile_loaded", "1 when the version's reference profile is loaded (drift "
              "and quality exported), 0 when it has none."),
        Needs.SERVED, lambda s: _one(float(s.profile_loaded))),
    _per_version(
        gauge("vigil_feature_drift_score", "Drift test score of a feature in the last window: "
              "p-value (ks, chisquare, z) or distance.", "feature", "method"),
        Needs.RESULT, lambda r: _tested(r.drift.features, drifted=False)),
    _per_version(
        gauge("vigil_feature_drifted", "1 when the feature drifted in the last window.",
              "feature", "method"),
        Needs.RESULT, lambda r: _tested(r.drift.features, drifted=True)),
    _per_version(
        gauge("vigil_drift_share_ratio", "Share of tested features that drifted in the last "
              "window."),
        Needs.RESULT, lambda r: _one(r.drift.share_drifted)),
    _per_version(
        gauge("vigil_dataset_drift", "1 when the drifted share reached the configured "
              "drift_share in the last window."),
        Needs.RESULT, lambda r: _one(float(r.drift.dataset_drift))),
    _per_version(
        gauge("vigil_prediction_drift_score", "Drift test score of a model output column in the "
              "last window.", "output", "method"),
        Needs.RESULT, lambda r: _tested(r.drift.outputs, drifted=False)),
    _per_version(
        gauge("vigil_prediction_drifted", "1 when the output column drifted in the last window.",
              "output", "method"),
        Needs.RESULT, lambda r: _tested(r.drift.outputs, drifted=True)),
    _per_version(
        gauge("vigil_missing_ratio", "Share of missing values of a column in the last window.",
              "feature"),
        Needs.RESULT, lambda r: _quality(r, ("numeric", "categorical"), lambda c: c.missing_ratio)),
    _per_version(
        gauge("vigil_out_of_range_ratio", "Share of a numeric column's values outside the "
              "reference range in the last window.", "feature"),
        Needs.RESULT, lambda r: _quality(r, ("numeric",), lambda c: c.out_of_range_share)),
    _per_version(
        gauge("vigil_unseen_categories_ratio", "Share of a categorical column's values absent "
              "from the reference in the last window.", "feature"),
        Needs.RESULT, lambda r: _quality(r, ("categorical",), lambda c: c.unseen_share)),
    _per_version(
        gauge("vigil_schema_violation_columns", "Columns with a schema violation in the last "
              "window, by kind.", "kind"),
        Needs.RESULT, _violations),
    _per_version(
        gauge("vigil_failed_columns", "Columns whose drift test or quality statistics failed in "
              "the last window (no score exported for them; the reason is in the drift JSON's "
              "failed_columns)."),
        Needs.RESULT, lambda r: _one(len(r.failed_columns))),
    _per_version(
        gauge("vigil_window_rows", "Sampled rows in the last window."),
        Needs.WINDOW, lambda w: _one(w.rows)),
    _per_version(
        gauge("vigil_window_requests", "Requests in the last window."),
        Needs.WINDOW, lambda w: _one(w.requests)),
    _per_version(
        gauge("vigil_open_window_rows", "Sampled rows in the window still open."),
        Needs.SERVED, lambda s: _one(s.current_rows)),
    _per_version(
        gauge("vigil_window_latency_seconds", "Request latency quantile over the last window.",
              "quantile"),
        Needs.WINDOW, _latency),
    _per_version(
        gauge("vigil_window_error_ratio", "Share of requests in the last window that failed: "
              "kind server (5xx, no answer), client (4xx but 499) or cancelled (499: the client "
              "went away or the request timed out).", "kind"),
        Needs.WINDOW, _errors),
    _per_version(
        gauge("vigil_last_window_timestamp_seconds", "When the last window closed (unix time)."),
        Needs.WINDOW, lambda w: _one(w.closed_at)),
    _per_version(
        gauge("vigil_shadow_agreement_ratio", "Share of the rows compared in the last window "
              "whose outputs, run on this version as its model's shadow, agreed with "
              "production's answer (no sample when the last window compared none)."),
        Needs.WINDOW, _agreement),
    _per_version(
        counter("vigil_sample_rows_received_total", "Sampled rows received."),
        Needs.NOTHING, lambda s: _one(s.rows_received)),
    _per_version(
        counter("vigil_sample_requests_received_total", "Request facts (latency, status) "
                "received."),
        Needs.NOTHING, lambda s: _one(s.requests_received)),
    _per_version(
        counter("vigil_sample_rows_dropped_total", "Sampled rows dropped, by kind: replica "
                "(replica buffer full), schema (did not match the version's signature or "
                "profile), unknown_version, or why a message could not be read (not_a_message, "
                "schema_version, malformed).", "kind"),
        Needs.NOTHING, lambda s: _by_kind(s.rows_dropped)),
    _per_version(
        counter("vigil_sample_requests_dropped_total", "Request facts dropped, by kind as for "
                "rows.", "kind"),
        Needs.NOTHING, lambda s: _by_kind(s.requests_dropped)),
    _per_version(
        counter("vigil_sample_messages_dropped_total", "Whole sample messages dropped, by kind "
                "as for rows.", "kind"),
        Needs.NOTHING, lambda s: _by_kind(s.messages_dropped)),
    _per_version(
        counter("vigil_windows_evaluated_total", "Windows closed and evaluated."),
        Needs.SERVED, lambda s: _one(s.windows_evaluated)),
    _per_version(
        counter("vigil_shadow_compared_rows_total", "Rows of this version's runs as its model's "
                "shadow compared with production's answers."),
        Needs.SERVED, lambda s: _one(s.rows_compared)),
    _per_version(
        counter("vigil_shadow_agreeing_rows_total", "Compared shadow rows whose outputs agreed "
                "with production's answers."),
        Needs.SERVED, lambda s: _one(s.rows_agreeing)),
)


def _source(needs: Needs, snap: VersionSnapshot) -> Any:
    """What a family of these needs reads from this snapshot; None: it has no samples."""
    if needs is Needs.NOTHING:
        return snap
    if snap.profile_loaded is None:  # the '_unknown' bucket: drops only
        return None
    if needs is Needs.SERVED:
        return snap
    window = snap.latest
    if needs is Needs.WINDOW or window is None:
        return window
    return window.result


class MonitorCollector(Collector):
    """Reads `snapshot()` on every scrape; holds no metric state of its own."""

    def __init__(self, snapshot: Callable[[], Iterable[VersionSnapshot]]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # names vary with the models served: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        metrics = [f.family.new() for f in VERSION_FAMILIES]
        for snap in self._snapshot():
            mv = (snap.model, snap.version)
            for family, metric in zip(VERSION_FAMILIES, metrics, strict=True):
                source = _source(family.needs, snap)
                if source is not None:
                    for labels, value in family.read(source):
                        metric.add_metric([*mv, *labels], value)
        yield from metrics
