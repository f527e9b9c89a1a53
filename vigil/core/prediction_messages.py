"""The replica-to-monitor record of served predictions that labels are later joined to.

A serving replica builds one ``PredictionMessage`` per model version at each flush (beside its
sample messages) and the monitor reads it only through ``read_predictions``, which says why it
cannot. It carries, per answered request, the request id, when it was answered (Unix seconds)
and how many rows it had, and the request's outputs stacked along axis 0; never its inputs.
Bump ``SCHEMA_VERSION`` on any change of fields or meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.core.messages import MAX_ID_LENGTH, Tensors, UnreadableMessage

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class PredictionMessage:
    """Answered requests of one model version: ``ids[i]`` was answered at ``answered_at[i]``
    with ``rows[i]`` rows, which are rows ``offset(i) .. offset(i) + rows[i]`` of ``outputs``."""

    model: str
    version: str
    ids: tuple[str, ...]
    answered_at: np.ndarray  # float64 Unix seconds, one per request
    rows: np.ndarray  # int64, one per request
    outputs: Tensors
    dropped: int = 0  # records the replica dropped for this version since its last flush
    schema_version: int = SCHEMA_VERSION

    @property
    def requests(self) -> int:
        return len(self.ids)


def read_predictions(raw: Any) -> PredictionMessage:
    """The message, checked field by field; UnreadableMessage says why it cannot be read."""
    if not isinstance(raw, PredictionMessage):
        raise UnreadableMessage("not_a_message",
                                f"expected a PredictionMessage, got {type(raw).__name__}")
    if getattr(raw, "schema_version", None) != SCHEMA_VERSION:
        raise UnreadableMessage("schema_version", f"schema version {raw.schema_version!r}; this "
                                f"monitor reads {SCHEMA_VERSION}")
    problem = _problem(raw)
    if problem is not None:
        raise UnreadableMessage("malformed", problem)
    return raw


def _problem(m: PredictionMessage) -> str | None:
    for field in ("model", "version"):
        value = getattr(m, field)
        if not isinstance(value, str) or not value:
            return f"{field} must be a non-empty string, got {value!r}"
    if not isinstance(m.ids, tuple) or not all(
            isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH for i in m.ids):
        return f"ids must be a tuple of strings of 1 to {MAX_ID_LENGTH} characters"
    n = len(m.ids)
    for field, kind in (("answered_at", "f"), ("rows", "i")):
        array = getattr(m, field)
        if not isinstance(array, np.ndarray) or array.shape != (n,) or array.dtype.kind != kind:
            return f"{field} must be a 1-D array of {n} values of kind {kind!r}"
    if n and int(m.rows.min()) < 0:
        return "negative row counts"
    if not isinstance(m.outputs, Mapping):
        return "outputs must be a mapping of name to array"
    total = int(m.rows.sum()) if n else 0
    for name, array in m.outputs.items():
        if not isinstance(name, str) or not isinstance(array, np.ndarray) or array.ndim < 1:
            return f"outputs[{name!r}] must be an array with a row axis"
        if array.shape[0] != total:
            return f"outputs[{name!r}] has {array.shape[0]} rows, the requests {total}"
    if not isinstance(m.dropped, int) or m.dropped < 0:
        return f"dropped must be a non-negative integer, got {m.dropped!r}"
    return None
