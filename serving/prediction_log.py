"""A replica's bounded log of answered requests (id, time, outputs) for the monitor's join store."""

from __future__ import annotations

from collections import deque

import numpy as np

from vigil.core.messages import Tensors
from vigil.core.prediction_messages import MAX_ID_LENGTH, PredictionMessage


class PredictionLog:
    """Every answered request of a profiled version, until the next flush: its id, when it was
    answered and its outputs (copies, so that a batch's output arrays are never pinned); never
    its inputs. At most `max_requests` records in all: past it the oldest are dropped and
    counted per version. Not thread-safe: the replica's event loop is its only user."""

    def __init__(self, max_requests: int) -> None:
        self.max_requests = max_requests
        self._records: deque[tuple[str, str, str, float, int, Tensors]] = deque()
        self._dropped: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def record(self, model: str, version: str, request_id: str, answered_at: float,
               outputs: Tensors) -> bool:
        """Keep one request's record; False (and nothing kept, nothing counted) when it cannot
        be labelled: an id too long, or outputs without one shared row axis."""
        if len(request_id) > MAX_ID_LENGTH:
            return False
        rows = None
        for array in outputs.values():
            if array.ndim == 0 or array.ndim > 2 or (rows is not None and array.shape[0] != rows):
                return False
            rows = array.shape[0]
        if rows is None:
            return False
        copies = {name: array.copy() for name, array in outputs.items()}
        self._records.append((model, version, request_id, answered_at, rows, copies))
        if len(self._records) > self.max_requests:
            old = self._records.popleft()
            self._count_dropped(old[0], old[1])
        return True

    def _count_dropped(self, model: str, version: str, n: int = 1) -> None:
        key = (model, version)
        self._dropped[key] = self._dropped.get(key, 0) + n

    def drain(self) -> list[PredictionMessage]:
        """Every record, as one message per version (records whose outputs cannot be stacked
        with their version's first are dropped and counted); the log starts empty."""
        grouped: dict[tuple[str, str], list[tuple[str, float, int, Tensors]]] = {}
        for model, version, request_id, at, rows, kept_outputs in self._records:
            grouped.setdefault((model, version), []).append((request_id, at, rows, kept_outputs))
        self._records.clear()
        dropped, self._dropped = self._dropped, {}
        messages = []
        for key in sorted(set(grouped) | set(dropped)):
            kept = _stackable(grouped.get(key, []))
            lost = dropped.get(key, 0) + len(grouped.get(key, [])) - len(kept)
            outputs: Tensors = {}
            if kept:
                outputs = {name: np.concatenate([r[3][name] for r in kept]) for name in kept[0][3]}
            messages.append(PredictionMessage(
                key[0], key[1], tuple(r[0] for r in kept),
                np.array([r[1] for r in kept], dtype=np.float64),
                np.array([r[2] for r in kept], dtype=np.int64), outputs, dropped=lost))
        return messages


def _stackable(records: list[tuple[str, float, int, Tensors]]) -> list:
    """The records whose outputs have the first one's names and row shapes."""
    if not records:
        return []
    first = {name: array.shape[1:] for name, array in records[0][3].items()}
    return [r for r in records
            if r[3].keys() == first.keys()
            and all(a.shape[1:] == first[n] for n, a in r[3].items())]
