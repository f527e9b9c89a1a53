"""The clients of the abuse scenario (load_tests.abuse): attackers that hold connections open
(idle, slowloris, stalled bodies) and well-behaved probes, each run in a process of its own, and
what their records come to (connections held, probe percentiles, time to cut attackers off)."""

from __future__ import annotations

import asyncio
import http.client
import resource
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

PATH = "/v2/models/breast_cancer/infer"
ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.05, 0.05, 0.18, 0.06] * 3
BODY = (b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ['
        + ", ".join(map(str, ROW)).encode() + b"]}]}")
PROBE_TIMEOUT_S = 10.0  # a probe that waits this long has failed
STALLED_DECLARED = 3_000_000  # what a stalled body declares; it sends ten bytes of it
SLOWLORIS_EVERY_S = 5.0  # one more header line this often


@dataclass
class Held:
    """One attacker connection: when it was opened and closed (s from the attack's start; None:
    never), and the status the server answered, if any."""

    opened: float | None = None
    closed: float | None = None
    status: int | None = None


def raise_fd_limit() -> int:
    """This process's open-file limit raised to its hard limit (5,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def attack(kind: str, count: int, port: int, token: str, seconds: float) -> list[dict]:
    """Run `count` attacker connections of `kind` ('idle', 'slowloris', 'stalled') against
    127.0.0.1:`port` for `seconds`, then close whatever is still open; their records."""
    raise_fd_limit()
    return [asdict(h) for h in asyncio.run(_attack(kind, count, port, token, seconds))]


async def _attack(kind: str, count: int, port: int, token: str, seconds: float) -> list[Held]:
    started = time.monotonic()
    records = [Held() for _ in range(count)]
    connecting = asyncio.Semaphore(256)  # opening 5,000 at once only overflows the backlog
    writers: list[asyncio.StreamWriter] = []

    async def one(held: Held) -> None:
        async with connecting:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 5.0)
            except (OSError, TimeoutError):
                return
        held.opened = time.monotonic() - started
        writers.append(writer)
        try:
            if kind == "stalled":
                writer.write(_stalled_head(token))
            elif kind == "slowloris":
                writer.write(f"POST {PATH} HTTP/1.1\r\nHost: vigil\r\n".encode())
            await writer.drain()
            reading = asyncio.ensure_future(reader.read(65536))
            while True:
                done, _ = await asyncio.wait({reading}, timeout=SLOWLORIS_EVERY_S)
                if done:
                    break
                if kind == "slowloris":  # one more header line, never the blank one
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
            first = reading.result()
            if first.startswith(b"HTTP/"):
                held.status = int(first.split(b" ", 2)[1])
        except (OSError, ValueError, IndexError):
            pass
        held.closed = time.monotonic() - started

    tasks = [asyncio.ensure_future(one(h)) for h in records]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for writer in writers:
        writer.close()
    return records


def _stalled_head(token: str) -> bytes:
    return (f"POST {PATH} HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {STALLED_DECLARED}\r\n\r\n"
            ).encode() + BODY[:10]


def probe(port: int, token: str, seconds: float, threads: int = 4,
          pause_s: float = 0.05) -> list[tuple[float, float, int]]:
    """Well-behaved clients: `threads` threads, each sending one-row requests on a new
    connection every `pause_s` for `seconds`; (start, latency, status) of each (status 0: no
    answer within PROBE_TIMEOUT_S, or the connection failed)."""
    started = time.monotonic()
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def run() -> None:
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            status = 0
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
                conn.request("POST", PATH, BODY, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
                conn.close()
            except (OSError, http.client.HTTPException):
                pass
            with lock:
                results.append((t0 - started, time.monotonic() - t0, status))
            time.sleep(pause_s)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def held_at_once(records: list[dict]) -> int:
    """The most attacker connections open at one time."""
    events = []
    for r in records:
        if r["opened"] is not None:
            events.append((r["opened"], 1))
            if r["closed"] is not None:
                events.append((r["closed"], -1))
    peak = now = 0
    for _, step in sorted(events):
        now += step
        peak = max(peak, now)
    return peak


def cut_off(records: list[dict], seconds: float) -> dict[str, Any]:
    """How the server ended the attackers' connections: how many it closed before the attack
    ended, how long each had been open by then (median, max), and the statuses it answered."""
    opened = [r for r in records if r["opened"] is not None]
    cut = [r["closed"] - r["opened"] for r in opened
           if r["closed"] is not None and r["closed"] < seconds - 0.05]
    statuses: dict[str, int] = {}
    for r in opened:
        key = str(r["status"]) if r["status"] is not None else "none"
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "attempted": len(records), "opened": len(opened), "cut": len(cut),
        "cut_median_s": round(statistics.median(cut), 2) if cut else None,
        "cut_max_s": round(max(cut), 2) if cut else None,
        "statuses": statuses,
    }


def probe_summary(results: list[tuple[float, float, int]]) -> dict[str, Any]:
    """Probe requests, failures (not 200, or no answer in time), p50/p99/max latency in ms."""
    latencies = sorted(lat for _, lat, _ in results)
    failed = sum(1 for _, _, status in results if status != 200)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 1)

    return {"requests": len(results), "failed": failed, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "waited_10s": sum(1 for lat in latencies if lat >= PROBE_TIMEOUT_S - 0.01)}
