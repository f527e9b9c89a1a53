"""The join store's metrics: labels by outcome, evictions and skipped records, predictions held,
quality from labels and quality estimated before them; each family declared once here and read at
scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

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
QUALITY = gauge("vigil_quality", "Model quality of the latest closed window from its labelled "
                "rows (by prediction time; late labels improve it): accuracy, precision_macro, "
                "recall_macro, f1_macro, log_loss, roc_auc, or mae, rmse, mape, r2.", *MV,
                "metric")
QUALITY_REFERENCE = gauge("vigil_quality_reference", "The version's quality on its held-out set, "
                          "as the model gate scored it (accuracy, roc_auc, rmse).", *MV, "metric")
QUALITY_LABELS = gauge("vigil_quality_labels", "Labelled rows behind vigil_quality (the latest "
                       "closed window's).", *MV)
QUALITY_COVERAGE = gauge("vigil_quality_label_coverage", "Labelled rows / rows served in the "
                         "latest closed window (0 when none are labelled).", *MV)
SETTLED = gauge("vigil_quality_settled", "Model quality from labels of the latest settled window "
                "(closed feedback.settle_s ago, so its labels are in): the metrics of "
                "vigil_quality. The label alert rules judge these windows.", *MV, "metric")
SETTLED_LABELS = gauge("vigil_quality_settled_labels", "Labelled rows behind "
                       "vigil_quality_settled.", *MV)
SETTLED_COVERAGE = gauge("vigil_quality_settled_label_coverage", "Labelled rows / rows served in "
                         "the latest settled window (0 when none are labelled).", *MV)
QUALITY_ESTIMATED = gauge("vigil_quality_estimated", "Model quality of the latest closed window "
                          "estimated from its predictions' calibrated class probabilities alone, "
                          "before any label (CBPE, monitoring.cbpe): accuracy, f1 (binary: class "
                          "1), f1_macro, roc_auc. Only for versions calibrated at publish time.",
                          *MV, "metric")
HELD = gauge("vigil_feedback_predictions", "Predictions the join store holds (labelled or not).")


class LabelCollector(Collector):
    """The join store's counters (since the monitor started) and size, read at scrape time on
    the monitor's worker thread. Every outcome and eviction reason has a series per model seen."""

    def __init__(self, store: LabelStore,
                 latest: Callable[[], list[tuple[str, str, dict[str, Any]]]] | None = None,
                 settled: Callable[[], list[tuple[str, str, dict[str, Any]]]] | None = None,
                 estimated: Callable[[], list[tuple[str, str, dict[str, Any]]]] | None = None
                 ) -> None:
        self.store = store
        self.latest = latest  # each version's latest closed window's quality
        self.settled = settled  # each version's latest settled window's quality
        self.estimated = estimated  # the latest closed window's quality estimated before labels

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
        yield from self._quality()
        yield self._estimated()

    def _quality(self) -> Iterator[Metric]:
        quality, reference = QUALITY.new(), QUALITY_REFERENCE.new()
        labels, coverage = QUALITY_LABELS.new(), QUALITY_COVERAGE.new()
        for model, version, doc in self.latest() if self.latest is not None else []:
            for name, value in doc["reference"].items():
                reference.add_metric([model, version, name], value)
            if not doc["served_rows"]:
                continue  # no prediction recorded in the window: nothing to say
            labels.add_metric([model, version], float(doc["labelled_rows"]))
            coverage.add_metric([model, version], doc["coverage"] or 0.0)
            for name, value in doc["metrics"].items():
                if value is not None:
                    quality.add_metric([model, version, name], float(value))
        yield from (quality, reference, labels, coverage)
        settled, settled_labels = SETTLED.new(), SETTLED_LABELS.new()
        settled_coverage = SETTLED_COVERAGE.new()
        for model, version, doc in self.settled() if self.settled is not None else []:
            if not doc["served_rows"]:
                continue
            settled_labels.add_metric([model, version], float(doc["labelled_rows"]))
            settled_coverage.add_metric([model, version], doc["coverage"] or 0.0)
            for name, value in doc["metrics"].items():
                if value is not None:
                    settled.add_metric([model, version, name], float(value))
        yield from (settled, settled_labels, settled_coverage)

    def _estimated(self) -> Metric:
        family = QUALITY_ESTIMATED.new()
        for model, version, doc in self.estimated() if self.estimated is not None else []:
            for name, value in doc["metrics"].items():
                if value is not None:
                    family.add_metric([model, version, name], float(value))
        return family
