"""serving.grpc_http1: gRPC calls over HTTP/1.1 (as HAProxy brings them) run on the loop, spoken to
here byte for byte so that every answer's status line, chunk and trailers are seen. What each bad
call gets, and that the connection still serves the next call after it. (The same front behind a
real HAProxy, with grpc's own client: tests/unit/test_grpc_threads.py and test_grpc_service.py.)"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import struct
import threading
import time
import zlib
from types import SimpleNamespace

import grpc
import pytest

from serving.grpc_http1 import Http1GrpcServer, Rpc
from serving.proto import wire
from tests.unit.test_grpc_threads import FakeServicer

READY = "/inference.GRPCInferenceService/ModelReady"
LIMIT = 1000  # the front's max_receive_message_length here


class Servicer(FakeServicer):
    """The threaded server's test servicer (`slow` sleeps and records its cancel, `bug` raises,
    `missing` sets NOT_FOUND), and: `nap` sleeps briefly (counting the calls running at once),
    `odd` sets details that need percent-encoding; each call's metadata and peer recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: list[str] = []
        self.running = 0
        self.most_running = 0

    async def ModelReady(self, request, context):  # noqa: N802
        self.metadata.append(dict(context.invocation_metadata()))
        self.peers.append(context.peer())
        if request.name.startswith("nap"):
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            await asyncio.sleep(float(request.version or "0.2"))
            self.running -= 1
        if request.name == "odd":
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details("né 100%\nnext")
            return wire.ModelReadyResponse(ready=False)
        return await super().ModelReady(request, context)


@pytest.fixture
def front(request):
    settings = {"max_calls": 64, **getattr(request, "param", {})}
    loop = asyncio.new_event_loop()
    servicer = Servicer()
    rpcs = {READY: Rpc(servicer.ModelReady, wire.message("ModelReadyRequest").FromString,
                       wire.ModelReadyResponse.SerializeToString)}
    server = Http1GrpcServer(rpcs, relay_port=None, max_message_bytes=LIMIT, **settings)
    ready = threading.Event()
    holder = {}

    def run():
        asyncio.set_event_loop(loop)
        holder["port"] = loop.run_until_complete(server.bind("127.0.0.1", 0))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield SimpleNamespace(port=holder["port"], servicer=servicer, server=server, loop=loop)
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _message(name: str, version: str = "") -> bytes:
    return wire.message("ModelReadyRequest")(name=name, version=version).SerializeToString()


