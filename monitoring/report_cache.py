"""Reports built once per window: a cache with shared, one-at-a-time builds (pure asyncio).

An Evidently report takes seconds of CPU, so the monitor builds each at most once: per slot (a
model version) the cache keeps the report of one window index, the newest built. A request for
that index gets the cached bytes; requests for an index being built wait for that build; builds
(of any slot) run one at a time, in the order requested. A build that fails is not cached, and
every request waiting for it gets its exception; the next request builds again. A request that
goes away (cancelled) does not cancel a build others may be waiting for.

Memory: at most ``max_bytes`` of reports, one per slot (the newest index built); past it the
slots used least recently are dropped, and a report larger than the whole bound is served but
not kept. ``drop(slot)`` forgets a slot at once (a version no longer served). Not thread-safe:
one event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

Build = Callable[[], Awaitable[bytes]]
DEFAULT_MAX_BYTES = 64 * 2**20
logger = logging.getLogger("vigil.monitor")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheSize:
    """What the cache holds (for the metrics)."""

    reports: int
    bytes: int


class ReportCache:
    """The newest report of each slot, within a byte bound; builds shared per (slot, index)
    and run one at a time."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._done: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()  # least recent first
        self._bytes = 0
        self._building: dict[tuple[Hashable, int], asyncio.Future[bytes]] = {}
        self._one_at_a_time = asyncio.Lock()
        self.builds = 0  # builds started so far

    def cached(self, slot: Hashable, index: int) -> bytes | None:
        done = self._done.get(slot)
        if done is None or done[0] != index:
            return None
        self._done.move_to_end(slot)
        return done[1]

    def size(self) -> CacheSize:
        return CacheSize(len(self._done), self._bytes)

    def drop(self, slot: Hashable) -> None:
        """Forget the slot's report; a build of it in progress is served to those waiting for
        it, not kept."""
        self._forget(slot)
        for key in [k for k in self._building if k[0] == slot]:
            del self._building[key]

    def _forget(self, slot: Hashable) -> None:
        done = self._done.pop(slot, None)
        if done is not None:
            self._bytes -= len(done[1])

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
        dropped = (slot, index) not in self._building  # drop(slot) while it was built
        if not dropped and (newest is None or newest[0] <= index):
            self._keep(slot, index, value)  # an older window never replaces a newer one
        return value

    def _keep(self, slot: Hashable, index: int, value: bytes) -> None:
        self._forget(slot)
        if len(value) > self.max_bytes:
            logger.warning("a report of %d bytes is larger than the report cache (%d bytes): "
                           "served, not kept", len(value), self.max_bytes)
            return
        self._done[slot] = (index, value)
        self._bytes += len(value)
        while self._bytes > self.max_bytes:
            _, (_, old) = self._done.popitem(last=False)
            self._bytes -= len(old)

    def _finished(self, key: tuple[Hashable, int], future: asyncio.Future[bytes]) -> None:
        if self._building.get(key) is future:  # not a later build of a dropped slot's window
            del self._building[key]
        if not future.cancelled():
            future.exception()  # retrieved here, so a failure nobody awaited is not logged


class Recent(Generic[K, V]):
    """At most `limit` values, the least recently used dropped first (one thread)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.limit:
            self._values.popitem(last=False)

    def drop(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._values.pop(key, None)

    def __len__(self) -> int:
        return len(self._values)
