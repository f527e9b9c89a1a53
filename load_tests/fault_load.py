"""Steady mixed load for the fault scenarios (c workers; breast_cancer and mlp, JSON and binary),
every answer timed, and the counts a scenario reads from it and from the two metrics pages."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

from vigil.core.repository import read_manifest

MODELS = ("breast_cancer", "mlp")
PAYLOADS = ("json", "binary")


@dataclass(frozen=True)
class Shot:
    """One request: when it was sent and answered (time.monotonic()), its status (0: no HTTP
    answer at all, the connection failed) and the version that answered."""

    sent: float
    answered: float
    status: int
    model: str
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass(frozen=True)
class Body:
    model: str
    payload: str
    content: bytes
    headers: dict[str, str]


def bodies(repository: Path, models: tuple[str, ...] = MODELS) -> list[Body]:
    """A one-row JSON body and a one-row binary body for each model's version 1."""
    rng = np.random.default_rng(25)
    out = []
    for model in models:
        (spec,) = read_manifest(repository / model / "1").inputs
        data = rng.standard_normal((1, int(spec.shape[1])), dtype=np.float32)
        head = {"name": spec.name, "shape": [1, int(spec.shape[1])], "datatype": "FP32"}
        out.append(Body(model, "json", orjson.dumps(
            {"inputs": [{**head, "data": data.ravel().tolist()}]}),
            {"Content-Type": "application/json"}))
        raw = data.astype("<f4").tobytes()
        header = orjson.dumps({"inputs": [{**head, "parameters": {"binary_data_size": len(raw)}}]})
        out.append(Body(model, "binary", header + raw, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header))}))
    return out


def _version(status: int, headers: httpx.Headers, content: bytes) -> str | None:
    if status != 200:
        return None
    length = headers.get("inference-header-content-length")
    try:
        doc = orjson.loads(content[: int(length)] if length else content)
    except (ValueError, orjson.JSONDecodeError):
        return None
    return doc.get("model_version") if isinstance(doc, dict) else None


class Load:
    """`concurrency` workers in a thread of their own, each sending the bodies in turn, one at a
    time, until stop(). A request that fails is not retried: the shot records it."""

    def __init__(self, base_url: str, headers: dict[str, str], request_bodies: list[Body],
                 concurrency: int = 16, timeout_s: float = 30.0) -> None:
        self.base_url, self.headers, self.bodies = base_url, headers, request_bodies
        self.concurrency, self.timeout_s = concurrency, timeout_s
        self.shots: list[Shot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()),
                                        name="fault-load", daemon=True)

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.base_url, headers=self.headers, limits=limits,
                                     timeout=self.timeout_s) as client:
            await asyncio.gather(*(self._worker(client, i) for i in range(self.concurrency)))

    async def _worker(self, client: httpx.AsyncClient, index: int) -> None:
        turn = itertools.islice(itertools.cycle(self.bodies), index, None)
        while not self._stop.is_set():
            body = next(turn)
            sent = time.monotonic()
            try:
                r = await client.post(f"/v2/models/{body.model}/infer", content=body.content,
                                      headers=body.headers)
                status, version = r.status_code, _version(r.status_code, r.headers, r.content)
            except httpx.HTTPError:
                status, version = 0, None
                await asyncio.sleep(0.05)  # no answer at all: do not spin on a dead door
            self.shots.append(Shot(sent, time.monotonic(), status, body.model, version))

    def start(self) -> Load:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def between(self, start: float, end: float) -> list[Shot]:
        """The requests sent in [start, end)."""
        return [s for s in list(self.shots) if start <= s.sent < end]

    def during(self, start: float, end: float) -> list[Shot]:
        """The requests in flight at some time in [start, end): answered at or after `start`,
        sent before `end` (those in flight when a fault struck count in its window)."""
        return [s for s in list(self.shots) if s.answered >= start and s.sent < end]

    def last_failure(self, after: float) -> float | None:
        """When the last failed request sent after `after` was answered; None when none failed."""
        failed = [s.answered for s in list(self.shots) if s.sent >= after and not s.ok]
        return max(failed) if failed else None

    def statuses(self, start: float, end: float) -> dict[int, int]:
        counts: dict[int, int] = {}
        for shot in self.between(start, end):
            counts[shot.status] = counts.get(shot.status, 0) + 1
        return dict(sorted(counts.items()))


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples (Prometheus text) whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(predicate, timeout_s: float, interval_s: float = 0.2):
    """predicate()'s first truthy value, or None after timeout_s (exceptions count as falsy)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except Exception:  # noqa: BLE001 - the thing waited for is still coming back
            pass
        time.sleep(interval_s)
    return None
