"""The replica's front door in process (its real Starlette app called as ASGI with hand-driven
bodies, real onnxruntime, a real tokens file; no Ray): a body that does not arrive within its
deadline is answered 408 and frees its slot, a client past its cap of requests in flight gets 429
with Retry-After while other clients are served, a client that leaves mid-body is a 499, and the
autoscaling metric leaves out requests whose body is still arriving."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from load_tests.inprocess import InProcessServer, server_app, tokens_for
from serving.autoscale import WORKING_REQUESTS
from tests.graphs import SLOW_MODEL, SLOW_WIDTH
from vigil.core.repository import publish

ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.05, 0.05, 0.18, 0.06] * 3
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                               "data": ROW}]}).encode()
PATH = "/v2/models/breast_cancer/infer"
Receive = Callable[[], Awaitable[dict]]


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root / "breast_cancer", root / "breast_cancer")
    return root


@pytest.fixture
def tokens(repo: Path) -> dict[str, str]:
    return tokens_for(repo, greedy="infer", polite="infer")


class Answer:
    """What the app sent back for one request."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self.at = 0.0

    async def send(self, event: dict) -> None:
        if event["type"] == "http.response.start":
            self.status = event["status"]
            self.headers = {k.decode(): v.decode() for k, v in event.get("headers", [])}
            self.at = time.monotonic()
        elif event["type"] == "http.response.body":
            self.body += event.get("body", b"")

    def error(self) -> str:
        return str(json.loads(self.body)["error"])


def _scope(token: str | None, length: int, client: str = "127.0.0.1",
           extra: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(length).encode()), *(extra or [])]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "root_path": "",
            "query_string": b"", "headers": headers, "client": (client, 40000),
            "server": ("127.0.0.1", 8000)}


def whole_body() -> Receive:
    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}
    return receive


