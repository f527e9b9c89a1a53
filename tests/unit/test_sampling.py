"""The replica's sample buffer: bounded, never blocking, counting what it drops."""

import numpy as np
import pytest

from serving.sampling import SampleBuffer
from vigil.core.messages import MAX_ID_LENGTH, read_message


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
    buf.record("m", "1", 0.001, 200, _rows(8, 1), {"y": np.zeros(1)})  # splits the oldest chunk
    (batch,) = buf.drain()
    assert batch.inputs["input"].ravel().tolist() == [5, 6, 7, 8]
    assert batch.dropped_rows == 5


def test_one_request_gives_at_most_max_rows_per_request_rows_sampled_uniformly():
    buf = SampleBuffer(sample_rate=1.0, max_rows=1000, max_requests=10, max_rows_per_request=100,
                       seed=7)
    buf.record("m", "1", 0.001, 200, _rows(0, 100_000), {"y": np.arange(100_000)})
    buf.record("m", "1", 0.001, 200, _rows(-1, 1), {"y": np.array([-1])})
    (batch,) = buf.drain()
    kept = batch.inputs["input"].ravel()
    assert len(kept) == 101 and kept[-1] == -1  # the small request still gets its row in
    big = kept[:100]
    assert (np.diff(big) > 0).all()  # in request order, no row twice
    assert big.min() < 10_000 and big.max() > 90_000  # from the whole request, not its head
    np.testing.assert_array_equal(batch.outputs["y"][:100], big)  # inputs and outputs stay paired
    assert batch.dropped_rows == 0  # not sampled is not dropped


def test_rows_are_sampled_one_by_one():
    buf = SampleBuffer(sample_rate=0.25, max_rows=100_000, max_requests=1000,
                       max_rows_per_request=1000, seed=5)
    for i in range(100):  # 100 requests of 40 rows: a per-request coin would keep 0 or 40 each
        buf.record("m", "1", 0.001, 200, _rows(i * 40, 40), {"y": np.zeros(40)})
    (batch,) = buf.drain()
    kept = batch.inputs["input"].ravel().astype(int)
    assert 850 < len(kept) < 1150
    per_request = np.bincount(kept // 40, minlength=100)
    assert ((per_request > 0) & (per_request < 40)).mean() > 0.9


def test_kept_rows_are_copies_not_views_of_the_request():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10, max_rows_per_request=3)
    batch_output = np.arange(10.0)  # what a batched run returns; a request gets a view of it
    small_in, small_out = _rows(0, 2), batch_output[2:4]
    big_in, big_out = _rows(10, 5), batch_output[4:9]
    buf.record("m", "1", 0.001, 200, small_in, {"y": small_out})
    buf.record("m", "1", 0.001, 200, big_in, {"y": big_out})
    small_in["input"][:] = -1
    batch_output[:] = -1
    (batch,) = buf.drain()
    assert batch.inputs["input"].ravel().tolist()[:2] == [0, 1]
    assert batch.outputs["y"].tolist()[:2] == [2.0, 3.0] and min(batch.outputs["y"]) >= 2.0
    assert not np.shares_memory(batch.outputs["y"], batch_output)


def test_a_model_without_a_shared_row_axis_sends_facts_only():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10)
    buf.record("m", "1", 0.001, 200, _rows(0, 3), {"sum": np.zeros(1)})  # 3 rows in, 1 out
    buf.record("m", "1", 0.001, 200, {"x": np.float32(1.0).reshape(())}, {"y": np.zeros(2)})
    (batch,) = buf.drain()
    assert batch.inputs == {} and batch.rows == 0 and batch.requests == 2


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


def test_shadow_agreement_is_summed_per_version_until_the_drain():
    buf = SampleBuffer(sample_rate=0.0, max_rows=10, max_requests=10)  # no row sampled
    buf.record("m", "2", 0.002, 200, _rows(0, 4), {"y": np.zeros(4)}, agreement=(3, 4))
    buf.record("m", "2", 0.003, 200, agreement=(0, 2))
    buf.record("m", "2", 0.001, 500)  # a failed shadow run: nothing compared
    buf.record("m", "1", 0.001, 200, _rows(0, 1), {"y": np.zeros(1)})  # production
    batches = {b.version: b for b in buf.drain()}
    assert (batches["2"].agreeing_rows, batches["2"].compared_rows) == (3, 6)
    assert batches["2"].requests == 3 and batches["2"].rows == 0
    assert (batches["1"].agreeing_rows, batches["1"].compared_rows) == (0, 0)
    buf.record("m", "2", 0.002, 200, agreement=(np.int64(1), np.int64(1)))
    (batch,) = buf.drain()
    assert (batch.agreeing_rows, batch.compared_rows) == (1, 1)  # counted anew, as ints
    assert type(batch.agreeing_rows) is int