def _framed(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + struct.pack(">I", len(message)) + message


def _request(body: bytes, path: str = READY, headers: dict[str, str] | None = None,
             chunked: bool = True) -> bytes:
    """A call as HAProxy sends it over HTTP/1.1 (its body chunked: HTTP/2 carries no length)."""
    head = {"host": "replica", "content-type": "application/grpc", "te": "trailers",
            **(headers or {})}
    lines = [f"POST {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
    if chunked:
        lines.append("transfer-encoding: chunked")
        payload = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        lines.append(f"content-length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


class Reader:
    """Reads whole answers (status, headers, chunked body, trailers) off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed")
            self.buffer += more
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed")
            self.buffer += more
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def answer(self) -> SimpleNamespace:
        status = self._line().decode()
        headers = {}
        while line := self._line():
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        body = b""
        if headers.get("transfer-encoding") == "chunked":
            while size := int(self._line(), 16):
                body += self._exactly(size)
                assert self._exactly(2) == b"\r\n"
            trailers = {}
            while line := self._line():
                key, _, value = line.decode().partition(":")
                trailers[key.strip().lower()] = value.strip()
        else:
            body = self._exactly(int(headers.get("content-length", 0)))
            trailers = {}
        message = None
        if body and headers.get("content-type") == "application/grpc":
            (length,) = struct.unpack_from(">I", body, 1)
            assert body[0] == 0 and len(body) == 5 + length
            message = wire.ModelReadyResponse.FromString(body[5:])
        return SimpleNamespace(status=status, headers=headers, trailers=trailers,
                               message=message, body=body)


def _connect(front) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", front.port), timeout=10)
    return sock, Reader(sock)


def _status(answer) -> tuple[int, str]:
    return int(answer.trailers["grpc-status"]), answer.trailers.get("grpc-message", "")


def test_a_call_gets_its_message_in_a_chunk_and_its_status_in_trailers(front):
    sock, reader = _connect(front)
    with sock:
        for chunked in (True, False):
            sock.sendall(_request(_framed(_message("mlp")), chunked=chunked))
            answer = reader.answer()
            assert answer.status == "HTTP/1.1 200 OK"
            assert answer.headers["content-type"] == "application/grpc"
            assert answer.message.ready is True
            assert _status(answer) == (0, "")


def test_the_rpc_reads_the_metadata_and_peer_as_grpc_gives_them(front):
    sock, reader = _connect(front)
    blob = b"\x00\x01\xfe"
    with sock:
        sock.sendall(_request(_framed(_message("mlp")), headers={
            "Authorization": "Bearer x", "x-request-id": "r-1", "grpc-timeout": "5S",
            "trace-bin": base64.b64encode(blob).rstrip(b"=").decode(),
            "user-agent": "grpc-python"}))
        assert _status(reader.answer()) == (0, "")
    metadata = front.servicer.metadata[-1]
    # the call's own headers (content-type, te, grpc-timeout, host, transfer-encoding) are not
    # metadata; -bin values arrive decoded; keys lower-case
    assert metadata == {"authorization": "Bearer x", "x-request-id": "r-1", "trace-bin": blob,
                        "user-agent": "grpc-python"}
    assert front.servicer.peers[-1].startswith("ipv4:127.0.0.1:")


def test_calls_pipelined_on_one_connection_are_answered_in_order(front):
    sock, reader = _connect(front)
    with sock:
        # the first sleeps longest: answers still come back in the order asked
        sock.sendall(b"".join(_request(_framed(_message(n, v)))
                              for n, v in (("nap1", "0.3"), ("missing", ""), ("nap2", "0.01"))))
        codes = [_status(reader.answer())[0] for _ in range(3)]
    assert codes == [0, grpc.StatusCode.NOT_FOUND.value[0], 0]
    assert [m for m in front.servicer.metadata] and front.servicer.most_running == 1


# What each bad call gets, all on one connection that goes on serving.
BAD_CALLS = [
    ("an unknown method", _request(_framed(_message("m")), path="/inference.X/Nope"),
     grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),
    ("no message at all", _request(b""),
     grpc.StatusCode.INTERNAL, "carries no request message"),
    ("a message shorter than its header says", _request(_framed(_message("m"))[:-2]),
     grpc.StatusCode.INTERNAL, "one whole message is needed"),
    ("two messages on a unary call", _request(_framed(_message("m")) * 2),
     grpc.StatusCode.INTERNAL, "one whole message is needed"),
    ("a message over the limit", _request(_framed(b"\x0a" + b"x" * (LIMIT + 10))),
     grpc.StatusCode.RESOURCE_EXHAUSTED, f"Received message larger than max ({LIMIT + 11} vs. {LIMIT})"),
    ("bytes that are not the request message", _request(_framed(b"\xff\xff\xff")),
     grpc.StatusCode.INTERNAL, "Exception deserializing request"),
    ("an unknown message flag", _request(_framed(_message("m"), flag=2)),
     grpc.StatusCode.INTERNAL, "bad message flag 2"),
    ("a compression it does not know", _request(_framed(_message("m"), flag=1),
                                                headers={"grpc-encoding": "snappy"}),
     grpc.StatusCode.UNIMPLEMENTED, "Compression algorithm 'snappy' is not supported"),
    ("a gzip message that does not inflate", _request(_framed(b"not gzip", flag=1),
                                                      headers={"grpc-encoding": "gzip"}),
     grpc.StatusCode.INTERNAL, "does not inflate"),
    ("a gzip message over the limit once inflated",
     _request(_framed(gzip.compress(_message("x" * (LIMIT * 3))), flag=1),
              headers={"grpc-encoding": "gzip"}),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"),
    ("a content-type that is not gRPC's", _request(_framed(_message("m")),
                                                   headers={"content-type": "application/json"}),
     grpc.StatusCode.INTERNAL, "is not gRPC's"),
    ("a malformed grpc-timeout", _request(_framed(_message("m")),
                                          headers={"grpc-timeout": "soon"}),
     grpc.StatusCode.INTERNAL, "malformed grpc-timeout"),
    ("an RPC that raises", _request(_framed(_message("bug"))),
     grpc.StatusCode.UNKNOWN, "Exception calling application: a bug"),
]


@pytest.mark.parametrize("what, call, code, says", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_each_bad_call_gets_its_status_and_the_connection_serves_the_next(front, what, call,
                                                                          code, says):
    sock, reader = _connect(front)
    with sock:
        sock.sendall(call)
        answer = reader.answer()
        assert answer.status == "HTTP/1.1 200 OK" and answer.body == b"", what
        got, message = _status(answer)
        assert got == code.value[0], (what, answer.trailers)
        assert says in message.replace("%25", "%"), (what, message)
        sock.sendall(_request(_framed(_message("mlp"))))
        assert _status(reader.answer()) == (0, "")


@pytest.mark.parametrize("encoding, pack", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_messages_are_inflated(front, encoding, pack):
    sock, reader = _connect(front)
    with sock:
        sock.sendall(_request(_framed(pack(_message("mlp")), flag=1),
                              headers={"grpc-encoding": encoding}))
        answer = reader.answer()
    assert _status(answer) == (0, "") and answer.message.ready is True


def test_details_are_percent_encoded_as_grpc_message_is(front):
    sock, reader = _connect(front)
    with sock:
        sock.sendall(_request(_framed(_message("odd"))))
        answer = reader.answer()
    assert _status(answer) == (grpc.StatusCode.INVALID_ARGUMENT.value[0],
                               "n%C3%A9 100%25%0Anext")


def test_a_deadline_cancels_the_rpc_and_answers_deadline_exceeded(front):
    sock, reader = _connect(front)
    began = time.monotonic()
    with sock:
        sock.sendall(_request(_framed(_message("slow")), headers={"grpc-timeout": "200m"}))
        answer = reader.answer()
    assert _status(answer) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded")
    assert time.monotonic() - began < 5
    assert asyncio.run_coroutine_threadsafe(asyncio.wait_for(
        front.servicer.cancelled.wait(), 5), front.loop).result(10) is True


def test_a_client_that_goes_away_cancels_its_rpc(front):
    sock, _ = _connect(front)
    sock.sendall(_request(_framed(_message("slow"))))
    time.sleep(0.2)
    sock.close()  # HAProxy closes the replica's connection when its client cancels
    assert asyncio.run_coroutine_threadsafe(asyncio.wait_for(
        front.servicer.cancelled.wait(), 5), front.loop).result(10) is True
    sock, reader = _connect(front)  # the front goes on serving
    with sock:
        sock.sendall(_request(_framed(_message("mlp"))))
        assert _status(reader.answer()) == (0, "")


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 4,
                                     b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n"
                                     b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"])
def test_bytes_that_are_not_an_http1_call_get_400_and_the_connection_closed(front, garbage):
    sock, reader = _connect(front)
    with sock:
        sock.sendall(garbage)
        answer = reader.answer()
        assert answer.status.startswith("HTTP/1.1 400")
        with pytest.raises(ConnectionError):
            reader.answer()
    sock, reader = _connect(front)
    with sock:
        sock.sendall(_request(_framed(_message("mlp"))))
        assert _status(reader.answer()) == (0, "")


@pytest.mark.parametrize("front", [{"max_calls": 2}], indirect=True)
def test_at_most_max_calls_run_at_once_and_the_rest_wait(front):
    socks = [_connect(front) for _ in range(6)]
    for sock, _ in socks:
        sock.sendall(_request(_framed(_message("nap", "0.2"))))
    codes = [_status(reader.answer())[0] for _, reader in socks]
    for sock, _ in socks:
        sock.close()
    assert codes == [0] * 6
    assert front.servicer.most_running == 2


def test_stop_lets_a_running_call_finish_then_refuses_connections(front):
    sock, reader = _connect(front)
    with sock:
        sock.sendall(_request(_framed(_message("nap", "0.3"))))
        time.sleep(0.1)
        stopping = asyncio.run_coroutine_threadsafe(front.server.stop(5), front.loop)
        answer = reader.answer()
        assert _status(answer) == (0, "") and answer.message.ready
        stopping.result(10)
        with pytest.raises(ConnectionError):  # closed once answered
            reader.answer()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", front.port), timeout=2).close()


@pytest.mark.parametrize("front", [{"idle_close_s": 0.4}], indirect=True)
def test_a_connection_idle_for_idle_close_s_is_closed_and_a_busy_one_is_not(front):
    busy, busy_reader = _connect(front)
    idle, idle_reader = _connect(front)
    with busy, idle:
        idle.sendall(_request(_framed(_message("mlp"))))
        assert _status(idle_reader.answer()) == (0, "")
        busy.sendall(_request(_framed(_message("nap", "1.2"))))  # longer than idle_close_s
        with pytest.raises(ConnectionError):
            idle_reader.answer()  # closed by the sweeper within about 0.5 s
        assert _status(busy_reader.answer()) == (0, "")


def test_every_address_falls_back_to_ipv4_where_the_host_has_no_ipv6():
    """Ray's port is listened on at every address; a host without IPv6 still gets IPv4 (grpc's
    `[::]` did the same), instead of a port reported taken on every try."""
    import errno

    loop = asyncio.new_event_loop()
    hosts = []
    original = loop.create_server

    async def create_server(factory, host, port, **kwargs):
        hosts.append(host)
        if host is None:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        return await original(factory, host, port, **kwargs)

    loop.create_server = create_server
    server = Http1GrpcServer({}, relay_port=None, max_message_bytes=LIMIT, max_calls=1)
    try:
        port = loop.run_until_complete(server.bind("", 0))
        assert hosts == [None, "0.0.0.0"] and port > 0
        with pytest.raises(OSError):  # a taken port is not an address problem: it is said
            loop.run_until_complete(Http1GrpcServer({}, relay_port=None, max_message_bytes=1,
                                                    max_calls=1).bind("127.0.0.1", port))
    finally:
        loop.run_until_complete(server.stop(0))
        loop.close()
