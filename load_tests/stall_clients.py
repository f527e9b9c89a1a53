"""The stall bench's clients: a keep-alive one-row load, 16 MiB invalid bodies, and their timed senders."""

from __future__ import annotations

import http.client
import select
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from load_tests.payloads import BINARY_TYPE, JSON_TYPE
from load_tests.targets import HOST

BODY_BYTES = 16 * 1024 * 1024
KINDS = ("a_bytes_tensor", "b_fp32_wrong_width", "c_json_16mib", "d_binary_size_mismatch")


def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}  # fmt: skip


# ---------------------------------------------------------------- the one-row load (child process)


def one_row_load(
    port: int, path: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> dict[str, Any]:
    """`concurrency` threads, one keep-alive connection each, for `seconds`: latencies of answered
    requests, status and error counts, and the worst latency per second (to line up with stalls)."""
    sys.setswitchinterval(0.0005)  # a thread woken by its socket should not wait 5 ms for the GIL
    started = time.perf_counter()
    deadline = started + seconds
    latencies: list[tuple[float, float]] = []  # (start offset, seconds)
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        while (t0 := time.perf_counter()) < deadline:
            try:
                conn.request("POST", path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                errors[type(exc).__name__] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=10)
                continue
            latencies.append((t0 - started, time.perf_counter() - t0))
            statuses[response.status] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    worst: dict[int, float] = {}
    for offset, seconds_taken in latencies:
        worst[int(offset)] = max(worst.get(int(offset), 0.0), seconds_taken * 1000)
    return {
        "requests": len(latencies), "seconds": round(elapsed, 3),
        "req_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        **percentiles_ms([s for _, s in latencies]),
        "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": dict(errors),
        "non200": sum(v for k, v in statuses.items() if k != 200),
        "worst_ms_per_second": [round(worst.get(i, 0.0), 1) for i in range(len(worst))],
    }  # fmt: skip


# ---------------------------------------------------------------- invalid bodies and their senders


@dataclass(frozen=True)
class InvalidBody:
    kind: str
    request: bytes  # request line, headers and body, ready to send

    def size(self) -> int:
        return len(self.request)


def _http_request(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _binary(port: int, path: str, spec: dict[str, Any], data: bytes, declared_size: int) -> bytes:
    header = orjson.dumps({"inputs": [{**spec, "parameters": {"binary_data_size": declared_size}}]})
    headers = {"Content-Type": BINARY_TYPE, "Inference-Header-Content-Length": str(len(header))}
    return _http_request(port, path, header + data, headers)


def invalid_bodies(port: int, path: str, input_name: str, features: int) -> list[InvalidBody]:
    """The four kinds, each carrying 16 MiB: (a) a BYTES tensor (1 Mi length-prefixed 12-byte
    elements) for an FP32 input; (b) FP32 one column too wide; (c) a 16 MiB JSON request;
    (d) FP32 [N, features] whose binary_data_size claims one row more than the body holds."""
    rng = np.random.default_rng(7)
    element = b"\x0c\x00\x00\x00" + b"not-a-float!"
    count = BODY_BYTES // len(element)
    a = _binary(port, path, {"name": input_name, "shape": [count], "datatype": "BYTES"},
                element * count, BODY_BYTES)  # fmt: skip
    rows = BODY_BYTES // (4 * (features + 1))
    wide = rng.standard_normal((rows, features + 1), dtype=np.float32).astype("<f4").tobytes()
    b = _binary(port, path, {"name": input_name, "shape": [rows, features + 1], "datatype": "FP32"},
                wide, len(wide))  # fmt: skip
    sample = rng.standard_normal((256, features)).round(6)
    json_rows = BODY_BYTES * 256 // len(orjson.dumps(sample.ravel().tolist()))
    values = rng.standard_normal((json_rows, features)).round(6)
    c_body = orjson.dumps({"inputs": [{"name": input_name, "shape": [json_rows, features],
                                       "datatype": "FP32", "data": values.ravel().tolist()}]})  # fmt: skip
    c = _http_request(port, path, c_body, {"Content-Type": JSON_TYPE})
    rows = BODY_BYTES // (4 * features)
    short = rng.standard_normal((rows, features), dtype=np.float32).astype("<f4").tobytes()
    d = _binary(port, path, {"name": input_name, "shape": [rows + 1, features], "datatype": "FP32"},
                short, 4 * features * (rows + 1))  # fmt: skip
    return [InvalidBody(k, r) for k, r in zip(KINDS, (a, b, c, d), strict=True)]


@dataclass
class Refusal:
    kind: str
    seconds: float
    status: int | None  # None: no HTTP answer (reset, timeout)
    ok: bool  # 400/413 with a JSON {"error": str}
    sent_share: float  # how much of the request was sent before the answer came
    detail: str = ""


def send_invalid(port: int, body: InvalidBody, timeout_s: float) -> Refusal:
    """One invalid request on a fresh connection, timed from connect until the whole answer has
    arrived. Sending stops as soon as the server answers (an early 413 need not wait for the
    rest of the body), as curl does."""
    started = time.perf_counter()
    deadline = started + timeout_s
    view, sent = memoryview(body.request), 0
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            while sent < len(view) and time.perf_counter() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], 0.5)
                if readable:
                    break
                if writable:
                    try:
                        sent += sock.send(view[sent : sent + 1024 * 1024])
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the server may have answered and closed: read what came
            sock.settimeout(max(0.01, deadline - time.perf_counter()))
            response = http.client.HTTPResponse(sock)
            response.begin()
            data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Refusal(body.kind, time.perf_counter() - started, None, False,
                       sent / len(view), f"{type(exc).__name__}: {exc}"[:200])  # fmt: skip
    elapsed = time.perf_counter() - started
    try:
        error = orjson.loads(data).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    ok = response.status in (400, 413) and isinstance(error, str)
    detail = error if isinstance(error, str) else data[:200].decode(errors="replace")
    return Refusal(body.kind, elapsed, response.status, ok, sent / len(view), detail[:200])


