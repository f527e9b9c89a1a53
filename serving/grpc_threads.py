"""The replica's gRPC server: grpc's threaded server instead of the grpc.aio one Ray starts.

Ray Serve's direct ingress gives each ingress replica a grpc.aio server, and HAProxy sends the
gRPC port's calls to it. Profiled under load, grpc.aio's completion-queue poller thread took about
half of a replica's time per gRPC call, and Ray's per-call wrapper a tenth
(docs/performance.md#grpc). In its place, on the port Ray allocates, grpc's threaded server calls
Vigil's RPC methods (serving.grpc_service) directly; Ray's own service (`Healthz`,
`ListApplications`: HAProxy's checks, a draining replica) still goes through the handlers Ray
builds. Each call waits on a worker thread while its method runs on the replica's event loop; a
call the client cancels (or whose deadline passes) cancels the method there, as grpc.aio would.
load_tests/bench_grpc.py measures it against Ray's server in the same run.

By default (VIGIL_GRPC_SERVER=http1) the port Ray allocates is served by serving.grpc_http1 on the
replica's loop: the calls HAProxy brings over HTTP/1.1 run there, and HTTP/2 connections (HAProxy's
health check, a client dialling the replica) are relayed to this threaded server on a loopback
port. VIGIL_GRPC_SERVER=threads puts the threaded server itself on Ray's port (HAProxy then speaks
HTTP/2 to it), VIGIL_GRPC_SERVER=ray keeps Ray's own server; Vigil's HAProxy wrapper reads the same
variable to choose how it speaks to the replicas, so set it in the cluster's environment. The swap
is checked against Ray's signature when it is installed: a Ray whose hook differs keeps its
server, with a warning."""

from __future__ import annotations

import _thread
import asyncio
import collections
import errno
import inspect
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from serving.grpc_http1 import Http1GrpcServer, Rpc
from serving.proto.wire import SERVICE_NAME

logger = logging.getLogger("vigil.serving")

SERVER_ENV = "VIGIL_GRPC_SERVER"  # "http1" (the default), "threads" or "ray"
SERVER_MODES = ("http1", "threads", "ray")
THREADS_ENV = "VIGIL_GRPC_THREADS"
DEFAULT_THREADS = 256  # calls in flight on one replica; a waiting call holds a thread, not the GIL
_LOOP_CHECK_S = 1.0  # how often a waiting call looks whether the loop still runs
_HOOK = "start_grpc_server"  # the function ray.serve._private.replica starts its server with
_HOOK_PARAMETERS = ["service_handler_factory", "grpc_options", "event_loop",
                    "enable_so_reuseport"]


_servicer: Any = None  # the replica's servicer (ModelServer), whose RPC methods answer directly


def install(servicer: Any) -> bool:
    """Make this process's Ray replica start the threaded server, `servicer`'s methods answering
    Vigil's RPCs; True when it will. Called in the replica before Ray starts the replica's
    servers (the deployment's constructor)."""
    global _servicer
    if server_mode() == "ray":
        return False
    from ray.serve._private import replica

    original = getattr(replica, _HOOK, None)
    if original is None or list(inspect.signature(original).parameters) != _HOOK_PARAMETERS:
        logger.warning("Ray's replica has no %s(%s): keeping Ray's gRPC server", _HOOK,
                       ", ".join(_HOOK_PARAMETERS))
        return False
    _servicer = servicer
    setattr(replica, _HOOK, start_threaded_grpc_server)
    return True


def server_mode() -> str:
    """VIGIL_GRPC_SERVER, one of SERVER_MODES (unset or empty: http1)."""
    mode = os.environ.get(SERVER_ENV, "").strip() or "http1"
    if mode not in SERVER_MODES:
        raise ValueError(f"{SERVER_ENV}={mode!r}: expected one of {', '.join(SERVER_MODES)}")
    return mode


