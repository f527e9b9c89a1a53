"""The replica's gRPC server that stands in for Ray's grpc.aio one: the same methods through Ray's
handlers, on the replica's loop; cancels reach the handler; stop ends it. Each served test runs
on every path a call can take: grpc's threaded server on Ray's port (VIGIL_GRPC_SERVER=threads);
by default the HTTP/1.1 front (serving.grpc_http1) there, reached through HAProxy as Ray's
rewritten config has it, or by HTTP/2 straight to the port (relayed to the threaded server)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from types import SimpleNamespace

import grpc
import pytest

from load_tests.inprocess_grpc import haproxy_http1_front
from load_tests.procs import free_port
from serving import grpc_threads
from serving.proto import wire

MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
HEALTHZ = "/ray.serve.RayServeAPIService/Healthz"


class FakeReplica:
    """Ray's handler factory as the replica gives it: an async handler per method that
    answers serialized bytes and sets the call's code on the context."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.cancelled = asyncio.Event()
        self.loops: set[int] = set()

    def factory(self, service_method: str, streaming_type: object):
        async def handler(request: object, context: grpc.ServicerContext) -> bytes:
            self.loops.add(id(asyncio.get_running_loop()))
            self.calls.append((service_method, request))
            if service_method == MODEL_READY and request.name == "slow":
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            if service_method == MODEL_READY and request.name == "bug":
                raise RuntimeError("a bug")
            if service_method == MODEL_READY and request.name == "missing":
                context.set_code(grpc.StatusCode.NOT_FOUND)
                context.set_details("no model 'missing'")
                return b""
            if service_method == HEALTHZ:
                from ray.serve.generated.serve_pb2 import HealthzResponse
                return HealthzResponse(message="success").SerializeToString()
            return wire.ModelReadyResponse(ready=True).SerializeToString()
        return handler


