"""Latency and error statistics of one window from per-request facts (seconds, HTTP status).

Definitions:
- count: requests in the window, every status included.
- p50 / p95 / p99: quantiles of the latencies of all requests (errors included: a slow failure is
  still slow), linear interpolation between order statistics (numpy's default, "type 7"); NaN
  latencies (no timing recorded) are left out of the quantiles but still counted. None when no
  latency is left.
- error_ratio: share of requests answered with a server error, status >= 500, or with no HTTP answer
  at all (status < 100, e.g. 0 for a dropped connection): the replica's fault.
- client_error_ratio: share with 400 <= status < 500 except 499: the caller's fault (bad input,
  auth, 404, 413), reported apart so a misbehaving client does not page the model's owners.
- cancelled_ratio: share with status 499 (CANCELLED): requests cancelled before they were
  answered, because the client went away or Ray's request_timeout_s ran out. Their latency is
  the time until cancellation; a rising share usually means the model answers too slowly.
- An empty window has count 0, quantiles None and ratios 0.0; a ratio is never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILES = (0.5, 0.95, 0.99)
CANCELLED = 499  # the status replicas record for a request cancelled before its answer


@dataclass(frozen=True)
class StatusCounts:
    """How many requests failed, by whose fault (see the definitions above)."""

    errors: int = 0  # status >= 500 or < 100
    client_errors: int = 0  # 400..498
    cancelled: int = 0  # 499

    def __add__(self, other: StatusCounts) -> StatusCounts:
        return StatusCounts(self.errors + other.errors, self.client_errors + other.client_errors,
                            self.cancelled + other.cancelled)


def count_statuses(status: np.ndarray) -> StatusCounts:
    """The failed requests among HTTP status codes, as defined above."""
    errors = int(np.count_nonzero((status >= 500) | (status < 100)))
    cancelled = int(np.count_nonzero(status == CANCELLED))
    client = int(np.count_nonzero((status >= 400) & (status < 500))) - cancelled
    return StatusCounts(errors, client, cancelled)


@dataclass(frozen=True)
class LatencyStats:
    count: int
    p50: float | None  # seconds
    p95: float | None
    p99: float | None
    mean: float | None
    max: float | None
    errors: int  # status >= 500 or < 100
    client_errors: int  # 400..498
    error_ratio: float
    client_error_ratio: float
    cancelled: int = 0  # 499
    cancelled_ratio: float = 0.0


def check_facts(latency: np.ndarray, status: np.ndarray) -> None:
    """ValueError unless the facts are aligned, latencies not negative, status codes integers."""
    if latency.size != status.size:
        raise ValueError(f"{latency.size} latencies but {status.size} status codes")
    if status.size and status.dtype.kind not in "iu":
        raise ValueError(f"status codes must be integers, got {status.dtype}")
    if np.any(latency < 0):
        raise ValueError("latencies must not be negative")


def summarize(count: int, statuses: StatusCounts, timed: np.ndarray, mean: float | None,
              top: float | None) -> LatencyStats:
    """The statistics of `count` requests: their failures, the quantiles of `timed` (their
    latencies, or a uniform sample of them; NaN left out), their mean and max latency. The one
    place the ratios are computed."""
    p50: float | None
    p95: float | None
    p99: float | None
    if timed.size:
        p50, p95, p99 = (float(q) for q in np.quantile(timed, QUANTILES))
    else:
        p50 = p95 = p99 = None
    return LatencyStats(
        count=count,
        p50=p50,
        p95=p95,
        p99=p99,
        mean=mean,
        max=top,
        errors=statuses.errors,
        client_errors=statuses.client_errors,
        error_ratio=statuses.errors / count if count else 0.0,
        client_error_ratio=statuses.client_errors / count if count else 0.0,
        cancelled=statuses.cancelled,
        cancelled_ratio=statuses.cancelled / count if count else 0.0,
    )


def latency_stats(latency_s: np.ndarray, status: np.ndarray) -> LatencyStats:
    """Statistics of one window: latency_s (float seconds) and status (int) per request, aligned."""
    latency = np.asarray(latency_s, dtype=np.float64).ravel()
    codes = np.asarray(status).ravel()
    check_facts(latency, codes)
    timed = latency[~np.isnan(latency)]
    mean, top = (float(timed.mean()), float(timed.max())) if timed.size else (None, None)
    return summarize(int(codes.size), count_statuses(codes), timed, mean, top)
