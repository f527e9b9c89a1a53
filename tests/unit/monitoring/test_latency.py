"""Latency and error statistics of a window from per-request facts."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.latency import latency_stats


def test_quantiles_and_ratios_on_known_arrays() -> None:
    latency = np.arange(1, 101, dtype=np.float64) / 1000  # 1 ms .. 100 ms
    status = np.full(100, 200)
    status[:5] = 503
    status[5:7] = 0  # no answer at all: counted as an error
    status[7:10] = 404
    status[10:14] = 499  # cancelled: a kind of its own, not the client's error
    stats = latency_stats(latency, status)
    assert stats.count == 100
    assert stats.p50 == pytest.approx(0.0505)  # linear interpolation between 50 and 51 ms
    assert stats.p95 == pytest.approx(0.09505)
    assert stats.p99 == pytest.approx(0.09901)
    assert stats.mean == pytest.approx(0.0505) and stats.max == 0.1
    assert (stats.errors, stats.error_ratio) == (7, 0.07)
    assert (stats.client_errors, stats.client_error_ratio) == (3, 0.03)
    assert (stats.cancelled, stats.cancelled_ratio) == (4, 0.04)


def test_single_request() -> None:
    stats = latency_stats(np.array([0.25]), np.array([200]))
    assert stats.p50 == stats.p95 == stats.p99 == 0.25
    assert stats.error_ratio == 0.0


def test_empty_window_is_zero_not_nan() -> None:
    stats = latency_stats(np.array([]), np.array([], dtype=np.int64))
    assert stats.count == 0
    assert (stats.p50, stats.p95, stats.p99, stats.mean, stats.max) == (None,) * 5
    assert (stats.error_ratio, stats.client_error_ratio) == (0.0, 0.0)


def test_untimed_requests_count_but_stay_out_of_quantiles() -> None:
    stats = latency_stats(np.array([np.nan, 0.1, 0.3]), np.array([500, 200, 200]))
    assert stats.count == 3 and stats.p50 == pytest.approx(0.2)
    assert stats.error_ratio == pytest.approx(1 / 3)
    only_nan = latency_stats(np.array([np.nan]), np.array([502]))
    assert only_nan.p99 is None and only_nan.error_ratio == 1.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="status codes"):
        latency_stats(np.array([0.1, 0.2]), np.array([200]))
    with pytest.raises(ValueError, match="negative"):
        latency_stats(np.array([-0.1]), np.array([200]))
    with pytest.raises(ValueError, match="integers"):
        latency_stats(np.array([0.1]), np.array([200.0]))
