"""Webhook delivery: answers, Retry-After, backoff, and the Deliverer against real local HTTP
servers (Starlette on uvicorn, in a thread) that record what they receive."""

from __future__ import annotations

import asyncio
import base64
import calendar
import email.utils
import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from monitoring.alert_settings import WebhookTarget
from monitoring.outbox import Delivery, NewEvent, Outbox, Retention
from monitoring.webhooks import (
    SECONDS_BUCKETS,
    USER_AGENT,
    ActiveTarget,
    Deliverer,
    DeliveryStats,
    backoff,
    retry_after,
    verdict_for,
)
from tests.local_http import serving

KEY, OLD_KEY = bytes(range(32)), bytes(range(100, 132))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (204, "delivered"), (301, "dead"), (400, "dead"), (404, "dead"),
     (408, "retry"), (410, "dead"), (429, "retry"), (500, "retry"), (503, "retry")],
)
def test_verdict_for(status, verdict) -> None:
    assert verdict_for(status) == verdict


def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert retry_after("2", now) == 2.0 and retry_after(" 120 ", now) == 120.0
    assert retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0  # past: now
    for bad in (None, "", "soon", "-5", "1.5", "Mon, 99 Foo 2023", "\u00b2"):  # "²": latin-1
        assert retry_after(bad, now) is None


def test_retry_after_reads_zoneless_http_dates_as_gmt(monkeypatch) -> None:
    """RFC 9110 asks recipients to accept the asctime form, which names no zone: it is GMT,
    whatever the monitor's local time zone."""
    future = calendar.timegm((2033, 11, 6, 8, 49, 37))
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert retry_after("Sun Nov  6 08:49:37 2033", future - 30) == 30.0
        assert retry_after("Sunday, 06-Nov-33 08:49:37 GMT", future - 30) == 30.0
    finally:
        monkeypatch.undo()
        time.tzset()


