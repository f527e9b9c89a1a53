"""A replica's bounded buffer of sampled rows and per-request facts, drained for the monitor."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vigil.core.messages import MAX_ID_LENGTH, SampleMessage, Tensors


@dataclass
class _VersionBuffer:
    max_rows: int
    max_requests: int
    # (rows, inputs, outputs, request id or None, positions in the request or None: all rows)
    chunks: deque = field(default_factory=deque)
    rows: int = 0
    latency: np.ndarray = field(init=False)
    status: np.ndarray = field(init=False)
    facts: int = 0  # facts written since the last drain (may exceed max_requests: ring)
    dropped_rows: int = 0
    agreeing_rows: int = 0  # shadow rows that agreed with production, since the last drain
    compared_rows: int = 0

    def __post_init__(self) -> None:
        self.latency = np.zeros(self.max_requests, dtype=np.float64)
        self.status = np.zeros(self.max_requests, dtype=np.int16)


class SampleBuffer:
    """Never blocks and never grows past its bounds: when full it drops the oldest rows (and
    the oldest request facts) and counts what it dropped. Rows are sampled one by one (each with
    probability `sample_rate`) and one request gives at most `max_rows_per_request` of them, so a
    single large request cannot crowd out every other client's rows. Kept rows are copies: a
    request's arrays (or the batch output they are views of) are never pinned by the buffer.
    A request's rows keep its id (one reference per request, not per row) and their positions
    in it, so that the monitor can find their ground-truth labels later.
    Not thread-safe: the replica's event loop is its only user."""

    def __init__(
        self,
        sample_rate: float,
        max_rows: int,
        max_requests: int,
        max_rows_per_request: int = 100,
        seed: int | None = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.max_rows = max_rows
        self.max_requests = max_requests
        self.max_rows_per_request = max_rows_per_request
        self._buffers: dict[tuple[str, str], _VersionBuffer] = {}
        self._rng = np.random.default_rng(seed)

    @property
    def versions(self) -> int:
        """How many versions have a buffer now."""
        return len(self._buffers)

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
        agreement: tuple[int, int] | None = None,
        request_id: str | None = None,
    ) -> None:
        """One request's facts, and its rows when given and sampled. `agreement`: for a run
        as the model's shadow, (agreeing, compared) rows of its outputs against production's
        answer (serving.agreement); summed until the next drain, whatever rows are sampled.
        `request_id`: the id its rows carry (one longer than MAX_ID_LENGTH is left out: it
        can never be labelled)."""
        if agreement is not None:
            agreeing, compared = (int(n) for n in agreement)
            if not 0 <= agreeing <= compared:
                raise ValueError(f"agreement {agreement!r}: expected 0 <= agreeing <= compared")
        buf = self._buffer(model, version)
        slot = buf.facts % self.max_requests
        buf.latency[slot] = latency_s
        buf.status[slot] = status
        buf.facts += 1
        if agreement is not None:
            buf.agreeing_rows += agreeing
            buf.compared_rows += compared
        if inputs is None or outputs is None:
            return
        rows = _common_rows(inputs, outputs)
        if rows is None:  # no shared row axis (a model that is not row-wise): facts only
            return
        picked = self._pick(rows)
        if picked is not None and not picked.size:
            return
        if buf.chunks and not _same_layout(buf.chunks[0], inputs, outputs):
            # Rows of another width (dynamic non-batch dims) cannot be stacked with the rest.
            buf.dropped_rows += rows if picked is None else int(picked.size)
            return
        if picked is None:  # every row: copies, so the buffer never pins the request's arrays
            inputs = {k: v.copy() for k, v in inputs.items()}
            outputs = {k: v.copy() for k, v in outputs.items()}
        else:  # fancy indexing copies
            inputs = {k: v[picked] for k, v in inputs.items()}
            outputs = {k: v[picked] for k, v in outputs.items()}
            rows = int(picked.size)
        if request_id is not None and len(request_id) > MAX_ID_LENGTH:
            request_id = None
        buf.chunks.append((rows, inputs, outputs, request_id, picked))
        buf.rows += rows
        self._trim(buf)

    def _trim(self, buf: _VersionBuffer) -> None:
        """Drop the oldest rows past max_rows (counted), keeping the newest of a split chunk."""
        while buf.rows > self.max_rows:
            old_rows, old_in, old_out, old_id, old_at = buf.chunks.popleft()
            excess = buf.rows - self.max_rows
            if excess < old_rows:  # keep the newest rows of the oldest chunk
                keep = old_rows - excess
                at = np.arange(old_rows) if old_at is None else old_at
                buf.chunks.appendleft(
                    (keep, {k: v[-keep:] for k, v in old_in.items()},
                     {k: v[-keep:] for k, v in old_out.items()}, old_id, at[-keep:])
                )
                old_rows = excess
            buf.rows -= old_rows
            buf.dropped_rows += old_rows

    def agreed(self, model: str, version: str, agreement: tuple[int, int]) -> None:
        """(agreeing, compared) rows of a request `version` answered, against production's answer
        to the same inputs (a canary's, off the response path): counted for `version`'s window
        without a request fact of its own (the request was accounted when it was answered)."""
        agreeing, compared = (int(n) for n in agreement)
        if not 0 <= agreeing <= compared:
            raise ValueError(f"agreement {agreement!r}: expected 0 <= agreeing <= compared")
        buf = self._buffer(model, version)
        buf.agreeing_rows += agreeing
        buf.compared_rows += compared

    def _pick(self, rows: int) -> np.ndarray | None:
        """Indices of the rows to keep, in order; None for all of them."""
        cap = min(self.max_rows_per_request, self.max_rows)
        if self.sample_rate >= 1.0:
            if rows <= cap:
                return None
            return np.sort(self._rng.choice(rows, cap, replace=False))
        picked = np.flatnonzero(self._rng.random(rows) < self.sample_rate)
        if picked.size > cap:
            picked = np.sort(self._rng.choice(picked, cap, replace=False))
        return picked

    def drain(self) -> list[SampleMessage]:
        """Everything buffered, as one batch per model version; the buffer starts empty. A
        version that had nothing since the previous drain loses its buffer (its arrays are
        max_requests long): a retired, unloaded or idle version holds no memory here, and the
        buffers in use are those of versions with traffic lately."""
        batches = []
        for (model, version), buf in list(self._buffers.items()):
            if buf.facts == 0 and not buf.chunks and not buf.compared_rows:
                del self._buffers[(model, version)]
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
            ids, counts, positions = _request_ids(buf.chunks)
            batches.append(
                SampleMessage(
                    model, version, inputs, outputs, latency, status,
                    dropped_rows=buf.dropped_rows, dropped_requests=dropped_requests,
                    agreeing_rows=buf.agreeing_rows, compared_rows=buf.compared_rows,
                    request_ids=ids, request_rows=counts, row_positions=positions,
                )
            )
            buf.chunks.clear()
            buf.rows = buf.facts = buf.dropped_rows = buf.agreeing_rows = buf.compared_rows = 0
        return batches


