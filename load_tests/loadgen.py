"""Mixed V2 inference load for the long scenarios (soak, autoscale): bodies, a bare keep-alive
client, closed-loop (fixed concurrency) and open-loop (fixed rate) drivers, and per-interval stats."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from load_tests.targets import HOST
from vigil.core import repository as repo

# (model, payload, rows, weight): one-row requests dominate, as in live traffic; the 1024-row
# ones are the large bodies (0.33 MB of JSON for breast_cancer, 2.8 MB for mlp).
DEFAULT_MIX: tuple[tuple[str, str, int, int], ...] = (
    ("breast_cancer", "json", 1, 8),
    ("breast_cancer", "binary", 1, 8),
    ("mlp", "json", 1, 8),
    ("mlp", "binary", 1, 8),
    ("breast_cancer", "json", 1024, 1),
    ("breast_cancer", "binary", 1024, 1),
    ("mlp", "json", 1024, 1),
    ("mlp", "binary", 1024, 1),
)


# A keep-alive connection idle this long is not reused: HAProxy closes a client connection
# idle for RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S (10 s as the Makefile runs it), and a request
# written as it closes fails without an answer (the race every keep-alive client must avoid).
MAX_IDLE_S = 4.0


@dataclass(frozen=True)
class Body:
    """One ready-to-send request (headers and body) and its label for the tables."""

    kind: str
    path: str
    head: bytes  # the request line and headers up to (and without) Content-Length
    body: bytes

    def request(self, host_port: str) -> bytes:
        return self.head.replace(b"{HOST}", host_port.encode()) + (
            f"Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body
        )


def build_bodies(repository: Path, token: str | None,
                 mix: tuple[tuple[str, str, int, int], ...] = DEFAULT_MIX,
                 seed: int = 20261205) -> list[Body]:
    """The mix's bodies, each repeated `weight` times in the list (round-robin picks them)."""
    rng = np.random.default_rng(seed)
    versions = repo.scan(repository, sorted({m for m, _, _, _ in mix}))
    out: list[Body] = []
    for model, payload, rows, weight in mix:
        (spec,) = versions[model][0].manifest.inputs
        data = rng.standard_normal((rows, int(spec.shape[1])), dtype=np.float32)
        meta = {"name": spec.name, "shape": list(data.shape), "datatype": "FP32"}
        headers = [f"POST /v2/models/{model}/infer HTTP/1.1", "Host: {HOST}"]
        if token:
            headers.append(f"Authorization: Bearer {token}")
        if payload == "json":
            body = orjson.dumps({"inputs": [{**meta, "data": data.ravel()}]},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            headers.append("Content-Type: application/json")
        else:
            raw = data.astype("<f4").tobytes()
            header = orjson.dumps({"inputs": [{**meta, "parameters": {"binary_data_size": len(raw)}}],
                                   "parameters": {"binary_data_output": True}})
            body = header + raw
            headers += ["Content-Type: application/octet-stream",
                        f"Inference-Header-Content-Length: {len(header)}"]
        head = ("\r\n".join(headers) + "\r\n").encode()
        item = Body(f"{model}/{payload}/{rows}", f"/v2/models/{model}/infer", head, body)
        out.extend([item] * weight)
    return out


class Connection:
    """A bare HTTP/1.1 keep-alive client on asyncio streams (httpx's AsyncClient costs several ms
    of CPU per request, more than a replica on this machine; see bench_rollback's)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.host_port = f"{HOST}:{port}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used_at = time.monotonic()

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port, limit=1 << 22)
        assert self.reader is not None
        self.writer.write(request)
        status, payload, close = await read_response(self.reader)
        if close:
            self.close()
        self.used_at = time.monotonic()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass
class Record:
    """Requests answered since the last `take()`: latencies (s) of the good ones, failures."""

    latencies: list[float] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    late: int = 0  # open loop: arrivals sent more than 100 ms after their time (no free client)


class Load:
    """Load from a thread of its own (its own event loop): `concurrency` clients in a closed loop,
    or, when `rate` is set, requests at that rate (open loop) over at most `concurrency` clients.
    Both can change while it runs. `take()` hands over what was answered since the last call."""

    def __init__(self, port: int, bodies: list[Body], concurrency: int,
                 rate: float | None = None, timeout_s: float = 30.0) -> None:
        self.port, self.bodies, self.timeout_s = port, bodies, timeout_s
        self.concurrency, self.rate = concurrency, rate
        self._record = Record()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0
        self.sent = 0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load",
                                        daemon=True)

    def take(self) -> Record:
        with self._lock:
            record, self._record = self._record, Record()
        return record

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)

    def _pick(self) -> Body:
        body = self.bodies[self._next % len(self.bodies)]
        self._next += 1
        return body

    async def _one(self, connection: Connection, body: Body) -> None:
        started = time.monotonic()
        self.sent += 1
        try:
            status, payload = await asyncio.wait_for(
                connection.send(body.request(connection.host_port)), self.timeout_s)
            failure = None if status == 200 else f"status {status}: {payload[:160]!r}"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, IndexError) as exc:
            failure = f"{type(exc).__name__}: {exc}"[:200]
            connection.close()
        done = time.monotonic()
        with self._lock:
            self._record.by_kind[body.kind] += 1
            if failure is None:
                self._record.latencies.append(done - started)
            else:
                self._record.failures.append({"at": time.time(), "kind": body.kind,
                                              "error": failure})

    async def _run(self) -> None:
        idle: list[Connection] = []
        tasks: set[asyncio.Task] = set()
        freed = asyncio.Event()
        next_at = time.monotonic()

        def finished(task: asyncio.Task, connection: Connection) -> None:
            tasks.discard(task)
            idle.append(connection)
            freed.set()

        while not self._stop.is_set():
            while len(idle) > self.concurrency:  # concurrency was lowered: fewer connections
                idle.pop().close()
            if len(tasks) >= self.concurrency:
                freed.clear()
                try:
                    await asyncio.wait_for(freed.wait(), 0.05)
                except TimeoutError:
                    pass
                continue
            if self.rate is not None:
                now = time.monotonic()
                if next_at > now:
                    await asyncio.sleep(min(next_at - now, 0.05))
                    continue
                if now - next_at > 0.1:
                    with self._lock:
                        self._record.late += 1
                next_at = max(next_at + 1.0 / self.rate, now - 1.0)
            connection = idle.pop() if idle else Connection(self.port)
            if time.monotonic() - connection.used_at > MAX_IDLE_S:
                connection.close()  # the server may be closing it right now: a new one
            task = asyncio.get_running_loop().create_task(self._one(connection, self._pick()))
            tasks.add(task)
            task.add_done_callback(lambda t, c=connection: finished(t, c))
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_s + 5)
        for connection in idle:
            connection.close()


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1000, 2) if latencies else None


def measure_throughput(port: int, bodies: list[Body], concurrency: int, seconds: float) -> float:
    """Requests per second answered (200) by a closed loop of `concurrency` clients, after 2 s of
    warm-up; failures raise, since a soak cannot start on a failing server."""
    load = Load(port, bodies, concurrency).start()
    try:
        time.sleep(2.0)
        load.take()
        started = time.monotonic()
        time.sleep(seconds)
        record = load.take()
        elapsed = time.monotonic() - started
    finally:
        load.stop()
    if record.failures:
        raise RuntimeError(f"{len(record.failures)} failures while measuring throughput: "
                           f"{record.failures[:3]}")
    return len(record.latencies) / elapsed


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response off a keep-alive connection: (status, body, whether the server
    closes the connection after it); Content-Length or chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(None, 2)[1])
    length, chunked, close = 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value
        elif key == b"connection":
            close = value == b"close"
    if not chunked:
        return status, await reader.readexactly(length), close
    data = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        data += await reader.readexactly(size + 2)
        del data[-2:]
    await reader.readuntil(b"\r\n")
    return status, bytes(data), close