class FakeServicer:
    """Vigil's servicer: its RPC methods answer messages (serialized by the server)."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.cancelled = asyncio.Event()

    async def ServerLive(self, request, context):  # noqa: N802
        self.metadata.append(dict(context.invocation_metadata()))
        return wire.ServerLiveResponse(live=True)

    async def ModelReady(self, request, context):  # noqa: N802
        if request.name == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if request.name == "bug":
            raise RuntimeError("a bug")
        if request.name == "missing":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no model 'missing'")
        return wire.ModelReadyResponse(ready=request.name != "missing")


PATHS = ["threads", "http1 via HAProxy", "http1 relayed"]


@pytest.fixture(params=[f"{handlers}, {path}" for handlers in ("ray's handlers", "the servicer")
                        for path in PATHS])
def served(request):
    handlers, _, path = request.param.partition(", ")
    path = path or "http1 via HAProxy"
    loop = asyncio.new_event_loop()
    replica = FakeReplica()
    servicer = FakeServicer() if handlers == "the servicer" else None
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(grpc_threads, "_servicer", servicer)
    if path == "threads":
        monkeypatch.setenv(grpc_threads.SERVER_ENV, "threads")
    else:
        monkeypatch.delenv(grpc_threads.SERVER_ENV, raising=False)
    port = free_port()
    options = SimpleNamespace(
        port=port, grpc_servicer_func_callable=[wire.add_GRPCInferenceServiceServicer_to_server])

    async def start():
        return await grpc_threads.start_threaded_grpc_server(replica.factory, options,
                                                            event_loop=loop)

    import threading
    ready = threading.Event()
    holder = {}

    def run():
        asyncio.set_event_loop(loop)
        holder["task"], holder["server"] = loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    with contextlib.ExitStack() as stack:
        address = (stack.enter_context(haproxy_http1_front(port)) if path == "http1 via HAProxy"
                   else f"127.0.0.1:{port}")
        channel = grpc.insecure_channel(address)
        yield SimpleNamespace(replica=replica, servicer=servicer, channel=channel, loop=loop,
                              port=port, path=path, **holder)
        channel.close()
    monkeypatch.undo()
    asyncio.run_coroutine_threadsafe(holder["server"].stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _call(channel, method, request, response_type, timeout=5):
    rpc = channel.unary_unary(method, request_serializer=type(request).SerializeToString,
                              response_deserializer=response_type.FromString)
    return rpc(request, timeout=timeout)


def test_a_call_runs_rays_handler_on_the_replicas_loop(served):
    answer = _call(served.channel, MODEL_READY, wire.message("ModelReadyRequest")(name="mlp"),
                   wire.ModelReadyResponse)
    assert answer.ready
    if served.servicer is not None:
        assert served.replica.calls == []  # Vigil's RPC went to the servicer, not through Ray
        return
    (method, request), = served.replica.calls
    assert method == MODEL_READY and request.name == "mlp"  # deserialized as the proto says
    assert served.replica.loops == {id(served.loop)}


@pytest.mark.parametrize("served", ["the servicer"], indirect=True)
def test_the_servicer_reads_the_calls_metadata(served):
    rpc = served.channel.unary_unary("/inference.GRPCInferenceService/ServerLive",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=wire.ServerLiveResponse.FromString)
    assert rpc(wire.message("ServerLiveRequest")(), metadata=[("authorization", "Bearer x")],
               timeout=5).live
    assert served.servicer.metadata[-1]["authorization"] == "Bearer x"


def test_rays_builtin_health_check_is_served(served):
    from ray.serve.generated.serve_pb2 import HealthzRequest, HealthzResponse
    assert _call(served.channel, HEALTHZ, HealthzRequest(), HealthzResponse).message == "success"


def test_the_code_and_details_a_handler_sets_reach_the_client(served):
    with pytest.raises(grpc.RpcError) as refused:
        _call(served.channel, MODEL_READY, wire.message("ModelReadyRequest")(name="missing"),
              wire.ModelReadyResponse)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "no model 'missing'"


def test_a_deadline_cancels_the_handler_on_the_loop(served):
    with pytest.raises(grpc.RpcError) as refused:
        _call(served.channel, MODEL_READY, wire.message("ModelReadyRequest")(name="slow"),
              wire.ModelReadyResponse, timeout=0.3)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    handler = served.servicer or served.replica
    assert asyncio.run_coroutine_threadsafe(
        asyncio.wait_for(handler.cancelled.wait(), 5), served.loop).result(10) is True


def test_an_unknown_method_is_unimplemented(served):
    with pytest.raises(grpc.RpcError) as refused:
        _call(served.channel, "/inference.GRPCInferenceService/Nope",
              wire.message("ModelReadyRequest")(), wire.ModelReadyResponse)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_taken_port_is_refused_as_ray_expects_it_to_retry(served):
    options = SimpleNamespace(port=served.port, grpc_servicer_func_callable=[])

    async def start():
        return await grpc_threads.start_threaded_grpc_server(FakeReplica().factory, options,
                                                            event_loop=served.loop)

    with pytest.raises(RuntimeError) as refused:
        asyncio.run_coroutine_threadsafe(start(), served.loop).result(10)
    assert isinstance(refused.value.__cause__, OSError)


def test_stop_ends_the_servers_termination_task(served):
    asyncio.run_coroutine_threadsafe(served.server.stop(0), served.loop).result(10)
    assert asyncio.run_coroutine_threadsafe(
        asyncio.wait_for(asyncio.shield(served.task), 5), served.loop).result(10) is None


def test_install_swaps_rays_hook_whose_signature_it_checked(monkeypatch):
    from ray.serve._private import replica
    original = replica.start_grpc_server
    assert list(inspect.signature(original).parameters) == grpc_threads._HOOK_PARAMETERS
    monkeypatch.setattr(replica, "start_grpc_server", original)
    monkeypatch.delenv(grpc_threads.SERVER_ENV, raising=False)
    assert grpc_threads.install(object()) is True
    assert replica.start_grpc_server is grpc_threads.start_threaded_grpc_server
    monkeypatch.setattr(replica, "start_grpc_server", original)
    monkeypatch.setenv(grpc_threads.SERVER_ENV, "ray")
    assert grpc_threads.install(object()) is False
    assert replica.start_grpc_server is original


def test_a_ray_with_another_hook_keeps_its_own_server(monkeypatch):
    from ray.serve._private import replica

    async def changed(factory, options):  # a later Ray's different signature
        raise AssertionError("not called")

    monkeypatch.setattr(replica, "start_grpc_server", changed)
    monkeypatch.delenv(grpc_threads.SERVER_ENV, raising=False)
    assert grpc_threads.install(object()) is False
    assert replica.start_grpc_server is changed


# ------------------------------------------------------------------ the hand-off to the loop


def test_calls_queued_while_the_loop_is_busy_share_one_wake_up_and_run_in_order():
    import threading

    loop = asyncio.new_event_loop()
    hop = grpc_threads.LoopHop(loop)
    ran: list[int] = []
    wakeups = []
    original = loop.call_soon_threadsafe

    def counting(callback, *args):
        wakeups.append(callback)
        return original(callback, *args)

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    threads = [threading.Thread(target=hop.submit, args=(lambda i=i: ran.append(i),))
               for i in range(50)]
    for t in threads:  # the loop is not running: every call waits for the one wake-up
        t.start()
        t.join()
    assert len(wakeups) == 1
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == list(range(50))
    hop.submit(lambda: ran.append(50))  # the queue was taken: the next call wakes it again
    assert len(wakeups) == 2
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran[-1] == 50
    loop.close()


def test_many_concurrent_calls_each_get_their_own_answer(served):
    from concurrent.futures import ThreadPoolExecutor

    names = [f"m{i}" for i in range(200)]
    rpc = served.channel.unary_unary(
        MODEL_READY, request_serializer=wire.message("ModelReadyRequest").SerializeToString,
        response_deserializer=wire.ModelReadyResponse.FromString)
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(
            lambda n: rpc(wire.message("ModelReadyRequest")(name=n), timeout=10), names))
    assert all(a.ready for a in answers)
    if served.servicer is None:  # Ray's handlers record each request they answered
        assert sorted(r.name for m, r in served.replica.calls if m == MODEL_READY) == sorted(names)


def test_a_handler_that_raises_fails_its_call_alone(served):
    with pytest.raises(grpc.RpcError) as failed:
        _call(served.channel, MODEL_READY, wire.message("ModelReadyRequest")(name="bug"),
              wire.ModelReadyResponse)
    assert failed.value.code() == grpc.StatusCode.UNKNOWN
    assert _call(served.channel, MODEL_READY, wire.message("ModelReadyRequest")(name="m"),
                 wire.ModelReadyResponse).ready


def test_a_closed_loop_fails_each_call_instead_of_leaving_it_waiting():
    loop = asyncio.new_event_loop()
    loop.close()
    hop = grpc_threads.LoopHop(loop)
    for _ in range(2):  # the second call is refused too, not queued behind a wake-up never sent
        with pytest.raises(RuntimeError, match="closed"):
            hop.submit(lambda: None)


def test_a_call_on_a_loop_that_stops_is_answered_unavailable_not_left_waiting(monkeypatch):
    """A replica shutting down stops its loop with calls on it: their threads answer and end
    (they are joined when the process exits) instead of waiting for ever."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(grpc_threads, "_LOOP_CHECK_S", 0.05)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    started = threading.Event()

    async def never(request, context):
        started.set()
        await asyncio.sleep(3600)

    class Context:
        def add_callback(self, callback):
            return True

        def abort(self, code, details):
            raise RuntimeError(f"{code.name}: {details}")

    call = grpc_threads._waiting_on(grpc_threads.LoopHop(loop), never, wrap=False)
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(call, object(), Context())
        assert started.wait(5)
        loop.call_soon_threadsafe(loop.stop)
        with pytest.raises(RuntimeError, match="UNAVAILABLE: the replica is shutting down"):
            answer.result(5)
    thread.join(5)
    for task in asyncio.all_tasks(loop):  # the call's coroutine, left on the stopped loop
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
