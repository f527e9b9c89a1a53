"""A replica's bounded buffer of sampled rows and per-request facts, drained for the monitor."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class SampleBatch:
    """What one replica hands the monitor for one model version since the last flush."""

    model: str
    version: str
    inputs: Tensors  # rows stacked along axis 0
    outputs: Tensors
    latency_s: np.ndarray  # float64, one per request (every request, sampled or not)
    status: np.ndarray  # int16 HTTP status, one per request
    dropped_rows: int  # rows dropped since the last flush because the buffer was full
    dropped_requests: int

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0]) if self.inputs else 0

    def to_message(self) -> dict:
        """The plain form the monitor's `ingest` takes (no Vigil types cross the wire)."""
        return {
            "model": self.model,
            "version": self.version,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "latency_s": self.latency_s,
            "status": self.status,
            "dropped_rows": self.dropped_rows,
            "dropped_requests": self.dropped_requests,
        }


@dataclass
class _VersionBuffer:
    max_rows: int
    max_requests: int
    chunks: deque = field(default_factory=deque)  # (rows, inputs, outputs)
    rows: int = 0
    latency: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    facts: int = 0  # facts written since the last drain (may exceed max_requests: ring)
    dropped_rows: int = 0

    def __post_init__(self) -> None:
        self.latency = np.zeros(self.max_requests, dtype=np.float64)
        self.status = np.zeros(self.max_requests, dtype=np.int16)


class SampleBuffer:
    """Never blocks and never grows past its bounds: when full it drops the oldest rows (and
    the oldest request facts) and counts what it dropped. Not thread-safe: the replica's event
    loop is its only user."""

    def __init__(
        self, sample_rate: float, max_rows: int, max_requests: int, seed: int | None = None
    ) -> None:
        self.sample_rate = sample_rate
        self.max_rows = max_rows
        self.max_requests = max_requests
        self._buffers: dict[tuple[str, str], _VersionBuffer] = {}
        self._random = random.Random(seed)
        self.total_dropped_rows = 0
        self.total_dropped_requests = 0

    def _buffer(self, model: str, version: str) -> _VersionBuffer:
        key = (model, version)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _VersionBuffer(self.max_rows, self.max_requests)
        return buf

    def record(
        self,
        model: str,
        version: str,
        latency_s: float,
        status: int,
        inputs: Tensors | None = None,
        outputs: Tensors | None = None,
    ) -> None:
        """One request's facts, and its rows when given and sampled."""
        buf = self._buffer(model, version)
        slot = buf.facts % self.max_requests
        buf.latency[slot] = latency_s
        buf.status[slot] = status
        buf.facts += 1
        if inputs is None or outputs is None:
            return
        if self.sample_rate < 1.0 and self._random.random() >= self.sample_rate:
            return
        rows = int(next(iter(inputs.values())).shape[0])
        if buf.chunks and not _same_layout(buf.chunks[0], inputs, outputs):
            # Rows of another width (dynamic non-batch dims) cannot be stacked with the rest.
            buf.dropped_rows += rows
            return
        if rows > self.max_rows:  # larger than the whole buffer: keep its last rows
            inputs = {k: v[-self.max_rows :] for k, v in inputs.items()}
            outputs = {k: v[-self.max_rows :] for k, v in outputs.items()}
            buf.dropped_rows += rows - self.max_rows
            rows = self.max_rows
        buf.chunks.append((rows, inputs, outputs))
        buf.rows += rows
        while buf.rows > self.max_rows:
            old_rows, _, _ = buf.chunks.popleft()
            buf.rows -= old_rows
            buf.dropped_rows += old_rows

    def drain(self) -> list[SampleBatch]:
        """Everything buffered, as one batch per model version; the buffer starts empty."""
        batches = []
        for (model, version), buf in self._buffers.items():
            if buf.facts == 0 and not buf.chunks:
                continue
            kept = min(buf.facts, self.max_requests)
            dropped_requests = buf.facts - kept
            if buf.facts <= self.max_requests:
                latency, status = buf.latency[:kept].copy(), buf.status[:kept].copy()
            else:  # the ring wrapped: oldest first
                start = buf.facts % self.max_requests
                latency = np.roll(buf.latency, -start).copy()
                status = np.roll(buf.status, -start).copy()
            inputs, outputs = _stack(buf.chunks)
            batches.append(
                SampleBatch(
                    model, version, inputs, outputs, latency, status, buf.dropped_rows,
                    dropped_requests,
                )
            )
            self.total_dropped_rows += buf.dropped_rows
            self.total_dropped_requests += dropped_requests
            buf.chunks.clear()
            buf.rows = buf.facts = buf.dropped_rows = 0
        return batches


def _same_layout(chunk: tuple, inputs: Tensors, outputs: Tensors) -> bool:
    _, first_in, first_out = chunk
    return all(
        first.keys() == new.keys() and all(first[k].shape[1:] == new[k].shape[1:] for k in new)
        for first, new in ((first_in, inputs), (first_out, outputs))
    )


def _stack(chunks: deque) -> tuple[Tensors, Tensors]:
    if not chunks:
        return {}, {}
    first_in, first_out = chunks[0][1], chunks[0][2]
    inputs = {k: np.concatenate([c[1][k] for c in chunks]) for k in first_in}
    outputs = {k: np.concatenate([c[2][k] for c in chunks]) for k in first_out}
    return inputs, outputs
