"""The replica-to-monitor message: one typed, versioned schema that both ends import.

A serving replica builds a ``SampleMessage`` per model version at each flush and hands a list of
them to the Monitor deployment (Ray pickles them on the way). The monitor reads a message only
through ``read_message``, which says why it cannot when it cannot, so nothing malformed is
silently relabelled. Bump ``SCHEMA_VERSION`` on any change of fields or meaning; a monitor drops
(and counts) messages of a version it does not read rather than misreading them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCHEMA_VERSION = 3  # 2: agreeing_rows and compared_rows (shadow agreement); 3: request ids
MAX_ID_LENGTH = 256  # longest request id carried (a longer one is never labelled)

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class SampleMessage:
    """One replica's sampled rows and request facts for one model version since its last flush.

    ``inputs`` and ``outputs`` hold the sampled rows stacked along axis 0 (copies, never views of
    a request's arrays); ``latency_s`` (float64 seconds) and ``status`` (HTTP status, 499 for a
    request cancelled before it was answered) have one entry per request, sampled or not.
    ``agreeing_rows`` of ``compared_rows`` are the rows of this version's requests (it runs as a
    model's shadow) whose outputs agreed with production's answer (serving.agreement).

    Which request each sampled row came from, so that the monitor can find its ground-truth
    label (monitoring.label_join): ``request_ids[i]`` is the id of the i-th sampled request
    (None: it had none, e.g. feedback off or gRPC), whose ``request_rows[i]`` sampled rows come
    next in ``inputs``/``outputs``, in order; ``row_positions`` gives each sampled row's index
    in its own request (a label carries one value per row of the request, and only some rows
    of a request may be sampled). One id per request, not per row: the message stays small.
    All three empty (their defaults): the rows carry no ids at all."""

    model: str
    version: str
    inputs: Tensors
    outputs: Tensors
    latency_s: np.ndarray
    status: np.ndarray
    dropped_rows: int = 0  # sampled rows the replica dropped since its last flush (buffer full)
    dropped_requests: int = 0  # request facts the replica dropped (buffer full)
    agreeing_rows: int = 0  # shadow rows whose outputs agreed with production's
    compared_rows: int = 0  # shadow rows compared with production's (agreeing ones included)
    request_ids: tuple[str | None, ...] = ()  # one per sampled request, in row order
    request_rows: np.ndarray | None = None  # int64: sampled rows of each of those requests
    row_positions: np.ndarray | None = None  # int64, one per sampled row: its index in its request
    schema_version: int = SCHEMA_VERSION

    @property
    def rows(self) -> int:
        """Sampled rows carried (0 for facts only)."""
        for array in (*self.inputs.values(), *self.outputs.values()):
            return int(array.shape[0]) if array.ndim else 0
        return 0

    @property
    def requests(self) -> int:
        return int(self.latency_s.size)


class UnreadableMessage(ValueError):
    """A message the monitor cannot read. ``reason`` is a short label for metrics (one of
    REASONS); the message text says what exactly was wrong."""

    REASONS = ("not_a_message", "schema_version", "malformed")

    def __init__(self, reason: str, detail: str, rows: int = 0, requests: int = 0) -> None:
        super().__init__(detail)
        self.reason = reason
        self.rows = rows  # what the message claimed to carry, for the drop counters
        self.requests = requests


def read_message(raw: Any) -> SampleMessage:
    """The message, checked field by field; UnreadableMessage says why it cannot be read."""
    if not isinstance(raw, SampleMessage):
        raise UnreadableMessage("not_a_message", f"expected a SampleMessage, got {type(raw).__name__}")
    rows, requests = _claimed_size(raw)
    # getattr: a message pickled by a replica of another release may lack fields of this one
    schema_version = getattr(raw, "schema_version", None)
    if schema_version != SCHEMA_VERSION:
        raise UnreadableMessage(
            "schema_version",
            f"schema version {schema_version!r}; this monitor reads {SCHEMA_VERSION}",
            rows, requests,
        )
    problem = _problem(raw)
    if problem is not None:
        raise UnreadableMessage("malformed", problem, rows, requests)
    return raw


def _problem(m: SampleMessage) -> str | None:
    for field in ("model", "version"):
        value = getattr(m, field)
        if not isinstance(value, str) or not value:
            return f"{field} must be a non-empty string, got {value!r}"
    for field in ("dropped_rows", "dropped_requests", "agreeing_rows", "compared_rows"):
        value = getattr(m, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{field} must be a non-negative integer, got {value!r}"
    if m.agreeing_rows > m.compared_rows:
        return f"{m.agreeing_rows} agreeing rows of only {m.compared_rows} compared"
    if not isinstance(m.latency_s, np.ndarray) or m.latency_s.ndim != 1 or m.latency_s.dtype.kind != "f":
        return "latency_s must be a 1-D float array"
    if not isinstance(m.status, np.ndarray) or m.status.ndim != 1 or m.status.dtype.kind not in "iu":
        return "status must be a 1-D integer array"
    if m.latency_s.size != m.status.size:
        return f"{m.latency_s.size} latencies but {m.status.size} status codes"
    if np.any(m.latency_s < 0):
        return "negative latencies"
    rows: set[int] = set()
    for field in ("inputs", "outputs"):
        tensors = getattr(m, field)
        if not isinstance(tensors, Mapping):
            return f"{field} must be a mapping of name to array"
        for name, array in tensors.items():
            if not isinstance(name, str) or not isinstance(array, np.ndarray) or array.ndim < 1:
                return f"{field}[{name!r}] must be an array with a row axis"
            rows.add(int(array.shape[0]))
    if len(rows) > 1:
        return f"tensors disagree on the number of rows: {sorted(rows)}"
    return _ids_problem(m, rows.pop() if rows else 0)


def _ids_problem(m: SampleMessage, rows: int) -> str | None:
    """Whether request_ids, request_rows and row_positions say, together, where each of the
    `rows` sampled rows came from (or are all empty: no ids)."""
    ids, counts, positions = m.request_ids, m.request_rows, m.row_positions
    if not isinstance(ids, tuple):
        return "request_ids must be a tuple"
    if not ids and counts is None and positions is None:
        return None
    if not all(i is None or (isinstance(i, str) and 0 < len(i) <= MAX_ID_LENGTH) for i in ids):
        return f"request_ids must be None or strings of 1 to {MAX_ID_LENGTH} characters"
    if (not isinstance(counts, np.ndarray) or counts.shape != (len(ids),)
            or counts.dtype.kind not in "iu"):
        return f"request_rows must be a 1-D integer array of {len(ids)} counts (one per id)"
    if len(ids) and int(counts.min()) < 1:
        return "request_rows must count at least one row per request"
    if int(counts.sum()) != rows:
        return f"request_rows add up to {int(counts.sum())} rows, the tensors hold {rows}"
    if (not isinstance(positions, np.ndarray) or positions.shape != (rows,)
            or positions.dtype.kind not in "iu"):
        return f"row_positions must be a 1-D integer array of {rows} positions (one per row)"
    if rows and int(positions.min()) < 0:
        return "negative row positions"
    return None


def _claimed_size(m: SampleMessage) -> tuple[int, int]:
    """Rows and requests a message says it carries, read defensively (for drop counters)."""
    try:
        requests = int(np.size(m.latency_s))
    except Exception:  # noqa: BLE001 - whatever it holds, the message is dropped
        requests = 0
    try:
        rows = max((int(np.shape(a)[0]) for a in (*m.inputs.values(), *m.outputs.values())
                    if np.ndim(a)), default=0)
    except Exception:  # noqa: BLE001
        rows = 0
    return rows, requests
