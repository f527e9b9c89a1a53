"""The report cache: one build per window, shared by concurrent requests, one build at a time.

Evidently itself is replaced by FakeEvidently: a build that takes a moment and counts its calls,
standing for the seconds of CPU a real report takes (the real one: test_report.py, and the
monitor's route in tests/integration/test_monitor.py)."""

from __future__ import annotations

import asyncio

import pytest

from monitoring.report_cache import ReportCache


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
