"""The monitor's side of feedback: served predictions into the join store, labels joined to them,
and each window's quality from its labelled rows.

Records arrive from the replicas like samples (vigil.core.prediction_messages); a record of a
version the monitor does not hold, or whose profile declares no 1-D prediction output, is not
kept and is counted (`vigil_feedback_skipped_total`): a label for it is then unknown_id.

A window's quality is computed from the predictions answered while it was open (by prediction
time, so a late label improves the window it belongs to), when it is read: the window JSON and
the scrape. It is `settled` once the window closed `feedback.settle_s` ago. Beside it: the
labelled and served rows, the coverage (labelled / served) and the reference quality, which the
model gate scored on the version's held-out set (model.yaml lineage.validation).

The rows endpoint (``rows_doc``) gives each sampled row of a window its ground-truth label when
the join store has one: sampled rows carry their request's id and their index in it
(vigil.core.messages), and a label holds one value per row of its request. Looked up when read,
so a label that arrived after the window closed is there.

Each closed window waits until it settled (``settle``): its quality is then computed once, kept
as the version's latest settled quality (the ``vigil_quality_settled`` gauges) and handed to the
alert engine's label rules. Waiting windows are kept as their summary (no statistics), at most
``MAX_WAITING`` per version, the oldest judged early (unsettled, and said so) past it; like
windows, they start again after a monitor restart.

Before labels arrive (and beside them once they do), a classifier whose profile holds a
calibration (fitted on its held-out set at publish time) has its accuracy, F1 and ROC AUC
estimated for each window from every prediction and class probabilities answered in it
(monitoring.cbpe): `estimated`, the window JSON's `estimated` and vigil_quality_estimated. A
closed window's estimate is computed once and kept (ESTIMATE_CACHE windows), recomputed only when
predictions of it arrive late or are evicted.
Not thread-safe: the monitor calls it from its one worker thread.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import Any

from monitoring.cbpe import ESTIMATED, Calibration, estimate
from monitoring.label_store import LabelStore, Predictions
from monitoring.labels_quality import classification_quality, regression_quality
from monitoring.service import MonitorService, ReportSource
from monitoring.version_state import VersionState
from monitoring.window import ClosedWindow, RowKeys
from vigil.core.messages import UnreadableMessage
from vigil.core.prediction_messages import read_predictions
from vigil.core.repository import read_manifest

GATE_NAMES = {"accuracy": "accuracy", "auc": "roc_auc", "rmse": "rmse"}  # gate -> ours
MAX_WAITING = 20_000  # windows per version waiting to settle (a day of 5 s windows)
Settled = tuple[str, str, ClosedWindow, dict[str, Any]]  # model, version, window, quality
# Replicas flush prediction records about a second after samples: a window is estimated for
# the alert rules this long after it closed.
ESTIMATE_DELAY_S = 10.0
ESTIMATE_CACHE = 1024  # windows whose estimate is kept (a few KB each)


class LabelJoin:
    def __init__(self, store: LabelStore, service: MonitorService, settle_s: float) -> None:
        self.store = store
        self.service = service
        self.settle_s = settle_s
        self._references: dict[tuple[str, str], dict[str, float]] = {}
        # Closed windows waiting for settle_s, oldest first, and each version's latest settled
        # window with its quality (both forgotten with the version).
        self.waiting: dict[tuple[str, str], deque[ClosedWindow]] = {}
        # Closed windows waiting ESTIMATE_DELAY_S for their last prediction records, then
        # estimated once for the alert rules (estimated_quality_drop).
        self.estimating: dict[tuple[str, str], deque[ClosedWindow]] = {}
        self.last_settled: dict[tuple[str, str], tuple[ClosedWindow, dict[str, Any]]] = {}
        service.window_listeners.append(self.closed)
        self._calibrations: dict[tuple[str, str], Calibration | str] = {}
        self._estimates: OrderedDict[tuple[str, str, float, float], tuple[int, dict[str, Any]]] \
            = OrderedDict()

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

    def row_labels(self, model: str, version: str, keys: RowKeys) -> list[Any]:
        """Each row's ground-truth label: the value at its position in its request's label;
        None where the row has no id, or its request (answered by `version`) no label."""
        found = self.store.labels_of(model, version,
                                     (i for i in set(keys.ids.tolist()) if i is not None))
        labels: list[Any] = []
        for request_id, at in zip(keys.ids.tolist(), keys.positions.tolist()):
            values = found.get(request_id) if request_id is not None else None
            labels.append(values[at] if values is not None and 0 <= at < len(values) else None)
        return labels

    def rows_doc(self, source: ReportSource, labelled_only: bool = False) -> dict[str, Any]:
        """GET /v1/models/{m}/rows: the window's sampled rows by profiled column and, aligned
        with them (never as columns), each row's request id and label (null: none); with
        `labelled_only`, the labelled rows alone. `labelled_rows` counts the window's labelled
        rows whichever rows are returned; `label_of` names the output the labels are the truth
        of (the profile's first 1-D output, as the join store keeps it)."""
        state, window, columns = source.state, source.window, dict(source.rows)
        rows = len(next(iter(columns.values()))) if columns else 0
        keys = source.keys if source.keys is not None else RowKeys.unknown(rows)
        labels = self.row_labels(state.model, state.version, keys)
        ids = keys.ids.tolist()
        labelled = [i for i, label in enumerate(labels) if label is not None]
        if labelled_only:
            columns = {name: values[labelled] for name, values in columns.items()}
            ids, labels = [ids[i] for i in labelled], [labels[i] for i in labelled]
        outputs = None
        if state.profile is not None:
            outputs = Predictions.of(state.layout, (c.name for c in state.profile.outputs))
        return {
            "model": state.model, "version": state.version,
            "window": {"index": window.index, "opened_at": window.opened_at,
                       "closed_at": window.closed_at, "rows": window.rows},
            "labelled": "only" if labelled_only else "all",
            "rows": len(ids), "labelled_rows": len(labelled),
            "label_of": None if outputs is None else outputs.prediction,
            "columns": {name: values.tolist() for name, values in columns.items()},
            "request_ids": ids, "labels": labels,
        }

    # ------------------------------------------------------------------ quality

    def quality(self, state: VersionState, opened_at: float, closed_at: float,
                now: float) -> dict[str, Any]:
        """The quality of the predictions `state` answered in [opened_at, closed_at)."""
        rows = self.store.joined(state.model, state.version, opened_at, closed_at)
        doc: dict[str, Any] = {
            "labelled_rows": rows.labelled_rows, "served_rows": rows.served_rows,
            "coverage": rows.labelled_rows / rows.served_rows if rows.served_rows else None,
            "settled": now - closed_at >= self.settle_s,
            "task": None, "metrics": {}, "classes": {},
            "reference": self.reference(state),
        }
        if rows.labelled_rows:
            if rows.kind == "float":
                doc["task"], doc["metrics"] = "regression", regression_quality(
                    rows.label, rows.prediction)
            else:
                metrics = classification_quality(rows.label, rows.prediction,
                                                 rows.probabilities)
                doc["classes"] = metrics.pop("classes")
                doc["task"], doc["metrics"] = "classification", metrics
        return doc

    def rollout_quality(self, model: str, version: str, start: float, end: float,
                        min_rows: int) -> float | None:
        """One figure of the version's quality on the labels joined so far for its predictions
        answered in [start, end), higher is better: accuracy for a classifier, R² for a
        regressor; None with fewer than `min_rows` labelled rows (a rollout's quality check,
        monitoring.rollout_checks)."""
        rows = self.store.joined(model, version, start, end)
        if rows.labelled_rows < min_rows:
            return None
        if rows.kind == "float":
            value = regression_quality(rows.label, rows.prediction)["r2"]
        else:
            value = classification_quality(rows.label, rows.prediction)["accuracy"]
        return None if value is None else float(value)

    def reference(self, state: VersionState) -> dict[str, float]:
        """What the model gate scored the version at on its held-out set ({} if never gated)."""
        key = (state.model, state.version)
        if key not in self._references:
            try:
                lineage = read_manifest(state.path).lineage
                scored = lineage.get("validation", {}).get("metrics", {}).get("candidate") or {}
            except Exception:  # noqa: BLE001 - a reference is optional; the window is not
                scored = {}
            self._references[key] = {GATE_NAMES[k]: float(v) for k, v in scored.items()
                                     if k in GATE_NAMES and isinstance(v, int | float)}
        return self._references[key]

    def closed(self, model: str, version: str, windows: list[ClosedWindow]) -> None:
        """Windows of a version closed: they wait to settle (their summary only)."""
        brief = [dataclasses.replace(w, result=None) for w in windows]
        self.waiting.setdefault((model, version), deque()).extend(brief)
        self.estimating.setdefault((model, version), deque()).extend(brief)

    def estimate_due(self, now: float, wanted: bool = True) -> list[Settled]:
        """The windows closed at least ESTIMATE_DELAY_S ago (their prediction records are in)
        since the last call, each with its quality estimated before labels (`estimated`), for
        the estimated_quality_drop rules; at most MAX_WAITING wait per version. Without
        `wanted` (no such rule) nothing is estimated and nothing waits."""
        for key in [k for k in self.estimating
                    if not wanted or k not in self.service.versions]:
            del self.estimating[key]
        due: list[Settled] = []
        for key, waiting in self.estimating.items():
            state = self.service.versions[key]
            while waiting and (now - waiting[0].closed_at >= ESTIMATE_DELAY_S
                               or len(waiting) > MAX_WAITING):
                window = waiting.popleft()
                due.append((*key, window, self.estimated(state, window.opened_at,
                                                         window.closed_at)))
        return due

    def settle(self, now: float) -> list[Settled]:
        """The windows that settled since the last call, oldest first per version, each with
        its quality (which becomes its version's latest settled one). A version the monitor
        released is forgotten; past MAX_WAITING the oldest windows are settled early."""
        for key in [k for k in self.waiting if k not in self.service.versions]:
            del self.waiting[key]
        for key in [k for k in self.last_settled if k not in self.service.versions]:
            del self.last_settled[key]
        for key in [k for k in self._references if k not in self.service.versions]:
            del self._references[key]
        for key in [k for k in self._calibrations if k not in self.service.versions]:
            del self._calibrations[key]
        settled: list[Settled] = []
        for key, waiting in self.waiting.items():
            state = self.service.versions[key]
            while waiting and (now - waiting[0].closed_at >= self.settle_s
                               or len(waiting) > MAX_WAITING):
                window = waiting.popleft()
                quality = self.quality(state, window.opened_at, window.closed_at, now)
                self.last_settled[key] = (window, quality)
                settled.append((*key, window, quality))
        return settled

    # ------------------------------------------------------------------ estimated quality

    def calibration(self, state: VersionState) -> Calibration | str:
        """The version's calibration (its profile's `calibration`), or why it has none usable."""
        key = (state.model, state.version)
        found = self._calibrations.get(key)
        if found is None:
            found = self._load_calibration(state)
            if len(self._calibrations) >= 2 * len(self.service.versions) + 16:
                self._calibrations = {k: v for k, v in self._calibrations.items()
                                      if k in self.service.versions}
            self._calibrations[key] = found
        return found

    @staticmethod
    def _load_calibration(state: VersionState) -> Calibration | str:
        if state.profile is None:
            return "no profile"
        doc = (state.profile.meta or {}).get("calibration")
        if not isinstance(doc, dict):
            return ("no calibration in the profile: a classifier with class probabilities "
                    "and a held-out set (metadata.evaluation) is calibrated when published")
        outputs = Predictions.of(state.layout, (c.name for c in state.profile.outputs))
        if outputs is None or outputs.probabilities != doc.get("output"):
            return (f"the calibration is of output {doc.get('output')!r}, which the join store "
                    "does not record as the class probabilities")
        try:
            return Calibration.from_dict(doc)
        except (ValueError, KeyError, TypeError) as exc:
            return f"unusable calibration: {exc}"

    def estimated(self, state: VersionState, opened_at: float,
                  closed_at: float) -> dict[str, Any]:
        """The quality of the predictions `state` answered in [opened_at, closed_at), estimated
        from their class probabilities alone (monitoring.cbpe): `metrics` (accuracy, f1 (binary),
        f1_macro, roc_auc; None where undefined), `rows` (those with probabilities) of
        `served_rows`, and `reference` (the same metrics realised on the held-out set the
        calibration was fitted on). `available` False with `reason` when the version has no
        usable calibration; `metrics` empty when the window has no such rows."""
        calibration = self.calibration(state)
        if isinstance(calibration, str):
            return {"available": False, "reason": calibration, "rows": 0, "served_rows": 0,
                    "metrics": {}, "reference": {}}
        key = (state.model, state.version, opened_at, closed_at)
        served = self.store.served_count(state.model, state.version, opened_at, closed_at)
        cached = self._estimates.get(key)
        if cached is not None and cached[0] == served:
            self._estimates.move_to_end(key)
            return {**cached[1]}
        rows = self.store.served(state.model, state.version, opened_at, closed_at)
        metrics: dict[str, Any] = {}
        counted = 0
        if rows.probabilities is not None and rows.probabilities.shape[1] == calibration.classes:
            counted = rows.prediction.size
            metrics = estimate(calibration, rows.prediction, rows.probabilities)
        doc = {"available": True, "reason": None, "rows": counted,
               "served_rows": rows.served_rows, "metrics": metrics,
               "reference": {k: v for k, v in (calibration.meta.get("reference") or {}).items()
                             if k in ESTIMATED}}
        self._estimates[key] = (served, doc)
        while len(self._estimates) > ESTIMATE_CACHE:
            self._estimates.popitem(last=False)
        return {**doc}

    def estimated_for(self, model: str, version: str, opened_at: float,
                      closed_at: float) -> dict[str, Any] | None:
        """`estimated` by names, for a caller that holds no VersionState (an alert condition
        on a closed window: window.opened_at, window.closed_at); None for a version the monitor
        does not hold. Predictions flushed after the window closed count when read again."""
        state = self.service.versions.get((model, version))
        return None if state is None else self.estimated(state, opened_at, closed_at)

    def latest_estimated(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(model, version, estimate) of each calibrated version's latest closed window, for
        the scrape (versions without a calibration are left out)."""
        found = []
        for state in list(self.service.versions.values()):
            window = state.window.latest
            if window is not None and not isinstance(self.calibration(state), str):
                found.append((state.model, state.version,
                              self.estimated(state, window.opened_at, window.closed_at)))
        return found

    def add_to(self, doc: dict[str, Any], now: float) -> dict[str, Any]:
        """The drift JSON (MonitorService.drift_doc) with each window's `labels` quality and,
        beside it, its `estimated` quality."""
        state = self.service.state(doc["model"], doc["version"])
        for window in ([doc["latest"]] if doc.get("latest") else []) + doc.get("windows", []):
            window["labels"] = self.quality(state, window["opened_at"], window["closed_at"], now)
            window["estimated"] = self.estimated(state, window["opened_at"],
                                                 window["closed_at"])
        return doc

    def latest(self, now: float) -> list[tuple[str, str, dict[str, Any]]]:
        """(model, version, quality) of each version's latest closed window, for the scrape."""
        found = []
        for state in list(self.service.versions.values()):
            window = state.window.latest
            if window is not None:
                found.append((state.model, state.version,
                              self.quality(state, window.opened_at, window.closed_at, now)))
        return found
