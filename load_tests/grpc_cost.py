"""Where one replica's time per gRPC call goes, in process (no Ray): the split behind
docs/performance.md#grpc. h2load (a C client, in its own process) loads gRPC servers of this
process, and the CPU this process used per answered call is the server's cost:

- `transport`: grpc's threaded server answering a fixed response of the model's size from its
  worker thread: what any server on Python's grpc pays per call;
- `+ hand-off`: the same answer from a coroutine on an event loop thread, reached through
  serving.grpc_threads' hand-off, as a replica's calls reach its loop;
- `replica, threads`: the replica's servicer on that server (load_tests.inprocess_grpc): the whole
  path as it was served until HAProxy spoke HTTP/1.1 to the replicas (VIGIL_GRPC_SERVER=threads);
- `replica, HTTP/1.1`: the replica's servicer as it is served now, on the loop behind HAProxy
  (serving.grpc_http1); HAProxy's own CPU per call (ending HTTP/2) is reported beside it.

Then Vigil's own work per request, no transport at all, one request at a time on an event loop:
the servicer's ModelInfer on a parsed message (`servicer, gRPC`) and the HTTP app called as ASGI
with the same rows (`app, HTTP`: JSON at 1 row, binary at 1024). 1-row at c=64 and 1024-row at
c=8 (breast_cancer); the median of `--rounds` interleaved rounds.

    python -m load_tests.grpc_cost [--rounds 3] [--out load_tests/results/grpc_cost.json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import psutil

from load_tests import h2load
from load_tests.bench_grpc import INFER, MODEL, payloads
from load_tests.inprocess import server_app
from load_tests.inprocess_grpc import grpc_served
from load_tests.report import finish
from load_tests.targets import REPO_ROOT
from serving import grpc_threads
from serving.proto import wire

SHAPES = [("1-row c=64", 1, 64), ("1024-row c=8", 1024, 8)]
LAYERS = ["transport", "+ hand-off", "replica, threads", "replica, HTTP/1.1"]
WARMUP_S, MEASURE_S = 1.0, 6.0
DIRECT_CALLS = 1000


def fixed_answer(rows: int) -> Any:
    """An answer of the model's size for `rows` rows (labels and two probabilities a row)."""
    answer = wire.ModelInferResponse(model_name=MODEL, model_version="1")
    answer.outputs.add(name="label", datatype="INT64", shape=[rows])
    answer.outputs.add(name="probabilities", datatype="FP32", shape=[rows, 2])
    answer.raw_output_contents.extend([bytes(8 * rows), bytes(8 * rows)])
    return answer