def stalled_body(then: dict | None = None, after_s: float = 3600.0) -> Receive:
    """Ten bytes, then nothing (for `after_s`, then `then`: a disconnect, say)."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY[:10], "more_body": True}
        await asyncio.sleep(after_s)
        return then or {"type": "http.disconnect"}
    return receive


async def _call(app: Any, scope: dict, receive: Receive) -> Answer:
    answer = Answer()
    await app(scope, receive, answer.send)
    return answer


def test_a_stalled_body_is_answered_408_after_its_grace_and_frees_its_slot(repo, tokens):
    """Ten bytes of a declared 3 MB, then nothing: cut off once the grace is used up, not after
    the 45 s that the whole body could take at the rate floor."""
    server, app = server_app(repo, front_door={"body_grace_s": 0.5})
    declared = 3_000_000
    assert server.intake.deadlines.allowed_s(declared) == pytest.approx(0.5 + declared / 65536)

    async def go() -> tuple[Answer, float]:
        started = time.monotonic()
        answer = await _call(app, _scope(tokens["greedy"], declared), stalled_body())
        return answer, answer.at - started

    answer, took = asyncio.run(go())
    assert answer.status == 408, answer.body
    assert "arrived too slowly: 10 bytes in" in answer.error()
    assert "body_grace_s 0.5 s" in answer.error()
    assert 0.5 <= took < 0.5 + 0.6  # the grace plus at most a sweep or two
    assert server._in_flight == 0 and server.intake.deadlines.receiving == 0
    assert server.clients.in_flight("token:greedy") == 0
    assert _statuses(server) == [408]


def test_the_rate_floor_gives_a_large_body_one_second_per_64_KiB(repo, tokens):
    server, _ = server_app(repo, front_door={"body_grace_s": 2.0,
                                             "body_min_rate_bytes_per_s": 1024})
    assert server.intake.deadlines.allowed_s(0) == 2.0
    assert server.intake.deadlines.allowed_s(10 * 1024) == 12.0


def test_a_slow_body_that_keeps_the_rate_floor_is_served(repo, tokens):
    """A body that trickles in for longer than the grace, never behind the floor, is answered
    as any other."""
    server, app = server_app(repo, front_door={"body_grace_s": 0.3,
                                               "body_min_rate_bytes_per_s": 1024})

    padded = BODY + b" " * 1000  # JSON allows trailing whitespace

    async def go() -> Answer:
        chunks = [padded[i:i + 25] for i in range(0, len(padded), 25)]
        assert len(chunks) * 0.02 > 0.9  # three times the grace, at 1250 bytes/s

        async def receive() -> dict:
            await asyncio.sleep(0.02)
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return await _call(app, _scope(tokens["greedy"], len(padded)), receive)

    answer = asyncio.run(go())
    assert answer.status == 200, answer.body
    assert _statuses(server) == [200]


def test_a_client_past_its_cap_gets_429_while_other_clients_are_served(repo, tokens):
    server, app = server_app(repo, front_door={"body_grace_s": 1.0,
                                               "max_in_flight_per_client": 3})

    async def go() -> tuple[list[Answer], Answer, Answer, Answer]:
        held = [asyncio.ensure_future(_call(app, _scope(tokens["greedy"], 200), stalled_body()))
                for _ in range(3)]
        while server.clients.in_flight("token:greedy") < 3:
            await asyncio.sleep(0.01)
        refused = await _call(app, _scope(tokens["greedy"], len(BODY)), whole_body())
        # another token from the same address is another client
        other = await _call(app, _scope(tokens["polite"], len(BODY)), whole_body())
        assert server.record_autoscaling_stats() == {WORKING_REQUESTS: 0.0}  # 3 arriving
        stalled = await asyncio.gather(*held)
        again = await _call(app, _scope(tokens["greedy"], len(BODY)), whole_body())
        return stalled, refused, other, again

    stalled, refused, other, again = asyncio.run(go())
    assert refused.status == 429 and refused.headers["retry-after"] == "1"
    assert "max_in_flight_per_client" in refused.error()
    assert other.status == 200 and again.status == 200
    assert [a.status for a in stalled] == [408, 408, 408]
    assert server.clients.in_flight("token:greedy") == 0
    # the 429 named no served version yet: counted under model "_unknown", sampled for none
    assert sorted(_statuses(server)) == [200, 200, 408, 408, 408]


def test_a_client_that_leaves_mid_body_is_a_499(repo, tokens):
    server, app = server_app(repo)
    answer = asyncio.run(_call(app, _scope(tokens["greedy"], 200),
                               stalled_body({"type": "http.disconnect"}, after_s=0.05)))
    assert answer.status == 499
    assert server._in_flight == 0 and server.intake.deadlines.receiving == 0
    assert _statuses(server) == [499]


def test_requests_being_worked_on_count_for_autoscaling(repo, tokens):
    """A request whose body has arrived counts as work while it runs, one still arriving does
    not."""
    builder, inputs, outputs = SLOW_MODEL
    publish(repo, "slow", "1", builder().SerializeToString(), inputs, outputs)
    server, app = server_app(repo, front_door={"body_grace_s": 5.0})
    slow = json.dumps({"inputs": [
        {"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32", "data": [0.0] * SLOW_WIDTH},
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [20000]}]}).encode()
    seen: list[float] = []

    async def go() -> None:
        arriving = asyncio.ensure_future(_call(app, _scope(tokens["greedy"], 200),
                                               stalled_body(after_s=0.6)))
        scope = _scope(tokens["polite"], len(slow))
        scope["path"], scope["raw_path"] = "/v2/models/slow/infer", b"/v2/models/slow/infer"

        async def receive() -> dict:
            return {"type": "http.request", "body": slow, "more_body": False}
        working = asyncio.ensure_future(_call(app, scope, receive))
        while server._in_flight < 2:
            await asyncio.sleep(0.005)
        seen.append(server.record_autoscaling_stats()[WORKING_REQUESTS])
        assert not working.done()
        await asyncio.gather(arriving, working)
        seen.append(server.record_autoscaling_stats()[WORKING_REQUESTS])

    asyncio.run(go())
    assert seen == [1.0, 0.0]


def _statuses(server: InProcessServer) -> list[int]:
    assert server.samples is not None
    return [s for b in server.samples.drain() for s in b.status.tolist()]