async def start_threaded_grpc_server(service_handler_factory: Callable, grpc_options: Any, *,
                                     event_loop: asyncio.AbstractEventLoop,
                                     enable_so_reuseport: bool = False,
                                     ) -> tuple[asyncio.Task, ThreadedGrpcServer]:
    """Ray's start_grpc_server, on threads: the same methods (Ray's built-in service and the
    config's servicer functions), the same handlers, port, message limits and return value."""
    from ray.serve._private.constants import DEFAULT_GRPC_SERVER_OPTIONS
    from ray.serve.generated.serve_pb2_grpc import add_RayServeAPIServiceServicer_to_server

    methods = MethodCollector()
    for add_servicer in [add_RayServeAPIServiceServicer_to_server,
                         *grpc_options.grpc_servicer_func_callable]:
        add_servicer(_NoServicer(), methods)  # Ray's handlers replace the servicer's
    options = DEFAULT_GRPC_SERVER_OPTIONS + [("grpc.so_reuseport", int(enable_so_reuseport))]
    threaded = ThreadedGrpcServer(methods.unary_handlers(service_handler_factory, event_loop,
                                                         _servicer), options)
    if server_mode() == "threads":
        server: Any = threaded
        _bind(threaded, f"[::]:{grpc_options.port}", grpc_options.port)
        threaded.start()
    else:
        relay_port = _bind(threaded, "127.0.0.1:0", 0)
        threaded.start()
        front = Http1GrpcServer(methods.loop_rpcs(service_handler_factory, _servicer),
                                relay_port=relay_port,
                                max_message_bytes=max_receive_bytes(options),
                                max_calls=int(os.environ.get(THREADS_ENV, DEFAULT_THREADS)))
        try:
            await front.bind("", grpc_options.port, reuse_port=enable_so_reuseport)
        except OSError as exc:
            await threaded.stop(None)
            raise RuntimeError(f"gRPC port {grpc_options.port} is not free") from OSError(
                errno.EADDRINUSE, str(exc))
        server = FrontAndRelay(front, threaded)
    return event_loop.create_task(server.wait_for_termination()), server


def _bind(server: ThreadedGrpcServer, address: str, port: int) -> int:
    try:
        return server.bind(address)
    except RuntimeError as exc:
        # Ray's port allocation retries another port when the cause says it is taken.
        raise RuntimeError(f"gRPC port {port} is not free") from OSError(
            errno.EADDRINUSE, str(exc))


def max_receive_bytes(options: list[tuple[str, Any]]) -> int:
    """grpc's max_receive_message_length among server `options` (grpc's 4 MiB without one;
    -1, no limit, as the largest message grpc can frame)."""
    value = int(dict(options).get("grpc.max_receive_message_length", 4 << 20))
    return (1 << 32) - 1 if value < 0 else value


class FrontAndRelay:
    """The HTTP/1.1 front on Ray's port and the threaded server it relays HTTP/2 to, stopped
    and awaited as one server."""

    def __init__(self, front: Http1GrpcServer, threaded: ThreadedGrpcServer) -> None:
        self.front = front
        self.threaded = threaded

    async def stop(self, grace: float | None) -> None:
        await asyncio.gather(self.front.stop(grace), self.threaded.stop(grace))

    async def wait_for_termination(self) -> None:
        await asyncio.gather(self.front.wait_for_termination(),
                             self.threaded.wait_for_termination())


def servicer_handlers(servicer: Any, loop: asyncio.AbstractEventLoop,
                      ) -> dict[str, grpc.RpcMethodHandler]:
    """Vigil's service alone, answered by `servicer`'s methods on `loop`: the replica's server
    without Ray (in-process tests and cost measurements serve with this)."""
    return _vigil_methods().unary_handlers(_no_ray_handlers, loop, servicer)


def servicer_rpcs(servicer: Any) -> dict[str, Rpc]:
    """Vigil's service alone as coroutines of `servicer` (the HTTP/1.1 front's methods without
    Ray)."""
    return _vigil_methods().loop_rpcs(_no_ray_handlers, servicer)


def _vigil_methods() -> MethodCollector:
    """Vigil's service's methods alone, as its servicer function registers them."""
    from serving.proto.wire import add_GRPCInferenceServiceServicer_to_server

    methods = MethodCollector()
    add_GRPCInferenceServiceServicer_to_server(_NoServicer(), methods)
    return methods


def _no_ray_handlers(service_method: str, streaming_type: Any) -> Callable:
    raise AssertionError(f"{service_method} is not Vigil's: no Ray here to answer it")


class _NoServicer:
    """The servicer a servicer function is given: each method None (never called)."""

    def __getattr__(self, name: str) -> None:
        return None


