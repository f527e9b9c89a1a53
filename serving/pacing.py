"""Body deadlines: how long a request's body may take to arrive, enforced by one sweeper task
that cancels the reading of a body past its deadline, even when the client sends nothing more."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

SWEEP_INTERVAL_S = 0.25  # how late past its deadline a stalled body may be cut off


class BodyDeadlines:
    """The deadlines of the bodies this replica is receiving now. `watch` one before reading
    it and `release` it once read; a body still watched at its deadline has its reading task
    cancelled, and `release` then says it expired (the reader answers 408). One dict entry per
    body and one sweeper task per replica (running only while bodies are watched): cheaper per
    request than a timer each."""

    def __init__(self, grace_s: float, min_rate_bytes_per_s: int,
                 sweep_interval_s: float = SWEEP_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self.min_rate = min_rate_bytes_per_s
        self.sweep_interval_s = sweep_interval_s
        self._clock = clock
        self._keys = itertools.count()
        self._watched: dict[int, tuple[float, asyncio.Task]] = {}
        self._expired: set[int] = set()
        self._sweeper: asyncio.Task | None = None

    def allowed_s(self, length: int) -> float:
        """Seconds a body of `length` bytes may take: the grace, plus one second for each
        min_rate bytes (the rate floor)."""
        return self.grace_s + length / self.min_rate

    @property
    def receiving(self) -> int:
        """Bodies being received now (watched and not yet expired)."""
        return len(self._watched)

    def watch(self, task: asyncio.Task, length: int) -> int:
        """Start the clock on the body `task` is about to read; a key for `release`."""
        key = next(self._keys)
        self._watched[key] = (self._clock() + self.allowed_s(length), task)
        if self._sweeper is None:
            self._sweeper = task.get_loop().create_task(self._sweep())
        return key

    def release(self, key: int) -> bool:
        """The body is read (or its reading ended otherwise): stop its clock. True when its
        deadline had passed and its task was cancelled for it."""
        if self._watched.pop(key, None) is not None:
            return False
        if key in self._expired:
            self._expired.discard(key)
            return True
        return False

    def expire_due(self) -> int:
        """Cancel the reading of every body past its deadline; how many."""
        now = self._clock()
        due = [key for key, (deadline, _) in self._watched.items() if deadline <= now]
        for key in due:
            _, task = self._watched.pop(key)
            self._expired.add(key)
            task.cancel()
        return len(due)

    async def _sweep(self) -> None:
        try:
            while self._watched:
                await asyncio.sleep(self.sweep_interval_s)
                self.expire_due()
        finally:
            self._sweeper = None