def test_an_impossible_agreement_is_refused_before_anything_is_recorded():
    buf = SampleBuffer(sample_rate=1.0, max_rows=10, max_requests=10)
    for bad in ((3, 2), (-1, 2)):
        with pytest.raises(ValueError, match="expected 0 <= agreeing <= compared"):
            buf.record("m", "2", 0.001, 200, agreement=bad)
    assert buf.drain() == []


def test_a_version_without_traffic_since_the_last_drain_loses_its_buffer():
    """Each version's buffer holds two arrays of buffer_requests entries. A version that was
    retired, unloaded or just idle through a whole flush interval gives its buffer up at the
    next drain (before, it kept it for the replica's life), so 50 versions cycled through hold
    no more buffers than the versions with traffic."""
    buf = SampleBuffer(1.0, 100, 1000, seed=0)
    for v in range(50):
        buf.record("m", str(v), 0.01, 200)
        buf.record("m", "prod", 0.01, 200)
        assert [b.version for b in buf.drain()] == [str(v), "prod"]
        assert buf.versions == 2
        buf.drain()  # a flush interval without traffic
        assert buf.versions == 0


def test_a_canarys_agreement_with_production_is_counted_without_a_request_of_its_own():
    buf = SampleBuffer(sample_rate=0.0, max_rows=10, max_requests=10)
    buf.record("m", "2", 0.002, 200)  # the canary's request, accounted when answered
    buf.agreed("m", "2", (4, 5))  # then production answered the same inputs
    buf.agreed("m", "3", (1, 1))  # agreement alone keeps a buffer until the drain
    batches = {b.version: b for b in buf.drain()}
    assert (batches["2"].agreeing_rows, batches["2"].compared_rows, batches["2"].requests) == (
        4, 5, 1)
    assert (batches["3"].agreeing_rows, batches["3"].compared_rows, batches["3"].requests) == (
        1, 1, 0)
    with pytest.raises(ValueError, match="expected 0 <= agreeing <= compared"):
        buf.agreed("m", "2", (3, 2))
    assert buf.drain() == []


# --- request ids: which request each sampled row came from ---------------------------------------


def test_sampled_rows_carry_their_requests_id_and_position_once_per_request():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10)
    buf.record("m", "1", 0.01, 200, _rows(0, 2), {"y": np.array([1, 2])}, request_id="a")
    buf.record("m", "1", 0.01, 200, _rows(2, 3), {"y": np.array([3, 4, 5])}, request_id="b")
    buf.record("m", "1", 0.01, 400, request_id="c")  # refused: facts only, no rows, no id
    buf.record("m", "1", 0.01, 200, _rows(5, 1), {"y": np.array([6])})  # no id (gRPC)
    (batch,) = buf.drain()
    assert read_message(batch) is batch
    assert batch.request_ids == ("a", "b", None)
    assert batch.request_rows.tolist() == [2, 3, 1] and batch.request_rows.dtype == np.int64
    assert batch.row_positions.tolist() == [0, 1, 0, 1, 2, 0]


def test_without_ids_a_message_carries_none():
    buf = SampleBuffer(sample_rate=1.0, max_rows=100, max_requests=10)
    buf.record("m", "1", 0.01, 200, _rows(0, 2), {"y": np.array([1, 2])})
    buf.record("m", "1", 0.01, 200, _rows(2, 1), {"y": np.array([3])},
               request_id="x" * (MAX_ID_LENGTH + 1))  # too long to be labelled: left out
    (batch,) = buf.drain()
    assert (batch.request_ids, batch.request_rows, batch.row_positions) == ((), None, None)
    assert read_message(batch) is batch


def test_a_sampled_rows_position_is_its_index_in_its_request():
    buf = SampleBuffer(sample_rate=1.0, max_rows=1000, max_requests=10, max_rows_per_request=5,
                       seed=3)
    buf.record("m", "1", 0.01, 200, _rows(0, 50), {"y": np.arange(50)}, request_id="big")
    (batch,) = buf.drain()
    assert batch.request_ids == ("big",) and batch.request_rows.tolist() == [5]
    # _rows(0, n) holds each row's own index: the positions name exactly the rows kept
    assert batch.row_positions.tolist() == batch.inputs["input"].ravel().astype(int).tolist()
    assert len(set(batch.row_positions.tolist())) == 5


def test_a_full_buffer_keeps_the_ids_and_positions_of_the_rows_it_keeps():
    buf = SampleBuffer(sample_rate=1.0, max_rows=4, max_requests=100)
    for i in range(4):
        buf.record("m", "1", 0.001, 200, _rows(i * 2, 2), {"y": np.zeros(2)}, request_id=f"r{i}")
    buf.record("m", "1", 0.001, 200, _rows(8, 1), {"y": np.zeros(1)}, request_id="r4")
    (batch,) = buf.drain()
    assert batch.inputs["input"].ravel().tolist() == [5, 6, 7, 8]
    assert batch.request_ids == ("r2", "r3", "r4")  # r2 lost its first row
    assert batch.request_rows.tolist() == [1, 2, 1]
    assert batch.row_positions.tolist() == [1, 0, 1, 0]
    assert read_message(batch) is batch
