"""Reports built once per window: a cache with shared, one-at-a-time builds (pure asyncio).

An Evidently report takes seconds of CPU, so the monitor builds each at most once: per slot (a
model version) the cache keeps the report of one window index, the newest built. A request for
that index gets the cached bytes; requests for an index being built wait for that build; builds
(of any slot) run one at a time, in the order requested. A build that fails is not cached, and
every request waiting for it gets its exception; the next request builds again. A request that
goes away (cancelled) does not cancel a build others may be waiting for.

Memory: one value per slot (the newest index built). Not thread-safe: one event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

Build = Callable[[], Awaitable[bytes]]


class ReportCache:
    """The newest report of each slot; builds shared per (slot, index) and run one at a time."""

    def __init__(self) -> None:
        self._done: dict[Hashable, tuple[int, bytes]] = {}
        self._building: dict[tuple[Hashable, int], asyncio.Future[bytes]] = {}
        self._one_at_a_time = asyncio.Lock()
        self.builds = 0  # builds started so far

    def cached(self, slot: Hashable, index: int) -> bytes | None:
        done = self._done.get(slot)
        return done[1] if done is not None and done[0] == index else None

    async def get(self, slot: Hashable, index: int, build: Build) -> bytes:
        """The report of window `index` of `slot`: cached, or being built, or built now by
        `build` (called at most once per (slot, index) while its result is wanted)."""
        hit = self.cached(slot, index)
        if hit is not None:
            return hit
        key = (slot, index)
        future = self._building.get(key)
        if future is None:
            future = asyncio.ensure_future(self._build(slot, index, build))
            self._building[key] = future
            future.add_done_callback(lambda f: self._finished(key, f))
        return await asyncio.shield(future)

    async def _build(self, slot: Hashable, index: int, build: Build) -> bytes:
        async with self._one_at_a_time:
            self.builds += 1
            value = await build()
        newest = self._done.get(slot)
        if newest is None or newest[0] <= index:  # an older window never replaces a newer one
            self._done[slot] = (index, value)
        return value

    def _finished(self, key: tuple[Hashable, int], future: asyncio.Future[bytes]) -> None:
        self._building.pop(key, None)
        if not future.cancelled():
            future.exception()  # retrieved here, so a failure nobody awaited is not logged