class Senders:
    """`count` threads, each sending the kinds round-robin (each starting at a different one) on a
    fresh connection per body, until stopped or `max_each` bodies sent."""

    def __init__(
        self, port: int, bodies: list[InvalidBody], count: int, max_each: int, timeout_s: float
    ) -> None:
        self.port, self.bodies, self.count = port, bodies, count
        self.max_each, self.timeout_s = max_each, timeout_s
        self.refusals: list[Refusal] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _loop(self, first: int) -> None:
        for i in range(self.max_each):
            if self._stop.is_set():
                return
            body = self.bodies[(first + i) % len(self.bodies)]
            self.refusals.append(send_invalid(self.port, body, self.timeout_s))

    def start(self) -> None:
        for n in range(self.count):
            thread = threading.Thread(target=self._loop, args=(n,), name=f"sender-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Refusal]:
        """Stop after the bodies in flight (each bounded by timeout_s); every refusal so far."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        return list(self.refusals)


def refusal_summary(refusals: list[Refusal], within_s: float) -> dict[str, dict[str, Any]]:
    """Per kind: count, statuses, failures (anything but 400/413 with a JSON error), refusal
    time percentiles, the share refused correctly within `within_s`, how much of the body went
    out before the answer, and the commonest error messages."""
    out = {}
    for kind in sorted({r.kind for r in refusals}):
        mine = [r for r in refusals if r.kind == kind]
        out[kind] = {
            "count": len(mine),
            "statuses": dict(Counter(str(r.status) for r in mine)),
            "failures": sum(not r.ok for r in mine),
            **percentiles_ms([r.seconds for r in mine]),
            "within": (within := sum(r.ok and r.seconds <= within_s for r in mine)),
            "within_share": within / len(mine),
            "sent_share_median": float(np.median([r.sent_share for r in mine])),
            "details": dict(Counter(r.detail for r in mine).most_common(3)),
        }
    return out
