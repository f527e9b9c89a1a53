"""The replica's sample buffer: bounded, never blocking, counting what it drops."""

import numpy as np

from serving.sampling import SampleBuffer


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"input": np.arange(start, start + n, dtype=np.float32).reshape(n, 1)}


def test_rows_and_facts_come_back_stacked_per_version():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10)
    buf.record("m", "1", 0.010, 200, _rows(0, 2), {"y": np.array([1, 2])})
    buf.record("m", "1", 0.020, 200, _rows(2, 3), {"y": np.array([3, 4, 5])})
    buf.record("m", "1", 0.005, 400)  # a rejected request: facts only
    buf.record("m", "2", 0.030, 200, _rows(9, 1), {"y": np.array([9])})
    batches = {b.version: b for b in buf.drain()}
    one = batches["1"]
    assert one.inputs["input"].ravel().tolist() == [0, 1, 2, 3, 4]
    assert one.outputs["y"].tolist() == [1, 2, 3, 4, 5]
    assert one.latency_s.tolist() == [0.010, 0.020, 0.005]
    assert one.status.tolist() == [200, 200, 400]
    assert (one.dropped_rows, one.dropped_requests) == (0, 0)
    assert batches["2"].inputs["input"].ravel().tolist() == [9]
    assert buf.drain() == []  # drained


def test_full_buffer_drops_the_oldest_rows_and_counts_them():
    buf = SampleBuffer(sample_rate=1.0, max_rows=4, max_requests=100)
    for i in range(4):
        buf.record("m", "1", 0.001, 200, _rows(i * 2, 2), {"y": np.zeros(2)})
    (batch,) = buf.drain()
    assert batch.inputs["input"].ravel().tolist() == [4, 5, 6, 7]
    assert batch.dropped_rows == 4
    assert buf.total_dropped_rows == 4


def test_a_request_larger_than_the_buffer_keeps_its_last_rows():
    buf = SampleBuffer(sample_rate=1.0, max_rows=3, max_requests=10)
    buf.record("m", "1", 0.001, 200, _rows(0, 5), {"y": np.arange(5)})
    (batch,) = buf.drain()
    assert batch.inputs["input"].ravel().tolist() == [2, 3, 4]
    assert batch.outputs["y"].tolist() == [2, 3, 4]
    assert batch.dropped_rows == 2


def test_request_facts_are_a_ring_oldest_first():
    buf = SampleBuffer(sample_rate=1.0, max_rows=10, max_requests=3)
    for i in range(5):
        buf.record("m", "1", float(i), 200)
    (batch,) = buf.drain()
    assert batch.latency_s.tolist() == [2.0, 3.0, 4.0]
    assert batch.dropped_requests == 2


def test_sample_rate_keeps_about_that_share_of_requests_but_every_fact():
    buf = SampleBuffer(sample_rate=0.25, max_rows=100_000, max_requests=10_000, seed=3)
    for i in range(4000):
        buf.record("m", "1", 0.001, 200, _rows(i, 1), {"y": np.zeros(1)})
    (batch,) = buf.drain()
    assert len(batch.latency_s) == 4000
    assert 900 < len(batch.inputs["input"]) < 1100


def test_sample_rate_zero_keeps_no_rows():
    buf = SampleBuffer(sample_rate=0.0, max_rows=10, max_requests=10)
    buf.record("m", "1", 0.001, 200, _rows(0, 1), {"y": np.zeros(1)})
    (batch,) = buf.drain()
    assert batch.inputs == {} and len(batch.latency_s) == 1


def test_rows_of_another_width_are_dropped_and_counted_not_stacked():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10)
    buf.record("m", "1", 0.001, 200, _rows(0, 2), {"y": np.zeros(2)})
    buf.record("m", "1", 0.001, 200, {"input": np.zeros((3, 2), np.float32)}, {"y": np.zeros(3)})
    (batch,) = buf.drain()
    assert batch.inputs["input"].shape == (2, 1)
    assert batch.dropped_rows == 3
    assert len(batch.latency_s) == 2  # its latency and status still count
