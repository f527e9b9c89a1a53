"""Closed-loop load over gRPC and over HTTP from one Python process, the same way for both: a
fixed number of concurrent callers, each sending pre-encoded request bytes again and again for a
fixed time (grpc.aio with identity serializers; aiohttp with a pre-built body), so the two
protocols' rows differ by transport and server path, not by client work."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import grpc
import numpy as np


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "seconds": self.seconds,
                "rps": round(self.rps, 1), "p50_ms": self.p50_ms, "p99_ms": self.p99_ms}


def _identity(raw: bytes) -> bytes:
    return raw


async def _closed_loop(call, concurrency: int, warmup_s: float, measure_s: float) -> LoadResult:
    """Run `call()` from `concurrency` callers; count what ends in the measured window."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + measure_s

    async def caller() -> None:
        nonlocal errors
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            ok = await call()
            ended = time.perf_counter()
            if began >= measure_from and ended <= stop_at:
                if ok:
                    latencies.append(ended - began)
                else:
                    errors += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    array = np.array(latencies or [0.0]) * 1000
    return LoadResult(len(latencies), errors, measure_s, round(float(np.percentile(array, 50)), 3),
                      round(float(np.percentile(array, 99)), 3))


async def grpc_load(target: str, method: str, request: bytes, metadata: tuple, concurrency: int,
                    warmup_s: float, measure_s: float) -> LoadResult:
    """`request` (a serialized message) sent to `method` ('/pkg.Service/Rpc') at `target`."""
    options = [("grpc.max_receive_message_length", 256 << 20),
               ("grpc.max_send_message_length", 256 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        rpc = channel.unary_unary(method, request_serializer=_identity,
                                  response_deserializer=_identity)

        async def call() -> bool:
            try:
                await rpc(request, metadata=metadata, timeout=60)
            except grpc.aio.AioRpcError:
                return False
            return True

        return await _closed_loop(call, concurrency, warmup_s, measure_s)


async def http_load(url: str, body: bytes, headers: dict[str, str], concurrency: int,
                    warmup_s: float, measure_s: float) -> LoadResult:
    """POST `body` to `url` over kept-alive connections, one per caller."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> bool:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                return response.status == 200

        return await _closed_loop(call, concurrency, warmup_s, measure_s)
