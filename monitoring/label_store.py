"""The join store: served predictions (SQLite, beside the outbox) and the labels joined to them.

Each answered request of a profiled version is one row, keyed by (model, request id): its version,
when it was answered, its rows' predictions (the version's first 1-D output) and, for a classifier
that declares them, its class probabilities (a 2-D float output). Never its inputs. A label joins
to that row at most once (``overwrite`` replaces it) and is checked against the prediction: one
value per row, of the prediction's type, and a class index below the probabilities' width.

Bounds: a row is kept ``ttl_s`` after it was answered, and at most ``max_pending`` rows in all
(the oldest go first, labelled or not); every eviction is counted by model and reason (``ttl``,
``bound``, ``replaced``: a request id served again). The file survives a monitor restart.
Not thread-safe: the monitor uses it from its one worker thread.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from monitoring.columns import ColumnLayout
from vigil.core.prediction_messages import PredictionMessage

Outcome = Literal["joined", "unknown_id", "duplicate", "invalid"]
OUTCOMES: tuple[Outcome, ...] = ("joined", "unknown_id", "duplicate", "invalid")
EVICTION_REASONS = ("ttl", "bound", "replaced")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL,
    id TEXT NOT NULL,
    version TEXT NOT NULL,
    answered_at REAL NOT NULL,
    rows INTEGER NOT NULL,
    kind TEXT NOT NULL,            -- the prediction's type: int, float, bool or str
    prediction TEXT NOT NULL,      -- JSON: one value per row
    probabilities TEXT,            -- JSON: one list per row, or NULL
    label TEXT,                    -- JSON: one value per row, or NULL until labelled
    labelled_at REAL,
    PRIMARY KEY (model, id)
);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (answered_at);
CREATE INDEX IF NOT EXISTS predictions_by_version ON predictions (model, version, answered_at);
"""


@dataclass(frozen=True)
class Predictions:
    """Which outputs of a version are its prediction and its class probabilities."""

    prediction: str
    probabilities: str | None = None

    @classmethod
    def of(cls, layout: ColumnLayout | None, profiled: Iterable[str]) -> Predictions | None:
        """From the version's column layout and the output columns its profile declares: the
        first declared 1-D output, and the first declared 2-D output beside it; None when the
        profile declares no 1-D output (nothing to join a label to)."""
        if layout is None:
            return None
        declared = set(profiled)
        tensors = [t for t in layout.outputs if t.columns and set(t.columns) <= declared]
        one = [t.tensor for t in tensors if t.ndim == 1]
        two = [t.tensor for t in tensors if t.ndim == 2]
        if not one:
            return None
        return cls(one[0], two[0] if two else None)


@dataclass(frozen=True)
class LabelOutcome:
    id: str
    outcome: Outcome
    version: str = ""  # "" when the id is unknown
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        doc = {"id": self.id, "outcome": self.outcome, "version": self.version}
        if self.detail:
            doc["detail"] = self.detail
        return doc


@dataclass(frozen=True)
class JoinedRows:
    """The labelled rows of one version answered in a time range, and how many were served."""

    served_rows: int
    labelled_rows: int
    kind: str
    prediction: np.ndarray
    label: np.ndarray
    probabilities: np.ndarray | None  # rows x classes, when every labelled request had them
    last_answered_at: float | None  # the newest prediction in the range (labelled or not)


def _kind(array: np.ndarray) -> str | None:
    return {"i": "int", "u": "int", "f": "float", "b": "bool", "U": "str", "O": "str"}.get(
        array.dtype.kind)


