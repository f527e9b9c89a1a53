"""The replica's gRPC port, served on its event loop: gRPC calls that HAProxy brings over HTTP/1.1.

HAProxy ends each client's HTTP/2 connection itself (C, one process per node) and can speak
HTTP/1.1 to a backend, carrying a gRPC call as a chunked POST whose trailers (`grpc-status`,
`grpc-message`) it turns back into HTTP/2 trailers for the client. Served that way, a replica
parses a call with httptools and runs its RPC right on the replica's loop: no HTTP/2 framing or
HPACK in Python, no grpc thread and no hand-off between threads, which together were more than
half of a replica's time per gRPC call (docs/performance.md#grpc). Vigil's HAProxy wrapper
(vigil/tools/haproxy_header_timeout.py) drops `proto h2` from the Vigil application's gRPC
servers so that HAProxy speaks HTTP/1.1 to this port.

A connection that opens with HTTP/2's preface (HAProxy's health check replays a gRPC `Healthz`
in HTTP/2, and a client may dial the replica directly) is relayed byte for byte to grpc's
threaded server on a loopback port (serving.grpc_threads), which answers it as before.

What this front does as grpc's server would: the call's deadline (`grpc-timeout`) cancels its
RPC (DEADLINE_EXCEEDED); a client gone (HAProxy closes the connection) cancels it too; a message
over max_receive_message_length is refused with RESOURCE_EXHAUSTED before it is kept; gzip and
deflate messages are inflated (any other encoding: UNIMPLEMENTED); an unknown method is
UNIMPLEMENTED; at most `max_calls` RPCs run at once, further calls wait for a place (as grpc's
threads do)."""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import struct
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import httptools

logger = logging.getLogger("vigil.serving")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Headers that carry the call itself, not its metadata (grpc's servers leave them out too).
_NOT_METADATA = frozenset({b"content-type", b"te", b"grpc-timeout", b"grpc-encoding",
                           b"grpc-accept-encoding", b"transfer-encoding", b"content-length",
                           b"host", b"connection", b"keep-alive"})
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# Calls read ahead of the one running on a connection before it stops being read: HAProxy sends
# one call at a time, and each call read holds its body (up to max_receive_message_length).
_PENDING_CALLS = 1
IDLE_CLOSE_S = 300.0  # a connection with no call and no bytes for this long is closed
_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
         b"grpc-accept-encoding: identity, deflate, gzip\r\ntransfer-encoding: chunked\r\n")


@dataclass(frozen=True)
class Rpc:
    """One unary method: `call(request, context)` on the loop answers a message (serialized by
    `serialize`) or bytes (`serialize` None)."""

    call: Callable[[Any, Any], Awaitable[Any]]
    deserialize: Callable[[bytes | memoryview], Any] | None
    serialize: Callable[[Any], bytes] | None


