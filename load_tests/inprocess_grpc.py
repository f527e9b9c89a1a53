"""A serving replica's gRPC service in this very process, without Ray: the replica's own gRPC server
(serving.grpc_threads, grpc's threaded server) on 127.0.0.1, whose RPCs are the replica's methods
run on an event loop of their own thread, for in-process tests and per-request cost
measurements."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from serving import grpc_threads


@contextmanager
def grpc_served(server: Any, max_message_bytes: int | None = None) -> Iterator[str]:
    """Serve `server`'s RPCs (an InProcessServer) on a free 127.0.0.1 port; yields host:port.
    `max_message_bytes` sets max_receive_message_length as the Serve config does."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        options = []
        if max_message_bytes is not None:
            options.append(("grpc.max_receive_message_length", max_message_bytes))
        grpc_server = grpc_threads.ThreadedGrpcServer(
            grpc_threads.servicer_handlers(server, loop), options)
        holder["port"] = grpc_server.bind("127.0.0.1:0")
        grpc_server.start()
        holder["server"] = grpc_server
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, name="vigil-grpc-test", daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the in-process gRPC server did not start in 30 s")
    try:
        yield f"127.0.0.1:{holder['port']}"
    finally:
        asyncio.run_coroutine_threadsafe(holder["server"].stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
