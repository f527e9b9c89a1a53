"""Webhook delivery from the outbox: signed POSTs, at least once, retried with backoff and jitter.

One asyncio task on the monitor's event loop; every outbox read and write runs on the deliverer's
own thread, so delivery never waits on window evaluation and evaluation never waits on a
receiver. Per target at most ``concurrency`` attempts are in flight. An attempt's outcome:

- 2xx: delivered.
- 408, 429 and 5xx, a timeout (the whole attempt, ``timeout_s``) or no connection: tried again
  after ``backoff_s * 2**(attempt-1)`` seconds (capped at ``max_backoff_s``), times a random
  factor in [0.5, 1) so that many failed events do not come back at once; a 429's Retry-After
  (seconds or an HTTP date) is honoured, within the cap.
- any other status (4xx, and 3xx: redirects are not followed): dead-lettered at once.
- after ``max_attempts`` attempts: dead-lettered.

Targets removed from the config keep their pending rows, untouched, until they come back.

About once every ``MAINTAIN_S`` (and at start) the deliverer's thread applies the outbox's
retention (monitoring.outbox) and counts its rows and bytes for the size metrics; a delivery pass
itself only reads indexes over pending deliveries.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import email.utils
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import httpx

from monitoring.alert_settings import WebhookTarget, scrub
from monitoring.events import CONTENT_TYPE, Signer
from monitoring.outbox import Delivery, Outbox, OutboxSize, Retention

logger = logging.getLogger("vigil.webhooks")
USER_AGENT = "vigil-webhooks/1"
POLL_S = 1.0  # longest sleep between looks at the outbox (`vigil webhooks retry` writes there)
MAINTAIN_S = 60.0  # how often retention runs and the outbox's size is counted
OUTCOMES = ("delivered", "rejected", "http_error", "timeout", "connection_error")
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def verdict_for(status: int) -> str:
    """'delivered', 'retry' or 'dead' for an HTTP answer."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "dead"


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²", which float refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # the asctime form (and -0000) name no zone: HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - now, 0.0)


def backoff(target: WebhookTarget, attempts: int, rng: random.Random) -> float:
    """Delay before the next try after `attempts` failed ones: exponential, jittered, capped."""
    delay = min(target.backoff_s * 2 ** (attempts - 1), target.max_backoff_s)
    return delay * rng.uniform(0.5, 1.0)


@dataclass(frozen=True)
class DeliverySnapshot:
    """The delivery figures at one instant, copied: what one scrape exports."""

    attempts: Mapping[tuple[str, str], int]  # (target, outcome) -> attempts
    dead_letters: Mapping[str, int]
    pending: Mapping[str, int]
    seconds_buckets: Mapping[str, tuple[int, ...]]  # per bucket, not cumulative
    seconds_sum: Mapping[str, float]
    outbox: OutboxSize | None  # None until first counted


@dataclass
class DeliveryStats:
    """What the collector exports. Attempts are recorded on the event loop, pending counts on
    the deliverer's thread, and a scrape reads them on the monitor's worker thread: every write
    goes through a method and every read through `snapshot()`, each under one lock (held for a
    few dict operations), so a scrape sees each attempt whole (its count, bucket and seconds) or
    not at all. The fields are the lock's to guard: read them only in tests, single-threaded."""

    attempts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (target, outcome)
    dead_letters: Counter[str] = field(default_factory=Counter)
    pending: dict[str, int] = field(default_factory=dict)
    seconds_buckets: dict[str, list[int]] = field(default_factory=dict)  # per bucket, not cumulative
    seconds_sum: dict[str, float] = field(default_factory=dict)
    outbox: OutboxSize | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def observe(self, target: str, outcome: str, seconds: float) -> None:
        """One attempt to `target`, its outcome and duration."""
        bucket = bisect.bisect_left(SECONDS_BUCKETS, seconds)  # the first bound >= seconds
        with self._lock:
            self.attempts[(target, outcome)] += 1
            counts = self.seconds_buckets.setdefault(target, [0] * (len(SECONDS_BUCKETS) + 1))
            counts[bucket] += 1
            self.seconds_sum[target] = self.seconds_sum.get(target, 0.0) + seconds

    def dead_lettered(self, target: str) -> None:
        with self._lock:
            self.dead_letters[target] += 1

    def set_pending(self, pending: Mapping[str, int]) -> None:
        """Pending deliveries per target, as the outbox counted them."""
        with self._lock:
            self.pending = dict(pending)

    def set_outbox(self, size: OutboxSize) -> None:
        with self._lock:
            self.outbox = size

    def snapshot(self) -> DeliverySnapshot:
        with self._lock:
            return DeliverySnapshot(
                attempts=dict(self.attempts), dead_letters=dict(self.dead_letters),
                pending=dict(self.pending),
                seconds_buckets={t: tuple(c) for t, c in self.seconds_buckets.items()},
                seconds_sum=dict(self.seconds_sum), outbox=self.outbox,
            )