class CallContext:
    """A call's context as Vigil's RPC methods and Ray's handlers read it (grpc's
    ServicerContext's calls they use)."""

    __slots__ = ("_metadata", "_peer", "_code", "_details", "_trailing", "_initial",
                 "_deadline")

    def __init__(self, metadata: tuple[tuple[str, Any], ...], peer: str,
                 deadline: float | None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._initial: tuple[tuple[str, Any], ...] = ()
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    def send_initial_metadata(self, metadata: Any) -> _Done:
        """Sent with the answer's headers (the answer is written whole); awaitable, as
        grpc.aio's is."""
        self._initial = tuple(metadata)
        return _Done()

    def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details
        raise _Aborted()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return True

    def set_compression(self, compression: Any) -> None:
        """Answers are sent uncompressed."""

    def disable_next_message_compression(self) -> None:
        """Answers are sent uncompressed."""


class _Done:
    def __await__(self) -> Any:
        return iter(())


class _Aborted(Exception):
    """context.abort: the call ends with the code and details set on its context."""


class CallRefused(Exception):
    """A call answered with a status before its RPC runs (framing, size, encoding, method)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Http1GrpcServer:
    """The replica's gRPC port: HTTP/1.1 calls run here, HTTP/2 connections are relayed to
    `relay_port` on 127.0.0.1 (grpc's threaded server). The part of grpc.aio.Server's
    interface the replica uses: an awaitable stop with grace, a termination to wait for."""

    def __init__(self, rpcs: dict[str, Rpc], *, relay_port: int | None,
                 max_message_bytes: int, max_calls: int,
                 idle_close_s: float = IDLE_CLOSE_S) -> None:
        self.rpcs = rpcs
        self.idle_close_s = idle_close_s
        self.relay_port = relay_port
        self.max_message_bytes = max_message_bytes
        self.calls = asyncio.Semaphore(max_calls)
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self._stopped = asyncio.Event()
        self._closing = False

    async def bind(self, host: str, port: int, reuse_port: bool = False) -> int:
        """Listen on `host` ("": every address, IPv6 and IPv4, as Ray's `[::]` does; IPv4 alone
        where the host has no IPv6); the port listened on."""
        loop = asyncio.get_running_loop()

        async def listen(on: str | None) -> asyncio.Server:
            return await loop.create_server(lambda: _Connection(self), on, port,
                                            reuse_port=reuse_port or None, backlog=1024)

        try:
            self._server = await listen(host or None)
        except OSError as exc:
            if host or exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise
            self._server = await listen("0.0.0.0")  # nosec B104 - as Ray's gRPC port listens
        self._sweeper = loop.create_task(self._close_idle())
        return int(self._server.sockets[0].getsockname()[1])

    async def _close_idle(self) -> None:
        while True:
            await asyncio.sleep(self.idle_close_s / 4)
            now = time.monotonic()
            for connection in list(self.connections):
                connection.close_if_idle(now - self.idle_close_s)

    async def stop(self, grace: float | None) -> None:
        """Refuse new connections, let the calls running finish for up to `grace` seconds
        (answered, then their connections closed), then close every connection."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self.connections):
            connection.close_when_done()
        deadline = time.monotonic() + (grace or 0.0)
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()


class _Connection(asyncio.Protocol):
    """One client connection (HAProxy's, mostly): HTTP/1.1 calls answered in order, or an
    HTTP/2 connection relayed."""

    def __init__(self, server: Http1GrpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.mode: str | None = None  # "http1" or "relay", from the first bytes
        self.first = b""
        self.peer = ""
        self.relay: _Relay | None = None
        self.last_seen = time.monotonic()
        # The call being read.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.body_size = 0
        self.too_large = 0  # the size of a message refused as too large, else 0
        # Calls read, answered in order; the one running.
        self.waiting: deque[_Call] = deque()
        self.running: asyncio.Task | None = None
        self.closing = False

    @property
    def busy(self) -> bool:
        return self.running is not None or bool(self.waiting)

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        address = transport.get_extra_info("peername")
        if isinstance(address, tuple) and address:
            host = address[0]
            self.peer = (f"ipv6:[{host}]:{address[1]}" if ":" in host
                         else f"ipv4:{host}:{address[1]}")
        if self.server._closing:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.closing = True
        self.waiting.clear()
        if self.running is not None:  # the client has gone: its RPC is not wanted
            self.running.cancel()
        if self.relay is not None:
            self.relay.close()

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.mode == "http1":
            self._feed(data)
        elif self.mode == "relay":
            self.relay.send(data)  # type: ignore[union-attr]
        else:
            self._sniff(data)

    def eof_received(self) -> bool:
        return False  # close: HAProxy sends nothing after its last call

    def _sniff(self, data: bytes) -> None:
        self.first += data
        prefix = self.first[:len(H2_PREFACE)]
        if H2_PREFACE.startswith(prefix) and len(prefix) < len(H2_PREFACE):
            return  # could still be HTTP/2's preface: wait for more
        data, self.first = self.first, b""
        if prefix == H2_PREFACE and self.server.relay_port is not None:
            self.mode = "relay"
            self.relay = _Relay(self)
            self.relay.send(data)
            asyncio.get_running_loop().create_task(self.relay.open(self.server.relay_port))
        else:
            self.mode = "http1"
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail_connection(b"400 Bad Request", "upgrades are not served here")
        except httptools.HttpParserError as exc:
            self._fail_connection(b"400 Bad Request", f"not an HTTP/1.1 request: {exc}")

    def _fail_connection(self, status: bytes, why: str) -> None:
        """A byte stream that is not HTTP/1.1: answered plainly, then closed."""
        if self.transport is not None and not self.transport.is_closing():
            body = why.encode()
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain\r\n"
                                 b"connection: close\r\ncontent-length: "
                                 + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.transport.close()
        self.closing = True

    def close_if_idle(self, quiet_since: float) -> None:
        """Close the connection when it has no call and no bytes since `quiet_since`."""
        if not self.busy and self.last_seen < quiet_since and self.transport is not None:
            self.transport.close()

    def close_when_done(self) -> None:
        self.closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []
        self.body_size = 0
        self.too_large = 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.too_large:
            return
        # A message's length is in its first five bytes; the body is refused, unkept, as soon
        # as it says (or shows) more than the limit.
        limit = self.server.max_message_bytes + 5
        if self.body_size > limit:
            self.too_large = self.body_size - 5
            self.body = []
            return
        self.body.append(body)
        if len(self.body) == 1 and len(body) >= 5:
            (length,) = struct.unpack_from(">I", body, 1)
            if length > self.server.max_message_bytes:
                self.too_large = length
                self.body = []

    def on_message_complete(self) -> None:
        call = _Call(self.url, self.headers, b"".join(self.body), self.too_large,
                     self.parser.should_keep_alive())
        self.body = []
        self.waiting.append(call)
        if self.running is None:
            self._next()
        if len(self.waiting) >= _PENDING_CALLS and self.transport is not None:
            self.transport.pause_reading()  # until the running call is answered

    # ------------------------------------------------------------------ calls

    def _next(self) -> None:
        if not self.waiting:
            self.running = None
            return
        call = self.waiting.popleft()
        self.running = asyncio.get_running_loop().create_task(self._answer(call))
        self.running.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task) -> None:
        self.running = None
        if self.transport is None or self.transport.is_closing():
            return
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                logger.error("gRPC call failed outside its RPC", exc_info=task.exception())
            self.transport.close()
            return
        if not task.result():  # the call asked for the connection to end
            self.transport.close()
            return
        if self.waiting:
            self._next()
        elif self.closing:
            self.transport.close()
            return
        if len(self.waiting) < _PENDING_CALLS:
            self.transport.resume_reading()

    async def _answer(self, call: _Call) -> bool:
        """Run one call and write its answer; True to keep the connection."""
        try:
            rpc, request, deadline = self._prepare(call)
        except CallRefused as refused:
            self._write(call, None, refused.code, refused.details, None)
            return call.keep_alive
        context = CallContext(call.metadata(), self.peer, deadline)
        try:
            async with self.server.calls:
                response = await self._run(rpc, request, context, deadline)
        except CallRefused as refused:  # its deadline passed
            self._write(call, None, refused.code, refused.details, context)
            return call.keep_alive
        except _Aborted:
            response = None  # the code and details are on the context
        except Exception as exc:  # noqa: BLE001 - a bug in an RPC is the client's UNKNOWN
            logger.exception("gRPC method %s failed", call.path)
            self._write(call, None, grpc.StatusCode.UNKNOWN,
                        f"Exception calling application: {exc}", context)
            return call.keep_alive
        code = context.code()
        if code is not None and code != grpc.StatusCode.OK:
            self._write(call, None, code, context.details(), context)
        else:
            self._write(call, response if rpc.serialize is None else rpc.serialize(response),
                        grpc.StatusCode.OK, "", context)
        return call.keep_alive

    def _prepare(self, call: _Call) -> tuple[Rpc, Any, float | None]:
        """The call's method, request message and deadline; CallRefused when it cannot run."""
        rpc = self.server.rpcs.get(call.path)
        if rpc is None:
            raise CallRefused(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        message = call.message(self.server.max_message_bytes)
        deadline = call.deadline()
        try:
            request = bytes(message) if rpc.deserialize is None else rpc.deserialize(message)
        except Exception as exc:  # noqa: BLE001 - any message the codec refuses
            raise CallRefused(grpc.StatusCode.INTERNAL,
                              f"Exception deserializing request: {exc}") from exc
        return rpc, request, deadline

    async def _run(self, rpc: Rpc, request: Any, context: CallContext,
                   deadline: float | None) -> Any:
        if deadline is None:
            return await rpc.call(request, context)
        try:
            loop = asyncio.get_running_loop()  # its clock may not be time.monotonic (uvloop)
            async with asyncio.timeout_at(loop.time() + deadline - time.monotonic()):
                return await rpc.call(request, context)
        except TimeoutError:
            raise CallRefused(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None

    def _write(self, call: _Call, message: bytes | None, code: grpc.StatusCode, details: str,
               context: CallContext | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        head = [_HEAD]
        if context is not None:
            head += [_header(k, v) for k, v in context._initial]
        if not call.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        if message is not None:
            size = len(message) + 5
            head += [b"%x\r\n" % size, b"\x00", struct.pack(">I", len(message)), message,
                     b"\r\n"]
        head.append(b"0\r\ngrpc-status: %d\r\n" % code.value[0])
        if details:
            head.append(b"grpc-message: " + _percent_encoded(details) + b"\r\n")
        if context is not None:
            head += [_header(k, v) for k, v in context._trailing]
        head.append(b"\r\n")
        self.transport.write(b"".join(head))


class _Call:
    """One call as read: its path, headers and body."""

    __slots__ = ("url", "headers", "body", "too_large", "keep_alive")

    def __init__(self, url: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 too_large: int, keep_alive: bool) -> None:
        self.url = url
        self.headers = headers
        self.body = body
        self.too_large = too_large
        self.keep_alive = keep_alive

    @property
    def path(self) -> str:
        return self.url.partition(b"?")[0].decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def metadata(self) -> tuple[tuple[str, Any], ...]:
        """The call's metadata as grpc gives it: lower-case keys, `-bin` values decoded."""
        items: list[tuple[str, Any]] = []
        for key, value in self.headers:
            if key in _NOT_METADATA:
                continue
            name = key.decode("latin-1")
            if name.endswith("-bin"):
                items.append((name, base64.b64decode(value + b"=" * (-len(value) % 4))))
            else:
                items.append((name, value.decode("latin-1")))
        return tuple(items)

    def deadline(self) -> float | None:
        """The monotonic time `grpc-timeout` ends the call at; None without one."""
        raw = self.header(b"grpc-timeout")
        if raw is None:
            return None
        unit = _TIMEOUT_UNITS.get(raw[-1:])
        if unit is None or not raw[:-1].isdigit() or len(raw) > 9:
            raise CallRefused(grpc.StatusCode.INTERNAL, f"malformed grpc-timeout {raw!r}")
        return time.monotonic() + int(raw[:-1]) * unit

    def message(self, limit: int) -> bytes | memoryview:
        """The one request message in the body (inflated when compressed; a view of the body,
        not a copy, when not)."""
        if self.too_large:
            raise CallRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"Received message larger than max ({self.too_large} vs. {limit})")
        content_type = self.header(b"content-type") or b""
        if not content_type.startswith(b"application/grpc"):
            raise CallRefused(grpc.StatusCode.INTERNAL,
                              f"content-type {content_type.decode('latin-1')!r} is not gRPC's")
        body = self.body
        if len(body) < 5:
            raise CallRefused(grpc.StatusCode.INTERNAL,
                              "the call carries no request message (a unary call needs one)")
        (length,) = struct.unpack_from(">I", body, 1)
        if len(body) != 5 + length:
            raise CallRefused(grpc.StatusCode.INTERNAL,
                              f"the call's body is {len(body) - 5} bytes after its message "
                              f"header, which says {length}: one whole message is needed")
        message = memoryview(body)[5:]
        if body[0] == 0:
            return message
        if body[0] != 1:
            raise CallRefused(grpc.StatusCode.INTERNAL, f"bad message flag {body[0]}")
        encoding = (self.header(b"grpc-encoding") or b"identity").decode("latin-1")
        wbits = {"gzip": 31, "deflate": 15}.get(encoding)
        if wbits is None:
            raise CallRefused(grpc.StatusCode.UNIMPLEMENTED,
                              f"Compression algorithm '{encoding}' is not supported "
                              "(identity, deflate and gzip are)")
        inflater = zlib.decompressobj(wbits)
        try:
            plain = inflater.decompress(message, limit + 1)
        except zlib.error as exc:
            raise CallRefused(grpc.StatusCode.INTERNAL,
                              f"the {encoding} message does not inflate: {exc}") from exc
        if len(plain) > limit:
            raise CallRefused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"Received message larger than max (more than {limit} bytes "
                              f"inflated vs. {limit})")
        return plain


class _Relay(asyncio.Protocol):
    """The loopback connection an HTTP/2 client connection is relayed to, both ways."""

    def __init__(self, client: _Connection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.closed = False

    async def open(self, port: int) -> None:
        try:
            await asyncio.get_running_loop().create_connection(lambda: self, "127.0.0.1", port)
        except OSError:
            self.client.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.closed:
            transport.close()
            return
        for data in self.early:
            transport.write(data)  # type: ignore[attr-defined]
        self.early = []

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.early.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.client.transport is not None:
            self.client.transport.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _header(key: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        value = base64.b64encode(value).rstrip(b"=").decode()
    return f"{key}: {value}\r\n".encode("latin-1")


def _percent_encoded(text: str) -> bytes:
    """grpc-message's encoding: UTF-8, with '%' and bytes outside printable ASCII as %XX."""
    return b"".join(bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
                    for b in text.encode("utf-8"))
