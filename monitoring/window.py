"""Tumbling windows of one model version: accumulate sampled rows and request facts, evaluate.

A window opens when the previous one closes (the first when the version is loaded) and closes
when it holds ``rows`` sampled rows (capped by ``buffer_rows``) or when ``seconds`` have passed
since it opened, whichever comes first; with no traffic a time window still closes (``tick``),
empty, with a defined result. Rows of a batch beyond the window's bound roll into the next
window, so one batch may close several. The request facts (latency, status) of a batch belong to
the window open when it arrives, as do its shadow agreement counts (rows of this version's runs as
its model's shadow that agreed with production's answers, of those compared).

Each kept row also keeps where it came from: its request's id (None when it had none) and its
index in that request (-1: unknown), beside the columns and never one of them (no statistic sees
them), so that the rows endpoint can find each row's ground-truth label (monitoring.label_join).

Memory: at most the window's row bound of rows (copied per column, never views of a caller's
batch; plus a reference to its request's id and its position, 16 bytes, per row), plus the rows
of the last closed window that had rows (for the human-facing report and the rows endpoint;
never changed in place, so another thread may read them), plus at most
``max_requests`` request facts. Counts, error ratios, mean and max latency are exact; past
``max_requests`` facts in one window the latency quantiles come from a uniform reservoir sample.
Closed windows keep results only, never rows, in a history of ``settings.history`` windows.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from monitoring.drift import WindowResult, evaluate_window
from monitoring.latency import (
    LatencyStats,
    StatusCounts,
    check_facts,
    count_statuses,
    summarize,
)
from monitoring.profile import Profile
from monitoring.quality import failure_reason
from monitoring.settings import MonitorSettings

CloseReason = Literal["rows", "time", "reconfigure"]
DEFAULT_MAX_REQUESTS = 100_000


@dataclass(frozen=True)
class RowKeys:
    """Where each row of a window came from: its request's id (an object array, None where it
    had none) and its index in that request (int64, -1 where unknown). Never changed in place."""

    ids: np.ndarray
    positions: np.ndarray

    @classmethod
    def unknown(cls, rows: int) -> RowKeys:
        return cls(np.full(rows, None, dtype=object), np.full(rows, -1, dtype=np.int64))

    @classmethod
    def of_requests(cls, ids: Sequence[str | None], rows: np.ndarray | None,
                    positions: np.ndarray | None) -> RowKeys | None:
        """From a sample message's run-length form (vigil.core.messages.SampleMessage: one id
        per request, its row count, each row's position), as read_message checked it; None
        when it carries no ids."""
        if not ids or rows is None or positions is None:
            return None
        per_request = np.empty(len(ids), dtype=object)
        per_request[:] = ids  # references to the ids, repeated for their rows below
        return cls(np.repeat(per_request, rows), positions)


@dataclass(frozen=True)
class ClosedWindow:
    """One evaluated window: when, why, how much, and its statistics."""

    index: int  # 1, 2, ... per model version
    opened_at: float  # unix seconds
    closed_at: float
    reason: CloseReason
    rows: int  # sampled rows
    requests: int  # request facts (every request, sampled or not)
    latency: LatencyStats
    result: WindowResult | None  # None without a profile, or when evaluation failed
    error: str | None = None  # why evaluation failed
    agreeing_rows: int = 0  # shadow rows that agreed with production (of compared_rows)
    compared_rows: int = 0  # shadow rows compared with production's answers

    @property
    def shadow_agreement(self) -> float | None:
        """Share of compared shadow rows that agreed with production; None: none compared."""
        return self.agreeing_rows / self.compared_rows if self.compared_rows else None

    def summary(self) -> dict[str, Any]:
        """The window in brief, as an audit record or an event names it: which window, when,
        how much, and the figures a rollback rests on."""
        return {
            "index": self.index, "opened_at": self.opened_at, "closed_at": self.closed_at,
            "rows": self.rows, "requests": self.requests,
            "error_ratio": self.latency.error_ratio, "latency_p99_s": self.latency.p99,
            "shadow_agreement": self.shadow_agreement,
        }

    def to_dict(self, detail: bool = True) -> dict[str, Any]:
        """JSON-ready form; without detail, the per-column lists are left out. `error`: why the
        window could not be evaluated at all; `failed_columns`: column -> why its statistics
        failed (the window's other columns are evaluated)."""
        doc: dict[str, Any] = {
            "index": self.index, "opened_at": self.opened_at, "closed_at": self.closed_at,
            "reason": self.reason, "rows": self.rows, "requests": self.requests,
            "latency": dataclasses.asdict(self.latency), "drift": None, "quality": None,
            "error": self.error, "failed_columns": {},
            "shadow_agreement": {"ratio": self.shadow_agreement,
                                 "agreeing_rows": self.agreeing_rows,
                                 "compared_rows": self.compared_rows},
        }
        if self.result is None:
            return doc
        doc["failed_columns"] = self.result.failed_columns
        drift, quality = self.result.drift, self.result.quality
        doc["drift"] = {
            "tested": drift.tested, "drifted": drift.drifted, "share_drifted": drift.share_drifted,
            "drift_share": drift.drift_share, "dataset_drift": drift.dataset_drift,
            "prediction_drift": drift.prediction_drift, "correction": drift.correction,
            "drifted_features": [c.name for c in drift.features if c.drifted],
            "drifted_outputs": [c.name for c in drift.outputs if c.drifted],
        }
        doc["quality"] = {"violations": [dataclasses.asdict(v) for v in quality.violations]}
        if detail:
            doc["drift"]["features"] = [dataclasses.asdict(c) for c in drift.features]
            doc["drift"]["outputs"] = [dataclasses.asdict(c) for c in drift.outputs]
            doc["quality"]["columns"] = [dataclasses.asdict(c) for c in quality.columns]
        return doc


class TumblingWindow:
    """The open window and the history of closed ones for one model version. Not thread-safe:
    one caller (the monitor's single worker) at a time."""

    def __init__(
        self,
        profile: Profile | None,
        settings: MonitorSettings,
        now: float,
        *,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        seed: int = 0,
    ) -> None:
        if max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        self.profile = profile
        self.settings = settings_for(profile, settings)
        self.max_requests = max_requests
        self._rng = np.random.default_rng(seed)
        self.history: deque[ClosedWindow] = deque(maxlen=settings.history)
        self.closed = 0  # windows closed so far
        self.last_rows: dict[str, np.ndarray] | None = None  # rows of the last closed non-empty one
        self.last_rows_window: ClosedWindow | None = None  # ... and that window
        self.last_keys: RowKeys | None = None  # ... and where each of its rows came from
        self._open(now)

    # ------------------------------------------------------------------ state

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.rows = 0
        self._chunks: list[dict[str, np.ndarray]] = []
        self._keys: list[RowKeys] = []  # one per chunk, aligned with its rows
        self.requests = 0
        self._latency = np.empty(min(self.max_requests, 1024), dtype=np.float64)
        self._status = np.empty(self._latency.size, dtype=np.int16)
        self._kept = 0  # facts held (<= max_requests)
        self._statuses = StatusCounts()
        self._timed = 0
        self._latency_sum = 0.0
        self._latency_max: float | None = None
        self._agreeing = self._compared = 0

    @property
    def row_limit(self) -> int | None:
        """Rows that close a window: window.rows capped by buffer_rows (None: time only)."""
        rows = self.settings.window.rows
        return self.settings.buffer_rows if rows is None else min(rows, self.settings.buffer_rows)

    @property
    def latest(self) -> ClosedWindow | None:
        return self.history[-1] if self.history else None

    def closes_when(self, now: float) -> str:
        """When the open window closes, in words: after how many more rows, in how many seconds."""
        parts = []
        if (limit := self.row_limit) is not None:
            parts.append(f"after {limit - self.rows} more sampled rows")
        if (seconds := self.settings.window.seconds) is not None:
            parts.append(f"in {max(self.opened_at + seconds - now, 0.0):.0f} s")
        return f"the open window ({self.rows} rows) closes {' or '.join(parts)}"

    # ------------------------------------------------------------------ input

    def add(
        self,
        columns: Mapping[str, np.ndarray] | None,
        rows: int,
        latency_s: np.ndarray,
        status: np.ndarray,
        now: float,
        agreement: tuple[int, int] = (0, 0),
        keys: RowKeys | None = None,
    ) -> list[ClosedWindow]:
        """One sample batch: `rows` sampled rows (their 1-D `columns`, or None to count them
        only), the facts of its requests and its shadow `agreement` (agreeing, compared rows);
        `keys`: where each row came from (None: unknown). Returns the windows this closed,
        oldest first."""
        agreeing, compared = agreement
        if not 0 <= agreeing <= compared:
            raise ValueError(f"agreement {agreement!r}: expected 0 <= agreeing <= compared")
        if keys is not None and not keys.ids.shape == keys.positions.shape == (rows,):
            raise ValueError(f"keys for {keys.ids.shape} rows, expected ({rows},)")
        closed = []
        if (due := self.tick(now)) is not None:
            closed.append(due)
        self._add_facts(np.asarray(latency_s, np.float64).ravel(), np.asarray(status).ravel())
        self._agreeing += agreeing
        self._compared += compared
        start = 0
        limit = self.row_limit
        while start < rows:
            take = rows - start if limit is None else min(rows - start, limit - self.rows)
            if columns is not None:
                self._chunks.append({k: np.array(v[start : start + take]) for k, v in columns.items()})
                self._keys.append(RowKeys.unknown(take) if keys is None else RowKeys(
                    keys.ids[start : start + take].copy(),
                    keys.positions[start : start + take].copy()))
            self.rows += take
            start += take
            if limit is not None and self.rows >= limit:
                closed.append(self._close(now, "rows"))
        return closed

    def tick(self, now: float) -> ClosedWindow | None:
        """Close the open window if its time is up (call periodically, traffic or not)."""
        seconds = self.settings.window.seconds
        if seconds is not None and now - self.opened_at >= seconds:
            return self._close(now, "time")
        return None

    def reconfigure(self, settings: MonitorSettings, now: float) -> ClosedWindow | None:
        """New settings from now on. A window with anything in it closes first under the old
        ones, so every window is evaluated under one setting; an empty one restarts its clock."""
        closed = (self._close(now, "reconfigure")
                  if self.rows or self.requests or self._compared else None)
        if closed is None:
            self._open(now)
        self.settings = settings_for(self.profile, settings)
        if self.history.maxlen != settings.history:
            self.history = deque(self.history, maxlen=settings.history)
        return closed

    def _add_facts(self, latency: np.ndarray, status: np.ndarray) -> None:
        check_facts(latency, status)  # here, not at the close: a bad batch must not lose a window
        n = latency.size
        if not n:
            return
        self._statuses += count_statuses(status)
        timed = latency[~np.isnan(latency)]
        if timed.size:
            self._timed += timed.size
            self._latency_sum += float(timed.sum())
            top = float(timed.max())
            self._latency_max = top if self._latency_max is None else max(self._latency_max, top)
        free = min(n, self.max_requests - self._kept)
        if free:
            self._grow(self._kept + free)
            self._latency[self._kept : self._kept + free] = latency[:free]
            self._status[self._kept : self._kept + free] = status[:free]
            self._kept += free
        if free < n:  # reservoir (algorithm R): fact t replaces a random slot with p = k / (t + 1)
            t = np.arange(self.requests + free, self.requests + n)
            slot = (self._rng.random(t.size) * (t + 1)).astype(np.int64)
            keep = slot < self.max_requests
            self._latency[slot[keep]] = latency[free:][keep]
            self._status[slot[keep]] = status[free:][keep]
        self.requests += n

    def _grow(self, needed: int) -> None:
        if needed <= self._latency.size:
            return
        size = min(max(needed, 2 * self._latency.size), self.max_requests)
        self._latency = np.resize(self._latency, size)
        self._status = np.resize(self._status, size)

    # ------------------------------------------------------------------ closing

    def _close(self, now: float, reason: CloseReason) -> ClosedWindow:
        rows = _concat(self._chunks) if self._chunks else None
        stats = self._latency_stats()
        result, error = None, None
        if self.profile is not None:
            try:
                window = rows if rows is not None else empty_columns(self.profile)
                result = evaluate_window(self.profile, window, self.settings)
            except Exception as exc:  # noqa: BLE001 - a defined result: no statistics, the reason
                error = failure_reason(exc)
        self.closed += 1
        closed = ClosedWindow(
            index=self.closed, opened_at=self.opened_at, closed_at=now, reason=reason,
            rows=self.rows, requests=self.requests, latency=stats, result=result, error=error,
            agreeing_rows=self._agreeing, compared_rows=self._compared,
        )
        self.history.append(closed)
        if rows is not None:
            self.last_rows, self.last_rows_window = rows, closed
            self.last_keys = RowKeys(np.concatenate([k.ids for k in self._keys]),
                                     np.concatenate([k.positions for k in self._keys]))
        self._open(now)
        return closed

    def _latency_stats(self) -> LatencyStats:
        """Counts, mean and max exact; quantiles from the facts kept (all, or a sample)."""
        kept = self._latency[: self._kept]
        return summarize(
            self.requests, self._statuses, kept[~np.isnan(kept)],
            mean=self._latency_sum / self._timed if self._timed else None, top=self._latency_max,
        )


def settings_for(profile: Profile | None, settings: MonitorSettings) -> MonitorSettings:
    """The settings as they apply to one profile: overrides and types of its own columns only
    (one MonitorSettings serves every model)."""
    if profile is None:
        return settings
    return settings.model_copy(
        update={
            "overrides": {k: v for k, v in settings.overrides.items() if k in profile},
            "feature_types": {k: v for k, v in settings.feature_types.items() if k in profile},
        }
    )


def empty_columns(profile: Profile) -> dict[str, np.ndarray]:
    """Zero rows of every profiled column: an empty window is 'empty', not 'missing columns'."""
    return {c.name: np.empty(0, dtype=np.dtype(c.dtype)) for c in profile.columns}


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    names = chunks[0].keys()
    return {name: np.concatenate([c[name] for c in chunks]) for name in names}
