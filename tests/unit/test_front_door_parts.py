"""The front door's parts alone: body deadlines (serving.pacing), who a client is and the cap on
its requests in flight (serving.clients), and the autoscaling policy on working requests
(serving.autoscale) against Serve's own context and wrapper."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from serving.autoscale import WORKING_REQUESTS, working_requests_policy
from serving.clients import ClientCap
from serving.pacing import BodyDeadlines


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_body_behind_its_rate_floor_has_its_reading_cancelled_and_release_says_so() -> None:
    clock = Clock()
    deadlines = BodyDeadlines(5.0, 65536, clock=clock)

    async def go() -> list[str]:
        ended: list[str] = []
        watches = []

        async def reader() -> None:
            watch = deadlines.watch(asyncio.current_task())  # type: ignore[arg-type]
            watches.append(watch)
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                ended.append("expired" if deadlines.release(watch) else "cancelled")
                raise
        stalled = asyncio.ensure_future(reader())
        steady = asyncio.ensure_future(reader())
        other = asyncio.ensure_future(reader())
        await asyncio.sleep(0)
        assert deadlines.receiving == 3
        clock.now += 4.9
        assert deadlines.expire_due() == 0  # within the grace, nothing received yet
        watches[1].received = 65536 * 10  # ten seconds' worth at the floor
        watches[2].received = 65536 * 100
        clock.now += 0.2
        assert deadlines.expire_due() == 1  # 5.1 s, nothing received: behind
        with pytest.raises(asyncio.CancelledError):
            await stalled
        clock.now += 9.8  # 14.9 s: the steady one is still within 5 + 10
        assert deadlines.expire_due() == 0
        clock.now += 0.2
        assert deadlines.expire_due() == 1
        with pytest.raises(asyncio.CancelledError):
            await steady
        other.cancel()  # cancelled for another reason (its deadline passed unseen): not expired
        with pytest.raises(asyncio.CancelledError):
            await other
        return ended

    assert asyncio.run(go()) == ["expired", "expired", "cancelled"]
    assert deadlines.receiving == 0


def test_the_sweeper_cuts_off_a_body_that_sends_nothing_more_and_stops_when_idle() -> None:
    deadlines = BodyDeadlines(0.2, 65536, sweep_interval_s=0.05)

    async def go() -> float:
        started = asyncio.get_running_loop().time()
        watch = deadlines.watch(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            assert deadlines.release(watch)
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        took = asyncio.get_running_loop().time() - started
        await asyncio.sleep(0.1)
        assert deadlines._sweeper is None  # nothing watched: no task left running
        return took

    assert 0.2 <= asyncio.run(go()) < 0.4


def test_a_released_body_is_never_cancelled() -> None:
    clock = Clock()
    deadlines = BodyDeadlines(1.0, 65536, clock=clock)

    async def go() -> bool:
        watch = deadlines.watch(asyncio.current_task())  # type: ignore[arg-type]
        assert deadlines.release(watch) is False
        clock.now += 10
        assert deadlines.expire_due() == 0
        await asyncio.sleep(0)
        return True

    assert asyncio.run(go())


def _scope(peer: str, forwarded: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {"client": (peer, 5000),
            "headers": [(b"x-forwarded-for", f.encode()) for f in forwarded]}


@pytest.mark.parametrize(
    ("actor", "peer", "forwarded", "client"),
    [
        ("alice", "10.0.0.9", [], "token:alice"),  # a token names the client, wherever from
        ("alice", "10.0.0.1", ["1.2.3.4"], "token:alice"),
        ("local:127.0.0.1", "127.0.0.1", [], "addr:127.0.0.1"),
        ("anonymous", "10.0.0.9", [], "addr:10.0.0.9"),
        ("anonymous", "10.0.0.9", ["1.2.3.4"], "addr:10.0.0.9"),  # untrusted peer: ignored
        ("anonymous", "10.0.0.1", ["1.2.3.4"], "addr:1.2.3.4"),  # trusted proxy: believed
        ("anonymous", "10.0.0.1", ["6.6.6.6, 1.2.3.4"], "addr:1.2.3.4"),  # the proxy's entry
        ("anonymous", "10.0.0.1", ["6.6.6.6", "5.5.5.5"], "addr:5.5.5.5"),  # the last header
        ("anonymous", "10.0.0.1", [" "], "addr:10.0.0.1"),  # an empty entry: the peer
        ("anonymous", "10.0.0.1", [], "addr:10.0.0.1"),
    ],
)
def test_who_the_client_is(actor: str, peer: str, forwarded: list[str], client: str) -> None:
    cap = ClientCap(4, trusted_proxies=["10.0.0.1"])
    assert cap.identify(_scope(peer, forwarded), actor) == client


def test_the_cap_counts_each_client_apart_and_forgets_those_with_nothing_in_flight() -> None:
    cap = ClientCap(2)
    assert cap.admit("a") and cap.admit("a")
    assert not cap.admit("a")  # refused: nothing counted
    assert cap.in_flight("a") == 2
    assert cap.admit("b")
    cap.leave("a")
    assert cap.admit("a")
    for client in ("a", "a", "b"):
        cap.leave(client)
    assert cap._in_flight == {}


def _context(working: dict[str, float] | None, total: float, replicas: int = 2,
             target: int = 64) -> AutoscalingContext:
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DeploymentID("ModelServer", "vigil"))
           for i in range(replicas)]
    aggregated = None if working is None else {
        WORKING_REQUESTS: {rid: working[rid.unique_id] for rid in ids}}
    config = AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=target,
                               upscale_delay_s=0, downscale_delay_s=0)
    return AutoscalingContext(
        deployment_id=ids[0].deployment_id if ids else DeploymentID("ModelServer", "vigil"),
        deployment_name="ModelServer", app_name="vigil", current_num_replicas=replicas,
        target_num_replicas=replicas, running_replicas=ids, total_num_requests=total,
        total_queued_requests=0.0, aggregated_metrics=aggregated, raw_metrics=None,
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=0.0, config=config)


def test_the_policy_scales_on_working_requests_not_on_bodies_still_arriving() -> None:
    # 1000 stalled bodies: Serve counts 1000 ongoing requests, Vigil 10 working
    ctx = _context({"r0": 6.0, "r1": 4.0}, total=1000.0)
    assert working_requests_policy(ctx)[0] == pytest.approx(10 / 64)
    policy = _apply_autoscaling_config(working_requests_policy)  # what Serve wraps it in
    assert policy(ctx)[0] == 1
    busy = _context({"r0": 200.0, "r1": 184.0}, total=384.0)
    assert policy(busy)[0] == 6  # 384 / 64


def test_until_replicas_report_serves_own_count_stands_in() -> None:
    assert working_requests_policy(_context(None, total=256.0))[0] == 4.0


@pytest.mark.parametrize(("raw", "length"), [
    (None, None), ("12", 12), ("", None), ("-1", None), ("1.5", None), (" 5", None),
    ("²", None), ("1" * 19, int("1" * 19)),
    # past any body limit (and past int()'s 4,300 digits: it was a 500): larger than every limit
    ("9" * 20, 10**19), ("1" * 5000, 10**19),
])
def test_a_content_length_is_a_plain_number_or_none(raw, length) -> None:
    from serving.intake import declared_length

    assert declared_length(raw) == length
