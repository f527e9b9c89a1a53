"""The monitor's side of feedback: served predictions into the join store, labels joined to them.

Records arrive from the replicas like samples (vigil.core.prediction_messages); a record of a
version the monitor does not hold, or whose profile declares no 1-D prediction output, is not
kept and is counted (`vigil_feedback_skipped_total`): a label for it is then unknown_id.
Not thread-safe: the monitor calls it from its one worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from monitoring.label_store import LabelStore, Predictions
from monitoring.service import MonitorService
from vigil.core.messages import UnreadableMessage
from vigil.core.prediction_messages import read_predictions


class LabelJoin:
    def __init__(self, store: LabelStore, service: MonitorService) -> None:
        self.store = store
        self.service = service

    def record(self, messages: Iterable[Any], now: float) -> int:
        """Keep the requests the messages record; returns how many were kept."""
        kept = 0
        for raw in messages:
            try:
                message = read_predictions(raw)
            except UnreadableMessage as exc:
                self.store.skipped[("_unknown", exc.reason)] += 1
                continue
            if message.dropped:
                self.store.skipped[(message.model, "replica")] += message.dropped
            state = self.service.find(message.model, message.version, now)
            if state is None:
                self.store.skipped[(message.model, "unknown_version")] += message.requests
                continue
            outputs = None
            if state.profile is not None:
                outputs = Predictions.of(state.layout, (c.name for c in state.profile.outputs))
            kept += self.store.record(message, outputs, now)
        return kept

    def label(self, model: str, labels: Sequence[tuple[str, Any]], overwrite: bool,
              now: float) -> list[dict[str, str]]:
        """Each label's outcome, in order (monitoring.label_store.LabelStore.label)."""
        return [o.to_dict() for o in self.store.label(model, labels, overwrite, now)]