def _common_rows(inputs: Tensors, outputs: Tensors) -> int | None:
    """The row count every tensor shares along axis 0, or None."""
    rows = None
    for array in (*inputs.values(), *outputs.values()):
        if array.ndim == 0 or (rows is not None and array.shape[0] != rows):
            return None
        rows = array.shape[0]
    return rows


def _same_layout(chunk: tuple, inputs: Tensors, outputs: Tensors) -> bool:
    """Whether the rows stack with the chunk's: the same names, each of the same row shape.
    Plain loops: this runs for every sampled request, and generators cost more than the test."""
    first_in, first_out = chunk[1], chunk[2]
    for first, new in ((first_in, inputs), (first_out, outputs)):
        if first.keys() != new.keys():
            return False
        for name, array in new.items():
            if first[name].shape[1:] != array.shape[1:]:
                return False
    return True


def _request_ids(chunks: deque) -> tuple[tuple[str | None, ...], np.ndarray | None,
                                         np.ndarray | None]:
    """The chunks' request ids, rows per id and each row's position in its request; all empty
    when no chunk has an id (the message then carries none)."""
    ids = tuple(c[3] for c in chunks)
    if not any(i is not None for i in ids):
        return (), None, None
    counts = np.fromiter((c[0] for c in chunks), dtype=np.int64, count=len(chunks))
    # Every row of a chunk kept whole is at its index in the request: one vectorized pass (no
    # array per chunk: a second of one-row requests is a thousand chunks), then the chunks
    # whose rows were picked get their indices.
    starts = np.cumsum(counts) - counts
    positions = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
    for start, chunk in zip(starts.tolist(), chunks):
        if chunk[4] is not None:
            positions[start:start + chunk[0]] = chunk[4]
    return ids, counts, positions


def _stack(chunks: deque) -> tuple[Tensors, Tensors]:
    if not chunks:
        return {}, {}
    first_in, first_out = chunks[0][1], chunks[0][2]
    inputs = {k: np.concatenate([c[1][k] for c in chunks]) for k in first_in}
    outputs = {k: np.concatenate([c[2][k] for c in chunks]) for k in first_out}
    return inputs, outputs
