"""Body deadlines: a rate floor that a request's body must keep after a grace period, enforced by
one sweeper task that cancels the reading of a body fallen behind, even when the client sends
nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

SWEEP_INTERVAL_S = 0.25  # how late past its deadline a stalled body may be cut off


class Watch:
    """One body being received: when it started, how much has arrived, who reads it."""

    __slots__ = ("started", "received", "task", "expired")

    def __init__(self, started: float, task: asyncio.Task) -> None:
        self.started = started
        self.received = 0
        self.task = task
        self.expired = False


class BodyDeadlines:
    """The bodies this replica is receiving now, each held to a rate floor: by `grace_s` plus
    one second per `min_rate` bytes received, the body must be complete, else its reading task is
    cancelled and `release` says it expired (the reader answers 408). So a body that stalls is
    cut off `grace_s` after its last progress is used up, and a large body sent at the floor
    rate or faster is never cut: it may take `grace_s + length / min_rate` in all. One object
    per body and one sweeper task per replica (running only while bodies are watched): cheaper
    per request than a timer each."""

    def __init__(self, grace_s: float, min_rate_bytes_per_s: int,
                 sweep_interval_s: float = SWEEP_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.min_rate = min_rate_bytes_per_s
        self.sweep_interval_s = sweep_interval_s
        self._clock = clock
        self._watched: set[Watch] = set()
        self._sweeper: asyncio.Task | None = None

    def allowed_s(self, length: int) -> float:
        """The longest a body of `length` bytes may take: the grace, plus one second for each
        min_rate bytes (the rate floor)."""
        return self.grace_s + length / self.min_rate

    @property
    def receiving(self) -> int:
        """Bodies being received now (watched, not yet expired)."""
        return len(self._watched)

    def watch(self, task: asyncio.Task) -> Watch:
        """Start the clock on the body `task` is about to read (the reader keeps `received`
        up to date); release it once read."""
        watch = Watch(self._clock(), task)
        self._watched.add(watch)
        if self._sweeper is None:
            self._sweeper = task.get_loop().create_task(self._sweep())
        return watch

    def release(self, watch: Watch) -> bool:
        """The body is read (or its reading ended otherwise): stop its clock. True when it had
        fallen behind and its task was cancelled for it (once: later calls say False)."""
        self._watched.discard(watch)
        expired, watch.expired = watch.expired, False
        return expired

    def expire_due(self) -> int:
        """Cancel the reading of every body behind its rate floor; how many."""
        now, grace, rate = self._clock(), self.grace_s, self.min_rate
        due = [w for w in self._watched if now - w.started > grace + w.received / rate]
        for watch in due:
            self._watched.discard(watch)
            watch.expired = True
            watch.task.cancel()
        return len(due)

    async def _sweep(self) -> None:
        try:
            while self._watched:
                await asyncio.sleep(self.sweep_interval_s)
                self.expire_due()
        finally:
            self._sweeper = None

