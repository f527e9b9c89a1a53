"""The replica's flush to the monitor: what it cannot send is dropped and counted, request facts
included (the soak and autoscale scenarios found the facts of whole flushes dropped uncounted
while the monitor was busy: a third of the requests at 64 clients on 2 cores)."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import numpy as np

from serving.monitor_link import MonitorLink
from serving.sampling import SampleBuffer
from serving.settings import SamplingSettings


class RecordingCounter:
    def __init__(self) -> None:
        self.incs: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self.incs.append((value, dict(tags)))


def _link(max_rows: int = 100, max_requests: int = 100) -> tuple[MonitorLink, SimpleNamespace]:
    metrics = SimpleNamespace(samples_dropped=RecordingCounter(),
                              sample_requests_dropped=RecordingCounter(),
                              samples_sent=RecordingCounter())
    buffer = SampleBuffer(sample_rate=1.0, max_rows=max_rows, max_requests=max_requests, seed=1)
    return MonitorLink(SamplingSettings(), buffer, metrics), metrics  # type: ignore[arg-type]


def _requests(link: MonitorLink, n: int, rows: int = 1) -> None:
    for i in range(n):
        x = np.full((rows, 2), i, dtype=np.float32)
        link.buffer.record("m", "1", 0.001, 200, {"x": x}, {"y": x[:, 0]})


def test_a_flush_dropped_while_the_previous_is_in_flight_counts_its_requests_too():
    link, metrics = _link()

    async def go() -> None:
        link._in_flight = asyncio.get_running_loop().create_future()  # a flush still in flight
        _requests(link, 7)
        assert link.flush() is True
        link._in_flight.cancel()

    asyncio.run(go())
    tags = {"model": "m", "version": "1", "reason": "monitor_busy"}
    assert metrics.samples_dropped.incs == [(7, tags)]
    assert metrics.sample_requests_dropped.incs == [(7, tags)]


def test_requests_dropped_while_the_monitor_is_unavailable_are_counted():
    link, metrics = _link()
    link._handle_failed_at = time.monotonic()  # no handle, and none asked for again yet
    _requests(link, 3, rows=2)
    assert link.flush() is True
    tags = {"model": "m", "version": "1", "reason": "monitor_unavailable"}
    assert metrics.samples_dropped.incs == [(6, tags)]
    assert metrics.sample_requests_dropped.incs == [(3, tags)]


def test_a_full_buffer_counts_the_request_facts_it_dropped():
    link, metrics = _link(max_rows=4, max_requests=4)
    link._handle_failed_at = time.monotonic()
    _requests(link, 10)
    link.flush()
    full = {"model": "m", "version": "1", "reason": "buffer_full"}
    gone = {**full, "reason": "monitor_unavailable"}
    assert (6, full) in metrics.samples_dropped.incs
    assert (6, full) in metrics.sample_requests_dropped.incs
    assert (4, gone) in metrics.sample_requests_dropped.incs  # the 4 kept, then not sent
