"""The front door on the session's real server (Ray, HAProxy, HTTP): headers that never finish
arriving are cut by HAProxy's header timeout, a stalled body is answered 408 within its grace, a
client past its cap of requests in flight gets 429 with Retry-After while other clients are
served, and both are counted."""

from __future__ import annotations

import os
import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from tests.integration.conftest import create_token, wait_for
from tests.integration.test_metrics import _scrape, _value
from vigil.tools.haproxy_header_timeout import TIMEOUT_ENV

PATH = "/v2/models/breast_cancer/infer"
BODY = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                 "data": [0.5] * 30}]})
GRACE_S = 5.0  # front_door.body_grace_s's default, which configs/serve.yaml keeps
CAP = 64  # front_door.max_in_flight_per_client's default, per replica


def _stalled(port: int, token: str) -> socket.socket:
    """A request that declares 3 MB, sends ten bytes and stops."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST {PATH} HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {token}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n".encode()
                 + BODY[:10])
    return sock


def _answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the response on `sock` (read until it closes or the body
    is complete)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


HEADER_TIMEOUT_S = int(os.environ[TIMEOUT_ENV])  # 3 s in this session (tests/conftest.py)
REQUEST_HEAD = (f"POST {PATH} HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\n"
                "Content-Length: 2\r\n").encode()


@pytest.mark.parametrize("trickle", [
    # slowloris: a header line every second, each well inside `timeout client`
    [f"X-Slow-{i}: {i}\r\n".encode() for i in range(30)],
    # the request line itself, a byte every half second
    [bytes([b]) for b in REQUEST_HEAD[:60]],
], ids=["a header line every second", "the request line a byte at a time"])
def test_headers_that_never_finish_are_cut_at_the_header_timeout(vigil, trickle):
    port = int(vigil.base_url.rsplit(":", 1)[1])
    interval = 1.0 if len(trickle[0]) > 1 else 0.5
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    started = time.monotonic()
    if len(trickle[0]) > 1:
        sock.sendall(REQUEST_HEAD)
    reply, sent = b"", 0
    with sock:
        for piece in trickle:
            ready, _, _ = select.select([sock], [], [], interval)
            if ready:  # HAProxy answered or closed: read what it said, to the close
                try:
                    while chunk := sock.recv(65536):
                        reply += chunk
                except ConnectionResetError:
                    pass
                break
            try:
                sock.sendall(piece)
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
        took = time.monotonic() - started
    assert sent >= 2, "cut before the trickle began: not the header timeout"
    assert HEADER_TIMEOUT_S - 0.5 <= took < HEADER_TIMEOUT_S + 2.0, (took, sent)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 408"), reply[:200]
    # Whoever sends a whole request at once is still served on the same server.
    answered = httpx.post(f"{vigil.base_url}{PATH}", content=BODY, timeout=10, headers=vigil.auth)
    assert answered.status_code == 200


def test_a_stalled_body_gets_408_within_its_grace(vigil):
    port = int(vigil.base_url.rsplit(":", 1)[1])
    started = time.monotonic()
    with _stalled(port, vigil.token) as sock:
        status, _, body = _answer(sock)
    took = time.monotonic() - started
    assert status == 408, body
    assert "arrived too slowly: 10 bytes" in orjson.loads(body)["error"]
    assert GRACE_S <= took < GRACE_S + 2.0

    def counted() -> bool:
        text = _scrape(vigil.metrics_port)
        return _value(text, "ray_vigil_front_door_refused_total", reason="body_timeout") >= 1
    wait_for(counted, 30, "the 408 counted", interval=1.0)


def test_a_client_past_its_cap_gets_429_while_others_are_served(vigil):
    port = int(vigil.base_url.rsplit(":", 1)[1])
    greedy = create_token("greedy", "infer", vigil.models_dir)
    wait_for(lambda: httpx.post(f"{vigil.base_url}{PATH}", content=BODY, timeout=10, headers={
        "Authorization": f"Bearer {greedy}"}).status_code == 200, 30, "the new token accepted")
    # More stalled requests than both replicas' caps hold: the rest are refused at once.
    sockets = [_stalled(port, greedy) for _ in range(2 * CAP + 20)]
    try:
        started = time.monotonic()
        time.sleep(1.0)  # every stalled request has reached a replica
        answered, _, _ = select.select(sockets, [], [], 0.5)
        early = [_answer(sock) for sock in answered]
        refused = httpx.post(f"{vigil.base_url}{PATH}", content=BODY, timeout=10,
                             headers={"Authorization": f"Bearer {greedy}"})
        with ThreadPoolExecutor(8) as pool:
            polite = list(pool.map(lambda _: httpx.post(
                f"{vigil.base_url}{PATH}", content=BODY, timeout=10, headers=vigil.auth),
                range(20)))
        within = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    assert {status for status, _, _ in early} == {429}, early[:3]
    assert len(early) >= 20  # at most CAP held on each replica
    assert all(headers.get("retry-after") == "1" for _, headers, _ in early)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "max_in_flight_per_client" in refused.json()["error"]
    assert [r.status_code for r in polite] == [200] * 20 and within < GRACE_S

    def counted() -> bool:
        text = _scrape(vigil.metrics_port)
        return _value(text, "ray_vigil_front_door_refused_total", reason="client_cap") >= 21
    wait_for(counted, 30, "the 429s counted", interval=1.0)