class LabelStore:
    def __init__(self, path: Path, ttl_s: float, max_pending: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        # One thread uses it, but not the one that opens it (the replica's constructor).
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # No fsync: a monitor restart loses nothing (what was written is in the OS's cache), a
        # machine crash the last writes at most; the serving replicas on the node then never
        # share the disk with checkpoint fsyncs at ~1000 predictions a second.
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(_SCHEMA)
        self.size = int(self.db.execute("SELECT count(*) FROM predictions").fetchone()[0])
        self.labels: Counter[tuple[str, str, str]] = Counter()  # (model, version, outcome)
        self.evicted: Counter[tuple[str, str]] = Counter()  # (model, reason)
        self.skipped: Counter[tuple[str, str]] = Counter()  # (model, reason) records not kept

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ predictions in

    def record(self, message: PredictionMessage, outputs: Predictions | None, now: float) -> int:
        """Keep a message's requests (see the module docstring); returns how many were kept.
        Records without the declared prediction output are counted as skipped."""
        prediction = None if outputs is None else message.outputs.get(outputs.prediction)
        kind = None if prediction is None else _kind(prediction)
        if prediction is None or kind is None or prediction.ndim != 1:
            if message.requests:
                self.skipped[(message.model, "no_prediction")] += message.requests
            return 0
        assert outputs is not None
        probabilities = (message.outputs.get(outputs.probabilities)
                         if outputs.probabilities is not None and kind == "int" else None)
        if probabilities is not None and (probabilities.ndim != 2
                                          or probabilities.dtype.kind != "f"):
            probabilities = None
        bounds = np.concatenate([[0], np.cumsum(message.rows)])
        values = prediction.tolist()
        probas = probabilities.tolist() if probabilities is not None else None
        entries = []
        for i, request_id in enumerate(message.ids):
            start, stop = int(bounds[i]), int(bounds[i + 1])
            entries.append((
                message.model, request_id, message.version, float(message.answered_at[i]),
                stop - start, kind, json.dumps(values[start:stop]),
                None if probas is None else json.dumps(probas[start:stop]),
            ))
        with self.db:
            self.db.execute("BEGIN")
            replaced = self._count_existing(message.model, message.ids)
            self.db.executemany(
                "INSERT OR REPLACE INTO predictions (model, id, version, answered_at, rows, kind,"
                " prediction, probabilities, label, labelled_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)", entries)
        if replaced:
            self.evicted[(message.model, "replaced")] += replaced
        self.size += len(entries) - replaced
        self.evict(now)
        return len(entries)

    def _count_existing(self, model: str, ids: Sequence[str]) -> int:
        found = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            found += int(self.db.execute(
                f"SELECT count(*) FROM predictions WHERE model = ? AND id IN ({marks})",  # nosec B608
                (model, *chunk)).fetchone()[0])
        # The same id twice in one message: the later replaces the earlier too.
        return found + len(ids) - len(set(ids))

    def evict(self, now: float) -> int:
        """Drop what is past its TTL, then the oldest beyond max_pending; counted by reason."""
        dropped = 0
        expired = self.db.execute(
            "SELECT model, count(*) FROM predictions WHERE answered_at < ? GROUP BY model",
            (now - self.ttl_s,)).fetchall()
        if expired:
            self.db.execute("DELETE FROM predictions WHERE answered_at < ?", (now - self.ttl_s,))
            for model, n in expired:
                self.evicted[(model, "ttl")] += n
                dropped += n
        excess = self.size - dropped - self.max_pending
        if excess > 0:
            oldest = self.db.execute(
                "SELECT model, id FROM predictions ORDER BY answered_at LIMIT ?",
                (excess,)).fetchall()
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("DELETE FROM predictions WHERE model = ? AND id = ?", oldest)
            for model, _ in oldest:
                self.evicted[(model, "bound")] += 1
            dropped += len(oldest)
        self.size -= dropped
        return dropped

    # ------------------------------------------------------------------ labels in

    def label(self, model: str, items: Sequence[tuple[str, Any]], overwrite: bool,
              now: float) -> list[LabelOutcome]:
        """Join each (id, label) in order; each outcome counted by model, version, outcome."""
        results = []
        with self.db:
            self.db.execute("BEGIN")
            for request_id, value in items:
                result = self._label_one(model, request_id, value, overwrite, now)
                self.labels[(model, result.version, result.outcome)] += 1
                results.append(result)
        return results

    def _label_one(self, model: str, request_id: str, value: Any, overwrite: bool,
                   now: float) -> LabelOutcome:
        row = self.db.execute(
            "SELECT version, answered_at, rows, kind, probabilities, label IS NOT NULL"
            " FROM predictions WHERE model = ? AND id = ?", (model, request_id)).fetchone()
        if row is None or row[1] < now - self.ttl_s:
            return LabelOutcome(request_id, "unknown_id", "",
                                "never served, not recorded, or expired")
        version, _, rows, kind, probabilities, labelled = row
        if labelled and not overwrite:
            return LabelOutcome(request_id, "duplicate", version,
                                "already labelled; ?overwrite=true replaces the label")
        width = len(json.loads(probabilities)[0]) if probabilities else None
        values, problem = check_label(value, rows, kind, width)
        if problem is not None:
            return LabelOutcome(request_id, "invalid", version, problem)
        self.db.execute("UPDATE predictions SET label = ?, labelled_at = ? WHERE model = ? AND "
                        "id = ?", (json.dumps(values), now, model, request_id))
        return LabelOutcome(request_id, "joined", version)

    # ------------------------------------------------------------------ reading

    def pending(self) -> int:
        """Predictions held without a label."""
        return int(self.db.execute(
            "SELECT count(*) FROM predictions WHERE label IS NULL").fetchone()[0])

    def joined(self, model: str, version: str, start: float, end: float) -> JoinedRows:
        """The version's predictions answered in [start, end) and those of them labelled."""
        served, last = self.db.execute(
            "SELECT coalesce(sum(rows), 0), max(answered_at) FROM predictions WHERE model = ?"
            " AND version = ? AND answered_at >= ? AND answered_at < ?",
            (model, version, start, end)).fetchone()
        rows = self.db.execute(
            "SELECT kind, prediction, probabilities, label FROM predictions WHERE model = ? AND"
            " version = ? AND answered_at >= ? AND answered_at < ? AND label IS NOT NULL"
            " ORDER BY answered_at, id", (model, version, start, end)).fetchall()
        kind = rows[0][0] if rows else ""
        predictions: list = []
        labels: list = []
        probas: list | None = []
        for _, prediction, probabilities, label in rows:
            predictions += json.loads(prediction)
            labels += json.loads(label)
            if probas is not None and probabilities is not None:
                probas += json.loads(probabilities)
            else:
                probas = None
        dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}.get(kind, object)
        return JoinedRows(
            int(served), len(labels), kind, np.asarray(predictions, dtype=dtype),
            np.asarray(labels, dtype=dtype),
            np.asarray(probas, dtype=np.float64) if probas else None, last)


    def served_count(self, model: str, version: str, start: float, end: float) -> int:
        """Rows of class predictions of the version answered in [start, end)."""
        return int(self.db.execute(
            "SELECT coalesce(sum(rows), 0) FROM predictions WHERE model = ? AND version = ? AND"
            " answered_at >= ? AND answered_at < ? AND kind = 'int'",
            (model, version, start, end)).fetchone()[0])

    def served(self, model: str, version: str, start: float, end: float) -> ServedRows:
        """Every prediction of the version answered in [start, end), labelled or not, with its
        class probabilities (for estimating quality before labels: monitoring.cbpe); requests
        recorded without probabilities are counted in served_rows only."""
        found = self.db.execute(
            "SELECT rows, prediction, probabilities FROM predictions WHERE model = ? AND"
            " version = ? AND answered_at >= ? AND answered_at < ? AND kind = 'int'"
            " ORDER BY answered_at, id", (model, version, start, end)).fetchall()
        served = sum(rows for rows, _, _ in found)
        with_probabilities = [(p, q) for _, p, q in found if q is not None]
        # One JSON document of every request's lists, parsed at once (not one parse a request).
        predictions = json.loads("[" + ",".join(p[1:-1] for p, _ in with_probabilities
                                                if p != "[]") + "]")
        probas = json.loads("[" + ",".join(q[1:-1] for _, q in with_probabilities
                                           if q != "[]") + "]")
        return ServedRows(served, np.asarray(predictions, dtype=np.int64),
                          np.asarray(probas, dtype=np.float64) if probas else None)


    def labels_of(self, model: str, version: str, ids: Iterable[str]) -> dict[str, list]:
        """The labels (one value per row of the request) of those of `ids` that `version`
        answered and that are labelled; an id not found, of another version (served again
        since) or unlabelled is left out."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, list] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for request_id, label in self.db.execute(
                    "SELECT id, label FROM predictions WHERE model = ? AND version = ? AND label"
                    f" IS NOT NULL AND id IN ({marks})", (model, version, *chunk)):  # nosec B608
                found[request_id] = json.loads(label)
        return found

@dataclass(frozen=True)
class ServedRows:
    """A version's class predictions answered in a time range, with their probabilities."""

    served_rows: int  # every row of a class prediction in the range
    prediction: np.ndarray  # the rows that came with probabilities
    probabilities: np.ndarray | None  # rows x classes; None when no row had them


def check_label(value: Any, rows: int, kind: str,
                classes: int | None) -> tuple[list, str | None]:
    """The label as one value per row, or why it cannot be one for this prediction: a list of
    `rows` values, or one value for a one-row request; each of the prediction's type (`kind`),
    finite, and a class index below `classes` when the version declares probabilities."""
    values = value if isinstance(value, list) else [value]
    if len(values) != rows:
        return [], f"{len(values)} label values for a request of {rows} rows"
    for v in values:
        if kind == "int" and (not isinstance(v, int) or isinstance(v, bool)):
            return [], f"label {v!r} is not an integer, as the prediction is"
        if kind == "float" and (not isinstance(v, int | float) or isinstance(v, bool)
                                or not math.isfinite(v)):
            return [], f"label {v!r} is not a finite number, as the prediction is"
        if kind == "bool" and not isinstance(v, bool):
            return [], f"label {v!r} is not a boolean, as the prediction is"
        if kind == "str" and not isinstance(v, str):
            return [], f"label {v!r} is not a string, as the prediction is"
        if classes is not None and not 0 <= v < classes:
            return [], f"label {v!r} is not a class index (0 to {classes - 1})"
    return [float(v) if kind == "float" else v for v in values], None