class MethodCollector:
    """Stands in for a server while servicer functions register their methods: keeps each
    method's handler (its request deserializer and kind) by full name."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        for generic in generic_handlers:
            for name, handler in getattr(generic, "_method_handlers", {}).items():
                self.handlers[name] = handler

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"/{service}/{method}"] = handler

    def unary_handlers(self, service_handler_factory: Callable, loop: asyncio.AbstractEventLoop,
                       servicer: Any = None) -> dict[str, grpc.RpcMethodHandler]:
        """The unary methods' threaded handlers: Vigil's service's straight to `servicer`'s
        method of the RPC's name (when given), any other (Ray's built-in health service)
        through Ray's handler. Streaming methods are left out: none is served, and grpc answers
        a method it does not know UNIMPLEMENTED."""
        hop = LoopHop(loop)
        return {name: grpc.unary_unary_rpc_method_handler(
                    _waiting_on(hop, rpc.call, wrap=rpc.serialize is None),
                    request_deserializer=rpc.deserialize, response_serializer=rpc.serialize)
                for name, rpc in self.loop_rpcs(service_handler_factory, servicer).items()}

    def loop_rpcs(self, service_handler_factory: Callable, servicer: Any = None,
                  ) -> dict[str, Rpc]:
        """The unary methods as coroutines to run on the replica's loop: Vigil's service's
        `servicer`'s method of the RPC's name (when given; a message in, a message out), any
        other (Ray's built-in health service) Ray's handler (answering serialized bytes).
        Streaming methods are left out: none is served (UNIMPLEMENTED)."""
        from ray.serve._private.proxy_request_response import gRPCStreamingType

        rpcs = {}
        for name, handler in self.handlers.items():
            if handler.request_streaming or handler.response_streaming:
                continue
            service, _, rpc = name.strip("/").partition("/")
            if servicer is not None and service == SERVICE_NAME:
                method = getattr(servicer, rpc, None)
                if method is not None:  # else not served: UNIMPLEMENTED
                    rpcs[name] = Rpc(method, handler.request_deserializer,
                                     handler.response_serializer)
                continue
            on_loop = service_handler_factory(service_method=name,
                                              streaming_type=gRPCStreamingType.UNARY_UNARY)
            rpcs[name] = Rpc(on_loop, handler.request_deserializer, None)
        return rpcs


class LoopHop:
    """Hands calls from the server's threads to one event loop. Calls that arrive while the loop
    has not yet taken the previous ones share one wake-up (under load most do), and each waiting
    thread is woken by a bare lock released from the task's done callback: measured in process,
    cheaper per call than asyncio.run_coroutine_threadsafe, whose concurrent Future chains state
    through a Condition on each side."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._scheduled = False  # a wake-up is on its way: later calls ride on it

    def submit(self, start: Callable[[], None]) -> None:
        """Run `start()` on the loop, soon (from any thread)."""
        self._pending.append(start)
        if not self._scheduled:
            # Cleared by _drain before it takes the queue: a call appended after the queue
            # empties always sees False and wakes the loop again.
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: this call fails, and so will the next
                self._scheduled = False
                raise

    def _drain(self) -> None:
        self._scheduled = False
        pending = self._pending
        while pending:
            pending.popleft()()


def _waiting_on(hop: LoopHop, handler: Callable, wrap: bool = True) -> Callable:
    """A threaded unary handler that runs `handler` on `hop`'s loop and waits for its answer;
    the call's end (a cancel, a deadline) cancels it there. `wrap`: the context as Ray's
    handlers read it."""
    loop = hop.loop

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        answered = _thread.allocate_lock()
        answered.acquire()
        task: list[asyncio.Task] = []

        def start() -> None:
            task.append(loop.create_task(
                handler(request, _AioLike(context) if wrap else context)))
            task[0].add_done_callback(lambda _: answered.release())

        def cancel() -> None:  # on the loop: the task exists by then (submitted in order)
            if task and not task[0].done():
                task[0].cancel()

        def ended() -> None:  # on a grpc thread when the call ends, answered or not
            if not (task and task[0].done()):
                hop.submit(cancel)

        hop.submit(start)
        context.add_callback(ended)
        while not answered.acquire(timeout=_LOOP_CHECK_S):
            # A loop stopped with the call on it (the process shutting down) never answers:
            # the thread must not wait for ever (the pool's threads are joined at exit).
            if not loop.is_running():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the replica is shutting down")
        try:
            return task[0].result()
        except asyncio.CancelledError:
            # The client has gone or its deadline passed: grpc sends nothing more on this call.
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before its answer")

    return call


class _AioLike:
    """A threaded server's call context as Ray reads a grpc.aio one: its trailing metadata
    a sequence before any is set (the threaded server's is None)."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def trailing_metadata(self) -> Any:
        return self._context.trailing_metadata() or ()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Methods(grpc.GenericRpcHandler):
    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = handlers

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(handler_call_details.method)


class ThreadedGrpcServer:
    """grpc's threaded server behind the part of grpc.aio.Server's interface the replica uses
    (an awaitable stop with grace, a termination to wait for)."""

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler],
                 options: list[tuple[str, Any]]) -> None:
        threads = int(os.environ.get(THREADS_ENV, DEFAULT_THREADS))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="vigil-grpc")
        self._server = grpc.server(self._pool, handlers=[_Methods(handlers)], options=options)
        self._stopped = asyncio.Event()  # made on the replica's event loop (Ray starts us there)

    def bind(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def start(self) -> None:
        self._server.start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, let those running finish for up to `grace` seconds, then end."""
        done = self._server.stop(grace)
        await asyncio.get_running_loop().run_in_executor(None, done.wait)
        self._pool.shutdown(wait=False)
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        await self._stopped.wait()
