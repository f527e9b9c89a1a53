"""Row-aware request batching: stack requests along the batch axis, run once, split back."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.settings import BatchSettings

Tensors = dict[str, np.ndarray]
RUN_TIME_WEIGHT = 0.2  # of the newest run in the moving average of run times
INLINE_MAX_ROWS = 64  # a larger request may run far longer than the average: never inline


class BatchObserver(Protocol):
    """Receives batching facts (the replica's metrics implement this)."""

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None: ...

    def request_queued(self, wait_seconds: float) -> None: ...


@dataclass(slots=True)
class _Pending:
    inputs: Tensors
    rows: int
    key: tuple
    future: asyncio.Future
    enqueued: float


def _stack_key(inputs: Tensors) -> tuple:
    # Requests stack only when every input agrees on dtype and on the non-batch dims.
    return tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class RowBatcher:
    """Queues validated requests for one model version and runs them in batches of at most
    `max_batch_rows` rows, one batch at a time, on a thread of its own.

    Only a version that declares batching (`declared_max_rows` > 0, model.yaml max_batch_rows)
    is ever stacked: for any other, every request runs alone, because nothing says its rows are
    independent. The live cap is the smaller of the declaration and the deployment's
    user_config; a request larger than the cap runs alone.

    No fixed wait: a batch takes whatever is queued when the previous one finishes. It waits
    up to `batch_wait_timeout_s` for more rows only when the previous batch held several
    requests, that is when concurrent traffic makes more arrivals likely."""

    def __init__(
        self,
        run: Callable[[Tensors], Tensors],
        settings: BatchSettings,
        declared_max_rows: int,
        observer: BatchObserver | None = None,
        thread_name: str = "vigil-batch",
    ) -> None:
        self._run = run
        self.declared_max_rows = declared_max_rows
        self.settings = settings
        self._observer = observer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._arrival = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._last_batch_requests = 0
        self._mean_run_s: float | None = None  # unknown until a run on the thread was timed
        self._alone_running = 0

    def reconfigure(self, settings: BatchSettings) -> None:
        """Takes effect from the next batch; queued requests are kept."""
        self.settings = settings

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def idle(self) -> bool:
        """Nothing queued, and no run on its way (whatever thread asks: each part is one read)."""
        return (not self._queue and self._alone_running == 0
                and (self._worker is None or self._worker.done()))

    @property
    def max_rows(self) -> int:
        """Most rows one batch may hold now; 0 when requests never share a run."""
        if not self.settings.enabled:
            return 0
        return min(self.declared_max_rows, self.settings.max_batch_rows)

    async def submit(self, inputs: Tensors, rows: int, alone: bool = True) -> Tensors:
        """Run one request's inputs (already validated); returns its own outputs. `alone`: the
        caller has no other request in flight (only then may it run inline: under concurrent
        load, requests must meet in the queue to share runs)."""
        if alone and rows <= INLINE_MAX_ROWS and self._can_run_inline():
            return self._run_inline(inputs, rows)
        if rows >= self.max_rows:
            return await self._run_alone(inputs, rows)
        loop = asyncio.get_running_loop()
        pending = _Pending(
            inputs, rows, _stack_key(inputs), loop.create_future(), time.perf_counter()
        )
        self._queue.append(pending)
        self._queued_rows += rows
        self._arrival.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        return await pending.future

    def _can_run_inline(self) -> bool:
        """Nothing queued or running, and the model is fast: a thread hop would cost more than
        the run, and no other request can be waiting on this event loop for it."""
        limit = self.settings.inline_below_s
        return (
            limit > 0
            and self._mean_run_s is not None
            and self._mean_run_s < limit
            and not self._queue
            and self._alone_running == 0
            and (self._worker is None or self._worker.done())
        )

    def _run_inline(self, inputs: Tensors, rows: int) -> Tensors:
        started = time.perf_counter()
        try:
            return self._run(inputs)
        finally:
            elapsed = time.perf_counter() - started
            self._note_run(elapsed)
            if self._observer:
                self._observer.request_queued(0.0)
                self._observer.batch_ran(rows, 1, elapsed)

    def _note_run(self, seconds: float) -> None:
        """The moving average of run times that decides whether runs may go inline."""
        mean = self._mean_run_s
        self._mean_run_s = seconds if mean is None else mean + RUN_TIME_WEIGHT * (seconds - mean)

    async def _run_alone(self, inputs: Tensors, rows: int) -> Tensors:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._alone_running += 1
        try:
            outputs = await loop.run_in_executor(self._executor, self._run, inputs)
        finally:
            self._alone_running -= 1
        self._note_run(time.perf_counter() - started)
        if self._observer:
            self._observer.request_queued(0.0)
            self._observer.batch_ran(rows, 1, time.perf_counter() - started)
        return outputs

    async def _work(self) -> None:
        while self._queue:
            batch = self._take()
            if not batch:  # only cancelled requests were left
                break
            await self._maybe_wait_for_more(batch)
            await self._execute(batch)
        # The queue ran dry: load has paused, so the next lone arrival must not wait.
        self._last_batch_requests = 0

    def _take(self, batch: list[_Pending] | None = None) -> list[_Pending]:
        """Move compatible requests from the queue head into the batch, up to max rows."""
        batch = batch if batch is not None else []
        limit = self.max_rows
        rows = sum(p.rows for p in batch)
        key = batch[0].key if batch else None
        skipped: list[_Pending] = []
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # cancelled by a disconnected client
                self._queue.popleft()
                self._queued_rows -= item.rows
                continue
            if key is None:
                key = item.key
            if item.key != key:
                skipped.append(self._queue.popleft())
                continue
            if rows + item.rows > limit and batch:
                break
            # An empty batch always takes the head, even when the cap was lowered (live) below
            # its rows: it then runs alone instead of waiting for ever.
            self._queue.popleft()
            self._queued_rows -= item.rows
            batch.append(item)
            rows += item.rows
        self._queue.extendleft(reversed(skipped))  # keep their order for the next batch
        return batch

    async def _maybe_wait_for_more(self, batch: list[_Pending]) -> None:
        settings = self.settings
        if settings.batch_wait_timeout_s <= 0 or self._last_batch_requests <= 1:
            return
        deadline = time.perf_counter() + settings.batch_wait_timeout_s
        while sum(p.rows for p in batch) < self.max_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return
            self._take(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        if self._observer:
            for item in batch:
                self._observer.request_queued(now - item.enqueued)
        self._last_batch_requests = len(batch)
        rows = sum(p.rows for p in batch)
        try:
            results = await loop.run_in_executor(self._executor, self._run_stacked, batch)
            self._note_run(time.perf_counter() - now)
        except Exception as exc:  # noqa: BLE001 - any model failure is retried per request
            if len(batch) == 1:
                _settle(batch[0].future, exception=exc)
                return
            # Isolate the failure: rerun each request alone so only the culprit fails.
            results = None
        if self._observer:
            self._observer.batch_ran(rows, len(batch), time.perf_counter() - now)
        if results is None:
            for item in batch:
                try:
                    out = await loop.run_in_executor(self._executor, self._run, item.inputs)
                except Exception as exc:  # noqa: BLE001 - handed to that request alone
                    _settle(item.future, exception=exc)
                else:
                    _settle(item.future, result=out)
            return
        for item, out in zip(batch, results):
            _settle(item.future, result=out)

    def _run_stacked(self, batch: list[_Pending]) -> list[Tensors]:
        if len(batch) == 1:
            return [self._run(batch[0].inputs)]
        names = batch[0].inputs.keys()
        stacked = {n: np.concatenate([p.inputs[n] for p in batch]) for n in names}
        outputs = self._run(stacked)
        total = sum(p.rows for p in batch)
        for name, array in outputs.items():
            if array.ndim == 0 or array.shape[0] != total:
                raise ValueError(f"output '{name}' does not follow the batch axis")
        split: list[Tensors] = []
        start = 0
        for item in batch:
            end = start + item.rows
            split.append({n: a[start:end] for n, a in outputs.items()})
            start = end
        return split

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _settle(
    future: asyncio.Future, result: Tensors | None = None, exception: BaseException | None = None
) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
