"""RowBatcher on real onnxruntime sessions: stacking, splitting, limits, keys, no fixed wait,
failure isolation, live reconfiguration and cancelled requests. Each test owns its event loop
(asyncio.run) and its batcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from serving.batching import RowBatcher, Tensors
from serving.protocol import ModelRunFailed
from vigil.core.tensors import TensorSpec
from serving.runtime import OnnxModel
from serving.settings import BatchSettings
from tests.graphs import COUPLED_MODELS


class Recorder:
    """A BatchObserver that keeps what it is told, and a run wrapper that keeps what it ran."""

    def __init__(self, run: Callable[[Tensors], Tensors]) -> None:
        self._run = run
        self.batches: list[tuple[int, int]] = []  # (rows, requests) per model run
        self.waits: list[float] = []
        self.calls: list[dict[str, tuple[int, ...]]] = []  # input shapes per model run

    def batch_ran(self, rows: int, requests: int, seconds: float) -> None:
        assert seconds >= 0
        self.batches.append((rows, requests))

    def request_queued(self, wait_seconds: float) -> None:
        assert wait_seconds >= 0
        self.waits.append(wait_seconds)

    def run(self, inputs: Tensors) -> Tensors:
        self.calls.append({n: a.shape for n, a in inputs.items()})
        return self._run(inputs)


def _go(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), timeout=20))


def _batcher(
    run: Callable[[Tensors], Tensors], declared: int = 1_000_000, **settings: Any
) -> tuple[RowBatcher, Recorder]:
    """A batcher for a version that declares `declared` rows (model.yaml max_batch_rows)."""
    recorder = Recorder(run)
    batcher = RowBatcher(recorder.run, BatchSettings(**settings), declared, observer=recorder)
    return batcher, recorder


def _submit_all(batcher: RowBatcher, name: str, requests: list[np.ndarray],
                rows: int | None = None, return_exceptions: bool = False) -> list[Any]:
    """Submit every request at once (input `name`, `rows` rows or its length), wait for every
    answer (or exception), and close the batcher."""

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(batcher.submit({name: x}, rows or len(x)) for x in requests),
            return_exceptions=return_exceptions)

    try:
        return _go(main)
    finally:
        batcher.close()


def _rows(width: int, counts: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, width)).astype(np.float32) for n in counts]


def _assert_exact(got: Tensors, want: Tensors) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


# ---------------------------------------------------------------- stacking and splitting


def test_concurrent_requests_share_one_run_and_get_their_own_rows(mlp: OnnxModel) -> None:
    requests = _rows(256, [1, 3, 2, 1, 4, 1, 2, 5])
    batcher, rec = _batcher(mlp.run, max_batch_rows=64, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "input", requests)
    assert rec.batches == [(19, 8)]
    assert rec.calls == [{"input": (19, 256)}]
    assert len(rec.waits) == 8
    for x, got in zip(requests, results):
        assert got["logits"].shape == (len(x), 10)
        _assert_exact(got, mlp.run({"input": x}))
    assert batcher.queued_rows == 0


def test_breast_cancer_batched_rows_match_alone(cancer: OnnxModel) -> None:
    requests = [x * 100 for x in _rows(30, [2, 1, 3], seed=5)]
    batcher, rec = _batcher(cancer.run, max_batch_rows=16, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "input", requests)
    assert rec.batches == [(6, 3)]
    for x, got in zip(requests, results):
        _assert_exact(got, cancer.run({"input": x}))


def test_max_batch_rows_is_respected(mlp: OnnxModel) -> None:
    counts = [2, 2, 2, 3, 1, 4, 6, 5]  # 6 and 5 reach the limit of 5: they run alone
    requests = _rows(256, counts, seed=1)
    batcher, rec = _batcher(mlp.run, max_batch_rows=5, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "input", requests)
    # Queue order 2,2,2,3,1,4: [2,2] (the next 2 would make 6), [2,3], [1,4].
    assert sorted(rec.batches) == sorted([(4, 2), (5, 2), (5, 2), (6, 1), (5, 1)])
    assert sum(shape["input"][0] for shape in rec.calls) == sum(counts)
    assert all(shape["input"][0] <= 5 for shape in rec.calls if shape["input"][0] != 6)
    for x, got in zip(requests, results):
        _assert_exact(got, mlp.run({"input": x}))


def test_different_row_shapes_never_share_a_batch(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.double(), (TensorSpec("x", "FP32", (-1, -1)),), (TensorSpec("y", "FP32", (-1, -1)),)
    )
    widths = [2, 3, 2, 3, 2]
    requests = [np.full((1, w), i, np.float32) for i, w in enumerate(widths)]
    batcher, rec = _batcher(model.run, max_batch_rows=64, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "x", requests, rows=1)
    # The width-2 requests go first (the queue head's key), the width-3 ones keep their order.
    assert rec.calls == [{"x": (3, 2)}, {"x": (2, 3)}]
    assert rec.batches == [(3, 3), (2, 2)]
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got["y"], np.full((1, widths[i]), 2 * i, np.float32))


def test_disabled_runs_each_request_alone(mlp: OnnxModel) -> None:
    requests = _rows(256, [1, 2, 3, 1], seed=2)
    batcher, rec = _batcher(mlp.run, enabled=False, max_batch_rows=64)

    results = _submit_all(batcher, "input", requests)
    assert sorted(rec.batches) == [(1, 1), (1, 1), (2, 1), (3, 1)]
    assert sorted(c["input"][0] for c in rec.calls) == [1, 1, 2, 3]
    assert rec.waits == [0.0] * 4
    for x, got in zip(requests, results):
        _assert_exact(got, mlp.run({"input": x}))


# ---------------------------------------------------------------- only declared versions batch


def _coupled(load_tiny, graphs, name: str, max_batch_rows: int = 0) -> OnnxModel:
    builder, inputs, outputs = COUPLED_MODELS[name]
    return load_tiny(builder(), inputs, outputs, name=name, max_batch_rows=max_batch_rows)


@pytest.mark.parametrize("name", ["reduce_sum", "cumsum"])
def test_a_model_that_is_not_row_independent_answers_each_request_alone(
    load_tiny, graphs, name: str
) -> None:
    model = _coupled(load_tiny, graphs, name)
    assert model.batchable is False and model.max_batch_rows == 0
    requests = [np.full((n, 2), i + 1, np.float32) for i, n in enumerate([1, 3, 2, 1, 4, 2, 1, 3])]
    batcher, rec = _batcher(model.run, declared=model.max_batch_rows, max_batch_rows=256,
                            batch_wait_timeout_s=0.01)

    results = _submit_all(batcher, "x", requests)
    assert sorted(rec.batches) == sorted((len(x), 1) for x in requests)  # one run per request
    for x, got in zip(requests, results):
        _assert_exact(got, model.run({"x": x}))  # exactly its solo answer


@pytest.mark.parametrize("name", ["reduce_sum", "cumsum"])
def test_stacking_such_a_model_would_mix_clients_data(load_tiny, graphs, name: str) -> None:
    # The control for the test above: were the rows stacked, the answers would be wrong. (Two
    # one-row requests: reduce_sum's [2] output then even passes for a batch axis of 2 rows.)
    model = _coupled(load_tiny, graphs, name)
    requests = [np.full((1, 2), i + 1, np.float32) for i in range(2)]
    batcher, _ = _batcher(model.run, declared=64, max_batch_rows=64, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "x", requests, return_exceptions=True)
    solo = [model.run({"x": x})["y"] for x in requests]
    assert not all(np.array_equal(got["y"], want) for got, want in zip(results, solo))


def test_a_fixed_batch_of_one_is_never_stacked_and_never_fails_first(load_tiny, graphs) -> None:
    model = _coupled(load_tiny, graphs, "fixed_pair")
    requests = [np.array([[i, -i]], np.float32) for i in range(8)]
    batcher, rec = _batcher(model.run, declared=model.max_batch_rows, max_batch_rows=256,
                            batch_wait_timeout_s=0.01)

    results = _submit_all(batcher, "x", requests, rows=1)
    assert rec.calls == [{"x": (1, 2)}] * 8  # eight runs of one request: no failed batch first
    for x, got in zip(requests, results):
        np.testing.assert_array_equal(got["y"], 3 * x)


def test_the_declaration_caps_the_live_setting(mlp: OnnxModel) -> None:
    requests = _rows(256, [1] * 7, seed=9)
    batcher, rec = _batcher(mlp.run, declared=3, max_batch_rows=256, batch_wait_timeout_s=0.0)
    assert batcher.max_rows == 3

    results = _submit_all(batcher, "input", requests, rows=1)
    assert rec.batches == [(3, 3), (3, 3), (1, 1)]
    for x, got in zip(requests, results):
        _assert_exact(got, mlp.run({"input": x}))


def test_lowering_the_cap_below_a_queued_request_runs_it_alone(mlp: OnnxModel) -> None:
    # Queued at a cap of 100, then the cap drops to 2: a 4-row request can no longer join any
    # batch. It must run alone, not leave the worker looping without ever awaiting (which froze
    # the replica's event loop: this test would then never reach its timeout).
    requests = _rows(256, [4, 1, 4], seed=10)
    batcher, rec = _batcher(mlp.run, max_batch_rows=100, batch_wait_timeout_s=0.0)

    async def main() -> list[Tensors]:
        tasks = [asyncio.create_task(batcher.submit({"input": x}, len(x))) for x in requests]
        await asyncio.sleep(0)  # all queued, the worker not started
        batcher.reconfigure(BatchSettings(max_batch_rows=2, batch_wait_timeout_s=0.0))
        return await asyncio.gather(*tasks)

    try:
        results = _go(main)
    finally:
        batcher.close()
    assert rec.batches == [(4, 1), (1, 1), (4, 1)]
    for x, got in zip(requests, results):
        _assert_exact(got, mlp.run({"input": x}))


# ---------------------------------------------------------------- waiting


def test_a_lone_request_does_not_wait_for_the_timeout(cancer: OnnxModel) -> None:
    (x,) = _rows(30, [1], seed=3)
    batcher, rec = _batcher(cancer.run, max_batch_rows=64, batch_wait_timeout_s=0.5)

    async def main() -> list[float]:
        elapsed = []
        for _ in range(3):  # sequential lone requests: none of them waits
            started = time.perf_counter()
            await batcher.submit({"input": x}, 1)
            elapsed.append(time.perf_counter() - started)
        return elapsed

    try:
        elapsed = _go(main)
    finally:
        batcher.close()
    assert rec.batches == [(1, 1)] * 3
    assert max(elapsed) < 0.25, elapsed


def test_under_continuous_load_a_batch_waits_for_late_arrivals(cancer: OnnxModel) -> None:
    a, b, c, d = _rows(30, [1, 1, 1, 1], seed=4)

    def slow_run(inputs: Tensors) -> Tensors:  # a model that takes 100 ms per batch
        time.sleep(0.1)
        return cancer.run(inputs)

    batcher, rec = _batcher(slow_run, max_batch_rows=2, batch_wait_timeout_s=1.0)

    async def main() -> None:
        first = asyncio.gather(batcher.submit({"input": a}, 1), batcher.submit({"input": b}, 1))
        await asyncio.sleep(0.02)  # [a, b] is running: the worker is busy, traffic concurrent

        async def late() -> Tensors:
            await asyncio.sleep(0.15)  # after [a, b] finished and [c] started to form
            return await batcher.submit({"input": d}, 1)

        started = time.perf_counter()
        await asyncio.gather(first, batcher.submit({"input": c}, 1), late())
        # The batch holding c waited for d, then ran full at 2 rows: nobody waited the second.
        assert time.perf_counter() - started < 0.9

    try:
        _go(main)
    finally:
        batcher.close()
    assert rec.batches == [(2, 2), (2, 2)]


def test_after_a_quiet_spell_a_lone_request_does_not_wait(cancer: OnnxModel) -> None:
    a, b, c = _rows(30, [1, 1, 1], seed=5)
    batcher, rec = _batcher(cancer.run, max_batch_rows=8, batch_wait_timeout_s=0.5)

    async def main() -> float:
        await asyncio.gather(batcher.submit({"input": a}, 1), batcher.submit({"input": b}, 1))
        await asyncio.sleep(0.05)  # the queue ran dry: load paused
        started = time.perf_counter()
        await batcher.submit({"input": c}, 1)
        return time.perf_counter() - started

    try:
        elapsed = _go(main)
    finally:
        batcher.close()
    assert elapsed < 0.25
    assert rec.batches == [(2, 2), (1, 1)]


# ---------------------------------------------------------------- failures


def test_a_failing_request_fails_alone(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.gather([10, 20, 30]),
        (TensorSpec("idx", "INT64", (-1,)),),
        (TensorSpec("out", "INT64", (-1,)),),
    )
    requests = [np.array([0, 1]), np.array([5]), np.array([2]), np.array([2, 0])]
    batcher, rec = _batcher(model.run, max_batch_rows=64, batch_wait_timeout_s=0.0)

    results = _submit_all(batcher, "idx", requests, return_exceptions=True)
    ok_1, failed, ok_2, ok_3 = results
    np.testing.assert_array_equal(ok_1["out"], [10, 20])
    np.testing.assert_array_equal(ok_2["out"], [30])
    np.testing.assert_array_equal(ok_3["out"], [30, 10])
    # The model's failure on an accepted request: 502, onnxruntime's error as its cause.
    assert isinstance(failed, ModelRunFailed) and failed.status_code == 502
    assert isinstance(failed.__cause__, ort.capi.onnxruntime_pybind11_state.InvalidArgument)
    assert "idx=5" in str(failed.__cause__)
    # One stacked run (6 rows) that failed, then each request again on its own.
    assert rec.calls == [{"idx": (6,)}, {"idx": (2,)}, {"idx": (1,)}, {"idx": (1,)}, {"idx": (2,)}]
    assert rec.batches == [(6, 4)]


def test_a_lone_failing_request_gets_its_exception(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.gather([10, 20, 30]),
        (TensorSpec("idx", "INT64", (-1,)),),
        (TensorSpec("out", "INT64", (-1,)),),
    )
    batcher, rec = _batcher(model.run, max_batch_rows=64, batch_wait_timeout_s=0.0)

    async def main() -> Tensors:
        with pytest.raises(ModelRunFailed, match="model 'tiny' version '1' failed to run") as info:
            await batcher.submit({"idx": np.array([-4])}, 1)
        assert "idx=-4" in str(info.value.__cause__)
        return await batcher.submit({"idx": np.array([-1])}, 1)  # the batcher still works

    try:
        after = _go(main)
    finally:
        batcher.close()
    np.testing.assert_array_equal(after["out"], [30])
    assert rec.calls == [{"idx": (1,)}, {"idx": (1,)}]


# ---------------------------------------------------------------- live changes and cancellation


def test_reconfigure_applies_to_the_next_batch(mlp: OnnxModel) -> None:
    requests = _rows(256, [1] * 6, seed=6)
    batcher, rec = _batcher(mlp.run, max_batch_rows=100, batch_wait_timeout_s=0.0)

    async def main() -> tuple[list[Tensors], list[Tensors]]:
        first = await asyncio.gather(*(batcher.submit({"input": x}, 1) for x in requests))
        batcher.reconfigure(BatchSettings(max_batch_rows=2, batch_wait_timeout_s=0.0))
        second = await asyncio.gather(*(batcher.submit({"input": x}, 1) for x in requests))
        return first, second

    try:
        first, second = _go(main)
    finally:
        batcher.close()
    assert batcher.settings.max_batch_rows == 2
    assert rec.batches == [(6, 6), (2, 2), (2, 2), (2, 2)]
    for x, a, b in zip(requests, first, second):
        want = mlp.run({"input": x})
        _assert_exact(a, want)
        _assert_exact(b, want)


def test_reconfigure_keeps_queued_requests(mlp: OnnxModel) -> None:
    requests = _rows(256, [1] * 4, seed=7)
    batcher, rec = _batcher(mlp.run, max_batch_rows=100, batch_wait_timeout_s=0.0)

    async def main() -> list[Tensors]:
        tasks = [asyncio.create_task(batcher.submit({"input": x}, 1)) for x in requests]
        await asyncio.sleep(0)  # every task queues its request; the worker has not run yet
        assert batcher.queued_rows == 4
        batcher.reconfigure(BatchSettings(max_batch_rows=3, batch_wait_timeout_s=0.0))
        return await asyncio.gather(*tasks)

    try:
        results = _go(main)
    finally:
        batcher.close()
    assert rec.batches == [(3, 3), (1, 1)]
    for x, got in zip(requests, results):
        _assert_exact(got, mlp.run({"input": x}))


def test_a_cancelled_request_is_skipped(mlp: OnnxModel) -> None:
    requests = _rows(256, [1, 4, 2, 3], seed=8)
    batcher, rec = _batcher(mlp.run, max_batch_rows=100, batch_wait_timeout_s=0.0)

    async def main() -> list[Any]:
        tasks = [asyncio.create_task(batcher.submit({"input": x}, len(x))) for x in requests]
        await asyncio.sleep(0)  # all four queued (10 rows), the worker not yet started
        assert batcher.queued_rows == 10
        tasks[1].cancel()  # a client that went away
        return await asyncio.gather(*tasks, return_exceptions=True)

    try:
        results = _go(main)
    finally:
        batcher.close()
    assert isinstance(results[1], asyncio.CancelledError)
    assert rec.calls == [{"input": (6, 256)}]  # 1 + 2 + 3: the 4 cancelled rows never ran
    assert rec.batches == [(6, 3)]
    assert batcher.queued_rows == 0
    for i in (0, 2, 3):
        _assert_exact(results[i], mlp.run({"input": requests[i]}))


# ---------------------------------------------------------------- inline runs


def _thread_recording(run: Callable[[Tensors], Tensors], delay_s: float = 0.0):
    import threading

    threads: list[str] = []

    def wrapped(inputs: Tensors) -> Tensors:
        threads.append(threading.current_thread().name)
        if delay_s:
            time.sleep(delay_s)
        return run(inputs)

    return wrapped, threads


def test_a_fast_model_runs_lone_requests_inline_after_its_first_timed_run(cancer: OnnxModel) -> None:
    run, threads = _thread_recording(cancer.run)
    # The ceiling at its maximum (10 ms): a run of ~20 us stays under it on a busy machine too.
    batcher, recorder = _batcher(run, declared=1024, inline_below_s=0.01)
    x = _rows(30, [1])[0]

    async def go() -> list[Tensors]:
        return [await batcher.submit({"input": x}, 1) for _ in range(10)]

    answers = _go(go)
    assert threads[0].startswith("vigil-batch")  # the first run is timed on the batch thread
    # Once the moving average is under inline_below_s (the first run, with onnxruntime's
    # warm-up, may keep it above for a run or two): no hop, the event loop's own thread.
    assert threads[-5:] == ["MainThread"] * 5
    for got in answers:
        _assert_exact(got, cancer.run({"input": x}))
    assert recorder.batches == [(1, 1)] * 10 and len(recorder.waits) == 10
    batcher.close()


def test_a_slow_model_never_runs_inline(cancer: OnnxModel) -> None:
    run, threads = _thread_recording(cancer.run, delay_s=0.002)  # 2 ms > inline_below_s
    batcher, _ = _batcher(run, declared=1024)
    x = _rows(30, [1])[0]

    async def go() -> None:
        for _ in range(4):
            await batcher.submit({"input": x}, 1)

    _go(go)
    assert all(t.startswith("vigil-batch") for t in threads)
    batcher.close()


@pytest.mark.parametrize("settings", [{"inline_below_s": 0.0}, {}])
def test_inline_is_off_when_disabled_or_for_large_requests(cancer: OnnxModel, settings) -> None:
    run, threads = _thread_recording(cancer.run)
    batcher, _ = _batcher(run, declared=1024, **settings)
    rows = 1 if settings else 65  # disabled; or more than INLINE_MAX_ROWS rows

    async def go() -> None:
        for x in _rows(30, [rows] * 4):
            await batcher.submit({"input": x}, rows)

    _go(go)
    assert all(t.startswith("vigil-batch") for t in threads)
    batcher.close()


def test_concurrent_requests_still_batch_when_the_model_is_fast(cancer: OnnxModel) -> None:
    """A caller with other requests in flight (the replica knows) never runs inline: a burst
    still meets in the queue and shares runs."""
    run, threads = _thread_recording(cancer.run)
    batcher, recorder = _batcher(run, declared=1024)
    xs = _rows(30, [1] * 33)

    async def go() -> list[Tensors]:
        await batcher.submit({"input": xs[0]}, 1)  # timed: the model is known to be fast
        holder = asyncio.get_running_loop().create_future()

        async def one(x: np.ndarray) -> Tensors:
            await holder  # all start together
            return await batcher.submit({"input": x}, 1, alone=False)

        tasks = [asyncio.create_task(one(x)) for x in xs[1:]]
        await asyncio.sleep(0)
        holder.set_result(None)
        return await asyncio.gather(*tasks)

    answers = _go(go)
    for x, got in zip(xs[1:], answers):
        _assert_exact(got, cancer.run({"input": x}))
    assert all(t.startswith("vigil-batch") for t in threads[1:])
    assert len(recorder.batches) < 1 + 32
    assert sum(rows for rows, _ in recorder.batches) == 33
    batcher.close()