@contextmanager
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@contextmanager
def one_method_server(answer: Callable[[Any, Any], Any]) -> Iterator[str]:
    """grpc's threaded server (as serving.grpc_threads builds it) with ModelInfer alone."""
    handler = grpc.unary_unary_rpc_method_handler(
        answer, request_deserializer=wire.ModelInferRequest.FromString,
        response_serializer=wire.ModelInferResponse.SerializeToString)
    server = grpc_threads.ThreadedGrpcServer({INFER: handler}, [])
    port = server.bind("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run(server.stop(0))


@contextmanager
def layer_target(layer: str, rows: int, models: Path) -> Iterator[str]:
    """A server of `layer` on a free port (host:port); `models` the replica's repository (a
    replica of its own each time: its batcher belongs to the loop it first ran on)."""
    if layer == "transport":
        answer = fixed_answer(rows)
        with one_method_server(lambda request, context: answer) as target:
            yield target
    elif layer == "+ hand-off":
        answer = fixed_answer(rows)

        async def on_loop(request: Any, context: Any) -> Any:
            return answer

        with loop_thread() as loop, one_method_server(grpc_threads._waiting_on(
                grpc_threads.LoopHop(loop), on_loop, wrap=False)) as target:
            yield target
    else:
        front = "threads" if layer == "replica, threads" else "http1"
        with grpc_served(server_app(models, auth="none")[0], front=front) as target:
            yield target


def loaded(target: str, body: bytes, concurrency: int) -> dict[str, float]:
    """Calls/s, this process's CPU microseconds per answered call under h2load, and HAProxy's
    (a child of this process, where one fronts the server; else 0)."""
    url, frame = f"http://{target}{INFER}", h2load.grpc_frame(body)
    h2load.run(url, frame, h2load.GRPC_HEADERS, 1, concurrency, 0.0, WARMUP_S)
    haproxy = [p for p in psutil.Process().children() if p.name().startswith("haproxy")]
    began, began_haproxy = time.process_time(), _cpu(haproxy)
    result = h2load.run(url, frame, h2load.GRPC_HEADERS, 1, concurrency, 0.0, MEASURE_S)
    cpu, haproxy_cpu = time.process_time() - began, _cpu(haproxy) - began_haproxy
    if result.errors or result.requests < MEASURE_S * 10:
        raise RuntimeError(f"{target}: {result.errors} errors, {result.requests} answered")
    return {"rps": round(result.rps, 1), "cpu_us": round(1e6 * cpu / result.requests, 1),
            "haproxy_cpu_us": round(1e6 * haproxy_cpu / result.requests, 1)}


def _cpu(processes: list[psutil.Process]) -> float:
    return sum(t.user + t.system for t in (p.cpu_times() for p in processes))


class _Context:
    """What the servicer reads of a call's context, for calls with no transport."""

    def invocation_metadata(self) -> tuple:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def set_code(self, code: Any) -> None:
        raise RuntimeError(f"the bench's request was refused: {code}")

    def set_details(self, details: str) -> None:
        raise RuntimeError(details)


def direct_costs(models: Path, rows: int) -> dict[str, float]:
    """CPU microseconds per request of Vigil's own work, one request at a time: ModelInfer on
    the message parsed from the gRPC body, and the ASGI app on HTTP's body (a replica of
    `models` of their own)."""
    servicer, app = server_app(models, auth="none")
    built = payloads(rows)
    grpc_body = built["grpc_raw"][1]
    _, http_body, http_headers = built["http_binary" if rows > 1 else "http_json"]
    path = f"/v2/models/{MODEL}/infer"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 8000),
             "headers": [(k.encode(), v.encode()) for k, v in http_headers.items()]
             + [(b"content-length", str(len(http_body)).encode())]}
    context = _Context()

    async def by_grpc() -> None:
        answer = await servicer.ModelInfer(wire.ModelInferRequest.FromString(grpc_body), context)
        assert answer.outputs

    async def by_http() -> None:
        messages = [{"type": "http.request", "body": http_body, "more_body": False}]
        statuses = []

        async def receive() -> dict:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(dict(scope), receive, send)
        assert statuses == [200], statuses

    async def timed(call: Callable[[], Any]) -> float:
        for _ in range(DIRECT_CALLS // 10):
            await call()
        began = time.process_time()
        for _ in range(DIRECT_CALLS):
            await call()
        return round(1e6 * (time.process_time() - began) / DIRECT_CALLS, 1)

    async def both() -> dict[str, float]:
        return {"servicer, gRPC": await timed(by_grpc), "app, HTTP": await timed(by_http)}

    return asyncio.run(both())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "load_tests" / "results" / "grpc_cost.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vigil-grpc-cost-") as work:
        models = Path(work) / "models"
        shutil.copytree(REPO_ROOT / "models" / MODEL, models / MODEL)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {
            shape: {layer: [] for layer in LAYERS} for shape, _, _ in SHAPES}
        direct: dict[str, list[dict[str, float]]] = {shape: [] for shape, _, _ in SHAPES}
        for round_ in range(args.rounds):
            for shape, rows, concurrency in SHAPES:
                body = payloads(rows)["grpc_raw"][1]
                for layer in LAYERS:
                    with layer_target(layer, rows, models) as target:
                        figures = loaded(target, body, concurrency)
                    runs[shape][layer].append(figures)
                    print(f"round {round_ + 1} {shape:<13} {layer:<17} {figures['rps']:8.1f} "
                          f"calls/s  {figures['cpu_us']:7.1f} us CPU a call "
                          f"(HAProxy {figures['haproxy_cpu_us']:.1f})", flush=True)
                direct[shape].append(direct_costs(models, rows))
                print(f"round {round_ + 1} {shape:<13} no transport: {direct[shape][-1]}",
                      flush=True)
    report: dict[str, Any] = {"model": MODEL, "rounds": args.rounds, "measure_s": MEASURE_S}
    for shape, layers in runs.items():
        report[shape] = {layer: {key: statistics.median(r[key] for r in figures)
                                 for key in ("rps", "cpu_us", "haproxy_cpu_us")}
                         for layer, figures in layers.items()}
        report[shape]["no transport, us CPU a request"] = {
            key: statistics.median(r[key] for r in direct[shape]) for key in direct[shape][0]}
    lines = [f"{shape} {layer}: {f['rps']:,.0f} calls/s, {f['cpu_us']:.0f} us CPU a call"
             + (f" (HAProxy {f['haproxy_cpu_us']:.0f} us)" if f["haproxy_cpu_us"] else "")
             for shape, _, _ in SHAPES for layer, f in report[shape].items() if layer in LAYERS]
    lines += [f"{shape} no transport, {path}: {us:.0f} us CPU a request"
              for shape, _, _ in SHAPES
              for path, us in report[shape]["no transport, us CPU a request"].items()]
    finish(args.out, report, {"Medians": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