@dataclass(frozen=True)
class ActiveTarget:
    """A configured target with its signing keys (from the monitor's environment)."""

    settings: WebhookTarget
    keys: tuple[bytes, ...]
    sign: Signer = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sign", Signer(self.keys))  # once per target, not per attempt


class Deliverer:
    """Sends the outbox's pending deliveries to the configured targets."""

    def __init__(self, outbox: Outbox, stats: DeliveryStats, *, seed: int | None = None,
                 retention: Retention | None = None) -> None:
        """`retention`: what the outbox keeps of delivered and dead events (None: everything)."""
        self.outbox = outbox
        self.stats = stats
        self.retention = retention
        self._maintained_at = -math.inf
        self.targets: dict[str, ActiveTarget] = {}
        self._db = ThreadPoolExecutor(1, thread_name_prefix="vigil-outbox")
        self._rng = random.Random(seed)  # nosec B311 # retry jitter
        self._wake = asyncio.Event()
        self._in_flight: dict[str, set[str]] = {}  # target -> event ids being attempted
        self._tasks: set[asyncio.Task] = set()
        self._client: httpx.AsyncClient | None = None

    def configure(self, targets: dict[str, ActiveTarget]) -> None:
        self.targets = dict(targets)
        self.wake()

    def wake(self) -> None:
        """Look at the outbox now (call on the event loop)."""
        self._wake.set()

    async def _on_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def run(self) -> None:
        """Forever: start every due delivery a target has room for, then sleep until the next is
        due, a wake-up, or POLL_S."""
        self._client = httpx.AsyncClient(follow_redirects=False, headers={"user-agent": USER_AGENT})
        try:
            while True:
                # Cleared before the pass, not after it: a wake-up while it runs (an attempt
                # finished, events committed) must not be lost.
                self._wake.clear()
                try:
                    await self._pass()
                    await self._maintain_when_due()
                    sleep = await self._until_next_due()
                except Exception:
                    logger.exception("webhook delivery pass failed")
                    sleep = POLL_S
                # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation
                # that arrives as the event is set, and the deliverer would never stop.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(sleep):
                        await self._wake.wait()
        finally:
            # Attempts end with the deliverer (their rows stay pending for the next start),
            # rather than outliving it on a closed client.
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._client.aclose()

    async def _pass(self) -> None:
        now = time.time()
        for name, target in list(self.targets.items()):
            busy = self._in_flight.setdefault(name, set())
            room = target.settings.concurrency - len(busy)
            due = await self._on_db(self.outbox.due, name, now, room, tuple(busy))
            for delivery in due:
                busy.add(delivery.event_id)
                task = asyncio.create_task(self._deliver(target, delivery))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.stats.set_pending(await self._on_db(self.outbox.pending))

    async def _maintain_when_due(self) -> None:
        if time.monotonic() - self._maintained_at < MAINTAIN_S:
            return
        self._maintained_at = time.monotonic()  # a failure is not retried before MAINTAIN_S
        try:
            await self._on_db(self._maintain)
        except Exception:
            logger.exception("outbox retention or size count failed")

    def _maintain(self) -> None:
        """Retention, then the size metrics (on the deliverer's thread)."""
        if self.retention is not None:
            pruned = self.outbox.prune(self.retention, time.time())
            if pruned:
                logger.info("outbox retention: %d delivered or dead events pruned", pruned)
        self.stats.set_outbox(self.outbox.size())

    async def _until_next_due(self) -> float:
        # Attempts in flight are not due again, and a full target has no room for any: their
        # end wakes the loop. (Counting them polled the outbox every 10 ms while they ran.)
        skip = {name: tuple(self._in_flight.get(name, ())) for name, t in self.targets.items()
                if len(self._in_flight.get(name, ())) < t.settings.concurrency}
        due = await self._on_db(self.outbox.next_due, list(skip), skip)
        if due is None:
            return POLL_S
        return min(max(due - time.time(), 0.01), POLL_S)

    async def _deliver(self, target: ActiveTarget, delivery: Delivery) -> None:
        name = target.settings.name
        try:
            state, status, error, after = await self._attempt(target, delivery)
            attempts = delivery.attempts + 1
            next_at = None
            if state == "retry" and attempts >= target.settings.max_attempts:
                state, error = "dead", f"{error}; gave up after {attempts} attempts"
            if state == "retry":
                delay = backoff(target.settings, attempts, self._rng)
                if after is not None:
                    delay = max(delay, after)
                next_at = time.time() + min(delay, target.settings.max_backoff_s)
            final = {"retry": "pending"}.get(state, state)
            if final == "dead":
                self.stats.dead_lettered(name)
                logger.warning("webhook %s: event %s (%s) dead-lettered: %s",
                               name, delivery.event_id, delivery.type, error)
            await self._on_db(lambda: self.outbox.record_attempt(
                delivery.event_id, name, state=final, now=time.time(), status=status,  # type: ignore[arg-type]
                error=error, next_attempt_at=next_at, round=delivery.round,
            ))
        except Exception:
            logger.exception("webhook %s: recording the attempt at %s failed", name, delivery.event_id)
        finally:
            self._in_flight.get(name, set()).discard(delivery.event_id)
            self.wake()

    async def _attempt(
        self, target: ActiveTarget, delivery: Delivery
    ) -> tuple[str, int | None, str | None, float | None]:
        """One POST: (delivered|retry|dead, status, error, Retry-After seconds)."""
        assert self._client is not None
        settings = target.settings
        stamp = int(time.time())
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": target.sign(delivery.event_id, stamp, delivery.body),
        }
        started = time.perf_counter()
        status: int | None = None
        after = None
        try:
            async with asyncio.timeout(settings.timeout_s):
                response = await self._client.post(
                    settings.url, content=delivery.body, headers=headers,
                    timeout=httpx.Timeout(settings.timeout_s),
                )
            status = response.status_code
            state = verdict_for(status)
            outcome = {"delivered": "delivered", "retry": "http_error", "dead": "rejected"}[state]
            error = None if state == "delivered" else f"HTTP {status}: {response.text[:200]}"
            if status == 429:
                after = retry_after(response.headers.get("retry-after"), time.time())
        except TimeoutError:
            state, outcome, error = "retry", "timeout", f"no answer within {settings.timeout_s} s"
        except httpx.TimeoutException as exc:
            state, outcome, error = "retry", "timeout", f"timed out: {type(exc).__name__}"
        except httpx.HTTPError as exc:
            state, outcome, error = "retry", "connection_error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - e.g. httpx.InvalidURL: a failed attempt too,
            # retried with backoff (not at once, in a loop) and dead-lettered in the end
            state, outcome, error = "retry", "connection_error", f"{type(exc).__name__}: {exc}"
        self.stats.observe(settings.name, outcome, time.perf_counter() - started)
        if error is not None:  # it may echo the URL (httpx, or the receiver's answer): logged
            error = scrub(error, settings.url)  # and kept in the outbox, so shown redacted
        return state, status, error, after