def test_backoff_doubles_is_capped_and_jittered() -> None:
    target = _settings("t", "http://127.0.0.1:1/x", backoff_s=1.0, max_backoff_s=10.0)
    rng, mirror = random.Random(7), random.Random(7)
    delays = [backoff(target, attempts, rng) for attempts in range(1, 8)]
    bases = [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert delays == [b * mirror.uniform(0.5, 1.0) for b in bases]
    assert all(0.5 * b <= d < b for d, b in zip(delays, bases))
    many = [backoff(target, 1, random.Random(seed)) for seed in range(200)]
    assert 0.5 <= min(many) < 0.55 and 0.95 < max(many) < 1.0  # spread over [0.5, 1)


def test_delivery_stats_buckets() -> None:
    stats = DeliveryStats()
    for seconds in (0.001, 0.005, 0.0051, 0.7, 60.0, 61.0):
        stats.observe("t", "delivered", seconds)
    stats.observe("t", "timeout", 10.0)
    counts = stats.seconds_buckets["t"]
    assert len(counts) == len(SECONDS_BUCKETS) + 1
    by_bound = dict(zip([*SECONDS_BUCKETS, "+Inf"], counts))
    assert (by_bound[0.005], by_bound[0.01], by_bound[1.0], by_bound[10.0], by_bound[60.0],
            by_bound["+Inf"]) == (2, 1, 1, 1, 1, 1)
    assert sum(counts) == 7 and stats.seconds_sum["t"] == pytest.approx(131.7111)
    assert stats.attempts == {("t", "delivered"): 6, ("t", "timeout"): 1}


# ---------------------------------------------------------------- a real receiver


@dataclass
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    echo_url: bool = False  # answer "no route for <the URL asked for>", as some servers do


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


class Receiver:
    """What the server answers (scripted answers first, then the default) and what it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0  # one per test: a late answer of an earlier test counts for none
        self.live = 0  # answers not given yet, whatever the test
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.script: list[Answer] = []
            self.default = Answer()
            self.received: list[Received] = []
            self.active = self.most_active = 0

    def arrive(self, headers: dict[str, str], body: bytes) -> tuple[Answer, int]:
        with self.lock:
            self.received.append(Received(time.time(), headers, body))
            self.active += 1
            self.live += 1
            self.most_active = max(self.most_active, self.active)
            return (self.script.pop(0) if self.script else self.default), self.generation

    def leave(self, generation: int) -> None:
        with self.lock:
            self.live -= 1
            if generation == self.generation:
                self.active -= 1

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _app(receiver: Receiver) -> Starlette:
    async def hook(request: Request) -> Response:
        answer, generation = receiver.arrive(dict(request.headers), await request.body())
        try:
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
        finally:
            receiver.leave(generation)
        body = b"gone" if answer.status == 410 else b""
        if answer.echo_url:
            body = f"no route for {request.url}".encode()
        return Response(body, answer.status, answer.headers)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Receiver, str]]:
    receiver = Receiver()
    with serving(_app(receiver)) as base:
        yield receiver, f"{base}/hook"
        deadline = time.monotonic() + 3
        while receiver.live and time.monotonic() < deadline:  # let hanging answers end
            time.sleep(0.02)


@pytest.fixture
def receiver(server) -> Receiver:
    server[0].reset()
    return server[0]


@pytest.fixture
def url(server) -> str:
    return server[1]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


def _settings(name: str, url: str, **kw) -> WebhookTarget:
    return WebhookTarget(name=name, url=url, secret_env="S", **{"backoff_s": 0.05, **kw})


def _active(name: str, url: str, keys=(KEY,), **kw) -> ActiveTarget:
    return ActiveTarget(_settings(name, url, **kw), tuple(keys))


def _commit(outbox: Outbox, n: int, targets=("t",)) -> list[str]:
    ids = [f"evt-{i}" for i in range(n)]
    now = time.time()
    outbox.commit({}, [
        NewEvent(event_id, "vigil.drift.detected", "iris/1", now + i / 1000,
                 json.dumps({"id": event_id, "n": i}).encode(), tuple(targets))
        for i, event_id in enumerate(ids)
    ])
    return ids


def _row(outbox: Outbox, event_id: str = "evt-0", target: str = "t") -> Delivery:
    (row,) = outbox.deliveries(event_id=event_id, target=target)
    return row


def _deliver(outbox: Outbox, targets: list[ActiveTarget], done: Callable[[], bool],
             timeout_s: float = 5.0, linger_s: float = 0.0,
             retention: Retention | None = None) -> DeliveryStats:
    """Run a Deliverer until `done()` (then `linger_s` more), at most `timeout_s`."""

    async def main() -> DeliveryStats:
        stats = DeliveryStats()
        deliverer = Deliverer(outbox, stats, seed=1, retention=retention)
        deliverer.configure({t.settings.name: t for t in targets})
        task = asyncio.create_task(deliverer.run())
        try:
            deadline = time.monotonic() + timeout_s
            while not done():
                assert not task.done(), task.exception()
                assert time.monotonic() < deadline, "delivery did not finish in time"
                await asyncio.sleep(0.01)
            await asyncio.sleep(linger_s)
        finally:
            task.cancel()
            stopped, _ = await asyncio.wait({task}, timeout=3.0)
            deliverer._db.shutdown(wait=True)
        assert stopped, "the deliverer did not stop when cancelled"
        return stats

    return asyncio.run(main())


def _states(outbox: Outbox) -> dict[str, str]:
    return {f"{d.event_id}>{d.target}": d.state for d in outbox.deliveries(limit=1000)}


def _all(outbox: Outbox, state: str) -> Callable[[], bool]:
    return lambda: set(_states(outbox).values()) == {state}


# ---------------------------------------------------------------- the Deliverer


def test_a_delivery_is_signed_as_standard_webhooks_receivers_check(outbox, receiver, url) -> None:
    ids = _commit(outbox, 2)
    stats = _deliver(outbox, [_active("t", url, keys=(KEY, OLD_KEY))], _all(outbox, "delivered"))
    assert receiver.count() == 2
    for seen in receiver.received:
        payload = Webhook(SECRET).verify(seen.body, seen.headers)
        assert Webhook(OLD_SECRET).verify(seen.body, seen.headers) == payload  # rotation
        assert seen.headers["webhook-id"] == payload["id"]
        assert abs(int(seen.headers["webhook-timestamp"]) - seen.at) < 2
        assert seen.headers["content-type"] == "application/cloudevents+json"
        assert seen.headers["user-agent"] == USER_AGENT
    assert sorted(json.loads(s.body)["id"] for s in receiver.received) == ids
    row = _row(outbox)
    assert (row.attempts, row.last_status, row.last_error) == (1, 204, None)
    assert stats.attempts == {("t", "delivered"): 2}
    assert sum(stats.seconds_buckets["t"]) == 2 and stats.dead_letters == {}


def test_a_server_error_is_retried_until_the_server_recovers(outbox, receiver, url) -> None:
    receiver.script = [Answer(500), Answer(503)]
    _commit(outbox, 1)
    stats = _deliver(outbox, [_active("t", url)], _all(outbox, "delivered"))
    row = _row(outbox)
    assert (row.state, row.attempts, row.last_status, row.last_error) == \
        ("delivered", 3, 204, None)
    seen = receiver.received
    assert len(seen) == 3 and len({s.headers["webhook-id"] for s in seen}) == 1
    assert len({s.body for s in seen}) == 1
    # backoff 0.05 s doubled, jittered by [0.5, 1): at least 0.025 s, then 0.05 s between tries
    assert seen[1].at - seen[0].at >= 0.02 and seen[2].at - seen[1].at >= 0.045
    assert stats.attempts == {("t", "http_error"): 2, ("t", "delivered"): 1}


def test_a_hanging_server_times_out_and_is_retried(outbox, receiver, url) -> None:
    receiver.script = [Answer(204, delay_s=1.0)]
    _commit(outbox, 1)
    started = time.monotonic()
    stats = _deliver(outbox, [_active("t", url, timeout_s=0.3)], _all(outbox, "delivered"))
    assert time.monotonic() - started < 0.95  # it did not wait for the hanging answer
    row = _row(outbox)
    assert (row.attempts, row.last_status) == (2, 204)
    assert stats.attempts == {("t", "timeout"): 1, ("t", "delivered"): 1}
    assert stats.seconds_sum["t"] >= 0.3


@pytest.mark.parametrize(("status", "headers"), [(410, {}), (301, {"location": "/hook"})])
def test_a_refusal_is_dead_after_exactly_one_attempt(outbox, receiver, url, status,
                                                     headers) -> None:
    receiver.script = [Answer(status, headers)]
    _commit(outbox, 1)
    stats = _deliver(outbox, [_active("t", url)], _all(outbox, "dead"), linger_s=0.3)
    assert receiver.count() == 1  # neither retried nor redirected
    row = _row(outbox)
    assert (row.state, row.attempts, row.last_status) == ("dead", 1, status)
    assert row.last_error == f"HTTP {status}: {'gone' if status == 410 else ''}"
    assert row.done_at is not None
    assert stats.attempts == {("t", "rejected"): 1} and stats.dead_letters == {"t": 1}


def test_retry_after_is_honoured_within_the_cap(outbox, receiver, url) -> None:
    receiver.default = Answer(429, {"retry-after": "2"})
    _commit(outbox, 1, targets=("polite", "capped"))
    targets = [_active("polite", url), _active("capped", url, max_backoff_s=0.5)]
    stats = _deliver(outbox, targets, lambda: _row(outbox, target="polite").attempts >= 1
                     and _row(outbox, target="capped").attempts >= 1)
    polite = _row(outbox, target="polite")
    assert polite.state == "pending" and polite.last_status == 429
    assert 1.9 <= polite.next_attempt_at - polite.last_attempt_at <= 2.1
    capped = _row(outbox, target="capped")
    assert capped.next_attempt_at - capped.last_attempt_at <= 0.5
    assert stats.attempts[("polite", "http_error")] == 1


def test_after_max_attempts_a_delivery_is_dead(outbox, receiver, url) -> None:
    receiver.default = Answer(503)
    _commit(outbox, 1)
    stats = _deliver(outbox, [_active("t", url, max_attempts=3, backoff_s=0.02)],
                     _all(outbox, "dead"), linger_s=0.2)
    row = _row(outbox)
    assert (row.state, row.attempts, row.last_status) == ("dead", 3, 503)
    assert row.last_error == "HTTP 503: ; gave up after 3 attempts"
    assert receiver.count() == 3
    assert stats.attempts == {("t", "http_error"): 3} and stats.dead_letters == {"t": 1}


def test_a_refused_connection_is_retried(outbox) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    _commit(outbox, 1)
    stats = _deliver(outbox, [_active("t", closed, max_attempts=3, backoff_s=0.02)],
                     _all(outbox, "dead"))
    row = _row(outbox)
    assert (row.state, row.attempts, row.last_status) == ("dead", 3, None)
    assert row.last_error.startswith("ConnectError: ")
    assert row.last_error.endswith("; gave up after 3 attempts")
    assert stats.attempts == {("t", "connection_error"): 3}


def test_concurrency_per_target_is_respected(outbox, receiver, url) -> None:
    receiver.default = Answer(204, delay_s=0.2)
    _commit(outbox, 6)
    started = time.monotonic()
    stats = _deliver(outbox, [_active("t", url, concurrency=2)], _all(outbox, "delivered"))
    assert receiver.count() == 6 and receiver.most_active == 2
    assert time.monotonic() - started >= 0.55  # three rounds of two
    assert stats.attempts == {("t", "delivered"): 6}


def test_each_target_gets_its_own_deliveries_and_stats(outbox, receiver, url) -> None:
    receiver.script = [Answer(500)]
    _commit(outbox, 2, targets=("a", "b"))
    _commit_other = NewEvent("only-a", "vigil.traffic.stopped", "iris/1", time.time(), b"{}",
                             ("a",))
    outbox.commit({}, [_commit_other])
    stats = _deliver(outbox, [_active("a", url), _active("b", url)], _all(outbox, "delivered"),
                     linger_s=0.2)  # the pending gauge is counted on the pass after the last
    assert receiver.count() == 6  # 5 deliveries, one of them retried
    assert sum(stats.attempts[("a", o)] + stats.attempts[("b", o)]
               for o in ("delivered", "http_error")) == 6
    assert stats.attempts[("a", "delivered")] == 3 and stats.attempts[("b", "delivered")] == 2
    assert stats.pending == {}  # nothing left waiting


def test_pending_rows_of_an_unconfigured_target_stay_untouched(outbox, receiver, url) -> None:
    _commit(outbox, 1, targets=("t", "gone"))
    stats = _deliver(outbox, [_active("t", url)], lambda: _row(outbox).state == "delivered",
                     linger_s=0.1)
    gone = _row(outbox, target="gone")
    assert (gone.state, gone.attempts) == ("pending", 0)
    assert stats.pending == {"gone": 1} and receiver.count() == 1


def test_an_attempt_in_flight_is_not_polled_for(outbox, receiver, url) -> None:
    """While the only due delivery is being attempted the loop sleeps until the attempt ends
    (or POLL_S), instead of looking at the outbox again every few milliseconds."""
    calls = []
    due = outbox.due
    outbox.due = lambda *a, **k: calls.append(a) or due(*a, **k)  # type: ignore[method-assign]
    receiver.default = Answer(204, delay_s=0.8)
    _commit(outbox, 1)
    _deliver(outbox, [_active("t", url)], _all(outbox, "delivered"))
    assert len(calls) <= 5, f"{len(calls)} looks at the outbox during one 0.8 s attempt"


def test_stopping_the_deliverer_ends_its_attempts_and_keeps_them_pending(
    outbox, receiver, url, caplog
) -> None:
    receiver.default = Answer(204, delay_s=1.5)
    _commit(outbox, 1)

    async def main() -> Deliverer:
        deliverer = Deliverer(outbox, DeliveryStats(), seed=1)
        deliverer.configure({"t": _active("t", url)})
        task = asyncio.create_task(deliverer.run())
        deadline = time.monotonic() + 5
        while receiver.count() == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        stopped, _ = await asyncio.wait({task}, timeout=3.0)
        assert stopped and deliverer._tasks == set()  # no attempt outlives the deliverer
        await asyncio.sleep(0.1)
        deliverer._db.shutdown(wait=True)
        return deliverer

    caplog.set_level("WARNING", "vigil.webhooks")
    asyncio.run(main())
    row = _row(outbox)
    assert (row.state, row.attempts) == ("pending", 0)  # sent again at the next start
    assert caplog.records == []


def test_a_wake_up_does_not_swallow_the_cancellation(outbox) -> None:
    """Cancelled just as it is woken, the deliverer still stops (asyncio.wait_for in Python
    3.11 returns the woken result and drops the cancellation)."""

    async def main() -> bool:
        deliverer = Deliverer(outbox, DeliveryStats())
        task = asyncio.create_task(deliverer.run())
        await asyncio.sleep(0.1)  # asleep, waiting for a wake-up
        deliverer.wake()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2.0)
        while not task.done():  # clean up a deliverer that went on
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        deliverer._db.shutdown(wait=True)
        return bool(done)

    assert asyncio.run(main()), "the deliverer went on after it was cancelled"


def test_a_request_that_cannot_be_made_counts_as_a_failed_attempt(outbox, caplog) -> None:
    """An exception outside httpx.HTTPError (here InvalidURL) is a failed attempt, retried with
    backoff and dead-lettered in the end, not an attempt tried again at once, forever."""
    target = _active("t", "http://127.0.0.1:9/hook", max_attempts=2, backoff_s=0.02)
    bad = ActiveTarget(target.settings.model_copy(update={"url": "http://[::1/hook"}), target.keys)
    _commit(outbox, 1)
    stats = _deliver(outbox, [bad], _all(outbox, "dead"), timeout_s=3.0)
    row = _row(outbox)
    assert (row.state, row.attempts, row.last_status) == ("dead", 2, None)
    assert row.last_error.startswith("InvalidURL: ")
    assert stats.attempts == {("t", "connection_error"): 2}


def test_the_deliverer_applies_retention_and_counts_the_outbox(outbox, receiver, url,
                                                               monkeypatch) -> None:
    """Delivered events beyond the retention are pruned by the deliverer's own maintenance
    (here at every pass), and the size it counts is what the stats export."""
    import monitoring.webhooks as webhooks

    monkeypatch.setattr(webhooks, "MAINTAIN_S", 0.0)
    _commit(outbox, 3)
    stats = _deliver(outbox, [_active("t", url)], lambda: outbox.pruning().events == 3,
                     retention=Retention(max_age_s=0.0, max_events=1000), linger_s=0.05)
    assert receiver.count() == 3 and outbox.deliveries() == []
    assert outbox.pruned("evt-0") is not None
    size = stats.snapshot().outbox
    assert (size.events, dict(size.deliveries), size.pruned_events) == \
        (0, {"pending": 0, "delivered": 0, "dead": 0}, 3)
    assert size.bytes > 0


def test_credentials_in_a_url_are_never_shown(outbox, receiver, url, caplog) -> None:
    """A target URL with user:password and a query token, whose receiver echoes the URL in its
    404: the dead letter kept in the outbox, the log line and the status dump show neither the
    password nor the token, while the real URL was used (the receiver saw the token)."""
    caplog.set_level("WARNING", "vigil.webhooks")
    secret_url = url.replace("http://", "http://robot:hunter22-pw@") + "?token=s3cr3t-t0ken"
    receiver.script = [Answer(404, echo_url=True)]
    _commit(outbox, 1)
    _deliver(outbox, [_active("t", secret_url)], _all(outbox, "dead"), linger_s=0.05)
    assert receiver.received[0].headers["authorization"].startswith("Basic ")
    row = _row(outbox)
    assert row.last_error.startswith("HTTP 404: no route for http://127.0.0.1:")
    assert row.last_error.endswith("/hook?token=***")
    shown = [row.last_error, caplog.text, json.dumps(_settings("t", secret_url).model_dump()),
             _settings("t", secret_url).model_dump_json()]
    for text in shown:
        assert "hunter22-pw" not in text and "s3cr3t-t0ken" not in text, text
    assert "dead-lettered" in caplog.text
