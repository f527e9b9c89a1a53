"""The join store's metrics: labels by outcome, evictions and skipped records, predictions held;
each family declared once here and read at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from monitoring.collector import MV, counter, gauge
from monitoring.label_store import EVICTION_REASONS, OUTCOMES, LabelStore

LABELS = counter("vigil_feedback_labels_total", "Labels posted to the feedback route, by outcome: "
                 "joined, unknown_id (never served, not recorded, or expired; version ''), "
                 "duplicate (a second label, refused without ?overwrite=true), invalid (wrong "
                 "type or arity for the prediction).", *MV, "outcome")
EVICTED = counter("vigil_feedback_evicted_total", "Predictions the join store dropped, by reason: "
                  "ttl (feedback.ttl_s), bound (feedback.max_pending), replaced (a request id "
                  "served again).", "model", "reason")
SKIPPED = counter("vigil_feedback_skipped_total", "Prediction records not kept, by reason: "
                  "replica (dropped before sending), unknown_version, no_prediction (the profile "
                  "declares no 1-D output), or why a message could not be read.", "model",
                  "reason")
HELD = gauge("vigil_feedback_predictions", "Predictions the join store holds (labelled or not).")


class LabelCollector(Collector):
    """The join store's counters (since the monitor started) and size, read at scrape time on
    the monitor's worker thread. Every outcome and eviction reason has a series per model seen."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        store = self.store
        labels = LABELS.new()
        seen = {(m, v) for m, v, _ in store.labels}
        for model, version in sorted(seen):
            for outcome in OUTCOMES:
                labels.add_metric([model, version, outcome],
                                  float(store.labels[(model, version, outcome)]))
        yield labels
        evicted = EVICTED.new()
        for model in sorted({m for m, _ in store.evicted}):
            for reason in EVICTION_REASONS:
                evicted.add_metric([model, reason], float(store.evicted[(model, reason)]))
        yield evicted
        skipped = SKIPPED.new()
        for (model, reason), n in sorted(store.skipped.items()):
            skipped.add_metric([model, reason], float(n))
        yield skipped
        held = HELD.new()
        held.add_metric([], float(store.size))
        yield held
