"""Flush a replica's sample buffer to the monitor deployment, never blocking inference."""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from serving.metrics import ReplicaMetrics
from serving.sampling import SampleBuffer
from serving.settings import SamplingSettings
from vigil.core.messages import SampleMessage

logger = logging.getLogger("vigil.monitor_link")

_RETRY_HANDLE_AFTER_S = 10.0


class MonitorLink:
    """Owns the replica's periodic flush. One flush in flight at most: while the monitor is slow
    or away, what accumulates is bounded by the buffer, and batches that cannot be delivered are
    dropped and counted rather than retried, so a monitor restart never holds up serving."""

    def __init__(self, settings: SamplingSettings, buffer: SampleBuffer, metrics: ReplicaMetrics):
        self.settings = settings
        self.buffer = buffer
        self.metrics = metrics
        self._task: asyncio.Task | None = None
        self._in_flight: asyncio.Task | None = None
        self._handle = None
        self._handle_failed_at = 0.0

    def start(self) -> None:
        """Start the flush loop on the running event loop (idempotent, cheap)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        """Flush every flush_interval_s while requests arrive; once a flush finds nothing new,
        the loop ends (an idle replica does no work) and the next request starts it again."""
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                if not self.flush():
                    return
            except Exception:  # the flush loop must outlive any single failure
                logger.exception("sample flush failed")

    def flush(self) -> bool:
        """Send what the buffer holds; False when it held nothing."""
        batches = self.buffer.drain()
        for batch in batches:
            if batch.dropped_rows:
                self._count_dropped(batch, batch.dropped_rows, "buffer_full")
        if not batches:
            return False
        if self._in_flight is not None and not self._in_flight.done():
            for batch in batches:
                self._count_dropped(batch, batch.rows, "monitor_busy")
            return True
        handle = self._monitor_handle()
        if handle is None:
            for batch in batches:
                self._count_dropped(batch, batch.rows, "monitor_unavailable")
            return True
        self._in_flight = asyncio.get_running_loop().create_task(self._send(handle, batches))
        return True

    async def _send(self, handle, batches: list[SampleMessage]) -> None:
        try:
            await asyncio.wait_for(
                handle.ingest.remote(batches),
                self.settings.flush_timeout_s,
            )
        except Exception as exc:  # noqa: BLE001 - any failure drops the batch
            logger.warning("monitor did not take %d sample batches: %s", len(batches), exc)
            self._handle = None
            self._handle_failed_at = time.monotonic()
            for batch in batches:
                self._count_dropped(batch, batch.rows, "monitor_unavailable")
            return
        for batch in batches:
            if batch.rows:
                self.metrics.samples_sent.inc(
                    batch.rows, {"model": batch.model, "version": batch.version}
                )

    def _monitor_handle(self):
        if self._handle is not None:
            return self._handle
        if time.monotonic() - self._handle_failed_at < _RETRY_HANDLE_AFTER_S:
            return None
        try:
            self._handle = serve.get_deployment_handle(
                self.settings.monitor_deployment, app_name=self.settings.monitor_app
            )
        except Exception as exc:  # noqa: BLE001 - retried later
            logger.warning("no monitor deployment to send samples to: %s", exc)
            self._handle_failed_at = time.monotonic()
            return None
        return self._handle

    def _count_dropped(self, batch: SampleMessage, rows: int, reason: str) -> None:
        if rows:
            self.metrics.samples_dropped.inc(
                rows, {"model": batch.model, "version": batch.version, "reason": reason}
            )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
