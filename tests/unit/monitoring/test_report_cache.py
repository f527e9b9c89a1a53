"""The report cache: one build per window, shared by concurrent requests, one build at a time.

Evidently itself is replaced by FakeEvidently: a build that takes a moment and counts its calls,
standing for the seconds of CPU a real report takes (the real one: test_report.py, and the
monitor's route in tests/integration/test_monitor.py)."""

from __future__ import annotations

import asyncio

import pytest

from monitoring.report_cache import CacheSize, Recent, ReportCache


class FakeEvidently:
    """Stands for Evidently's report run: `seconds` of waiting, then b"<slot>#<index>"."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.calls: list[tuple[str, int]] = []
        self.running = 0
        self.most_running = 0
        self.fail_next = False

    def build(self, slot: str, index: int):
        async def run() -> bytes:
            self.calls.append((slot, index))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            try:
                await asyncio.sleep(self.seconds)
                if self.fail_next:
                    self.fail_next = False
                    raise RuntimeError("evidently failed")
                return f"{slot}#{index}".encode()
            finally:
                self.running -= 1

        return run


def _get(cache: ReportCache, fake: FakeEvidently, slot: str, index: int):
    return cache.get(slot, index, fake.build(slot, index))


def test_a_second_request_for_the_same_window_is_served_from_the_cache() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently()
        assert await _get(cache, fake, "m/1", 3) == b"m/1#3"
        assert await _get(cache, fake, "m/1", 3) == b"m/1#3"
        assert fake.calls == [("m/1", 3)] and cache.builds == 1
        assert cache.cached("m/1", 3) == b"m/1#3" and cache.cached("m/1", 2) is None

    asyncio.run(main())


def test_concurrent_requests_for_one_window_share_one_build() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently()
        results = await asyncio.gather(*(_get(cache, fake, "m/1", 3) for _ in range(5)))
        assert results == [b"m/1#3"] * 5 and fake.calls == [("m/1", 3)]

    asyncio.run(main())


def test_builds_run_one_at_a_time_in_the_order_asked() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently()
        asked = [("a/1", 1), ("b/1", 7), ("a/2", 1), ("a/1", 2)]
        results = await asyncio.gather(*(_get(cache, fake, s, i) for s, i in asked))
        assert results == [b"a/1#1", b"b/1#7", b"a/2#1", b"a/1#2"]
        assert fake.calls == asked and fake.most_running == 1

    asyncio.run(main())


def test_a_new_window_replaces_the_cached_one_an_older_never_does() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently()
        await _get(cache, fake, "m/1", 3)
        await _get(cache, fake, "m/1", 4)
        assert cache.cached("m/1", 3) is None and cache.cached("m/1", 4) == b"m/1#4"
        assert await _get(cache, fake, "m/1", 3) == b"m/1#3"  # asked for: built again, returned
        assert cache.cached("m/1", 4) == b"m/1#4"  # ... but the newer window stays cached
        assert fake.calls == [("m/1", 3), ("m/1", 4), ("m/1", 3)]

    asyncio.run(main())


def test_a_failed_build_reaches_every_waiter_and_is_not_cached() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently()
        fake.fail_next = True
        results = await asyncio.gather(
            *(_get(cache, fake, "m/1", 3) for _ in range(3)), return_exceptions=True
        )
        assert [str(r) for r in results] == ["evidently failed"] * 3
        assert await _get(cache, fake, "m/1", 3) == b"m/1#3"  # the next request builds again
        assert fake.calls == [("m/1", 3), ("m/1", 3)]

    asyncio.run(main())


def test_a_request_that_goes_away_does_not_cancel_the_build() -> None:
    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently(seconds=0.05)
        leaving = asyncio.create_task(_get(cache, fake, "m/1", 3))
        staying = asyncio.create_task(_get(cache, fake, "m/1", 3))
        await asyncio.sleep(0.01)
        leaving.cancel()
        assert await staying == b"m/1#3"
        with pytest.raises(asyncio.CancelledError):
            await leaving
        alone = asyncio.create_task(_get(cache, fake, "m/1", 4))
        await asyncio.sleep(0.01)
        alone.cancel()  # nobody else waits: the build still finishes and is cached
        await asyncio.sleep(0.08)
        assert cache.cached("m/1", 4) == b"m/1#4" and len(fake.calls) == 2

    asyncio.run(main())


class Sized(FakeEvidently):
    """Reports of `size` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(seconds=0.0)
        self.size = size

    def build(self, slot: str, index: int):
        run = super().build(slot, index)

        async def sized() -> bytes:
            return (await run()).ljust(self.size, b".")

        return sized


def test_the_cache_is_bounded_by_bytes_least_recently_read_first() -> None:
    """Reports of 400 bytes in a cache of 1000: two fit; the third drops the slot read least
    recently; a report larger than the whole cache is served and not kept."""

    async def main() -> None:
        cache, fake = ReportCache(max_bytes=1000), Sized(400)
        await _get(cache, fake, "a/1", 1)
        await _get(cache, fake, "b/1", 1)
        assert cache.cached("a/1", 1) is not None  # a/1 read: b/1 is now the least recent
        await _get(cache, fake, "c/1", 1)
        assert cache.size() == CacheSize(reports=2, bytes=800)
        assert cache.cached("b/1", 1) is None and cache.cached("a/1", 1) is not None
        huge = Sized(1001)
        assert len(await _get(cache, huge, "d/1", 1)) == 1001
        assert cache.cached("d/1", 1) is None and cache.size().bytes == 800
        await _get(cache, Sized(100), "a/1", 2)  # a newer window replaces a/1's report
        assert cache.size() == CacheSize(reports=2, bytes=500)

    asyncio.run(main())


def test_drop_forgets_a_slot_and_a_build_in_progress_is_not_kept() -> None:
    """A version no longer served: its report goes at once, and one being built is served
    to whoever waits but not cached."""

    async def main() -> None:
        cache, fake = ReportCache(), FakeEvidently(seconds=0.05)
        await _get(cache, fake, "m/1", 1)
        cache.drop("m/1")
        assert cache.cached("m/1", 1) is None and cache.size() == CacheSize(0, 0)
        building = asyncio.create_task(_get(cache, fake, "m/1", 2))
        await asyncio.sleep(0.01)
        cache.drop("m/1")
        assert await building == b"m/1#2"
        assert cache.cached("m/1", 2) is None and cache.size() == CacheSize(0, 0)

    asyncio.run(main())


def test_recent_keeps_the_values_used_last() -> None:
    recent: Recent[str, int] = Recent(2)
    recent.put("a", 1)
    recent.put("b", 2)
    assert recent.get("a") == 1  # b is now the least recent
    recent.put("c", 3)
    assert (recent.get("b"), recent.get("a"), recent.get("c"), len(recent)) == (None, 1, 3, 2)
    recent.drop(["a", "zz"])
    assert len(recent) == 1
