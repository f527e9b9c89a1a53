"""Flush a replica's sample buffer to the monitor deployment, never blocking inference."""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from serving.metrics import ReplicaMetrics
from serving.prediction_log import PredictionLog
from serving.sampling import SampleBuffer
from serving.settings import SamplingSettings
from vigil.core.messages import SampleMessage
from vigil.core.prediction_messages import PredictionMessage

logger = logging.getLogger("vigil.monitor_link")

_RETRY_HANDLE_AFTER_S = 10.0


class MonitorLink:
    """Owns the replica's periodic flush. One flush in flight at most: while the monitor is slow
    or away, what accumulates is bounded by the buffer, and batches that cannot be delivered are
    dropped and counted rather than retried, so a monitor restart never holds up serving."""

    def __init__(self, settings: SamplingSettings, buffer: SampleBuffer, metrics: ReplicaMetrics,
                 predictions: PredictionLog | None = None):
        self.settings = settings
        self.buffer = buffer
        self.predictions = predictions  # answered requests for the join store; None: feedback off
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
        """Send what the buffer (and the prediction log) holds; False when it held nothing."""
        batches = self.buffer.drain()
        records = self.predictions.drain() if self.predictions is not None else []
        for batch in batches:
            self._count_dropped(batch, batch.dropped_rows, "buffer_full", batch.dropped_requests)
        for record in records:
            self._count_records_dropped(record, record.dropped, "buffer_full")
        if not batches and not records:
            return False
        if self._in_flight is not None and not self._in_flight.done():
            self._drop_all(batches, records, "monitor_busy")
            return True
        handle = self.monitor_handle()
        if handle is None:
            self._drop_all(batches, records, "monitor_unavailable")
            return True
        self._in_flight = asyncio.get_running_loop().create_task(
            self._send(handle, batches, records))
        return True

    def _drop_all(self, batches: list[SampleMessage], records: list[PredictionMessage],
                  reason: str) -> None:
        for batch in batches:
            self._count_dropped(batch, batch.rows, reason, batch.requests)
        for record in records:
            self._count_records_dropped(record, record.requests, reason)

    async def _send(self, handle, batches: list[SampleMessage],
                    records: list[PredictionMessage] | None = None) -> None:
        records = [r for r in records or [] if r.requests]
        try:
            # The records first: a label posted once the samples are in finds its prediction.
            if records:
                await asyncio.wait_for(handle.record_predictions.remote(records),
                                       self.settings.flush_timeout_s)
                records = []
            if batches:
                await asyncio.wait_for(
                    handle.ingest.remote(batches),
                    self.settings.flush_timeout_s,
                )
        except Exception as exc:  # noqa: BLE001 - any failure drops the batch
            logger.warning("monitor did not take %d sample batches: %s", len(batches), exc)
            self._handle = None
            self._handle_failed_at = time.monotonic()
            self._drop_all(batches, records, "monitor_unavailable")
            return
        for batch in batches:
            if batch.rows:
                self.metrics.samples_sent.inc(
                    batch.rows, {"model": batch.model, "version": batch.version}
                )

    def monitor_handle(self):
        """The monitor deployment's handle; None while it cannot be had (retried later)."""
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

    def _count_records_dropped(self, record: PredictionMessage, n: int, reason: str) -> None:
        if n:
            self.metrics.prediction_records_dropped.inc(
                n, {"model": record.model, "version": record.version, "reason": reason})

    def _count_dropped(self, batch: SampleMessage, rows: int, reason: str,
                       requests: int = 0) -> None:
        """Sampled rows and request facts dropped (a batch's facts went uncounted before: under
        load the monitor missed a third of the requests and no metric said so)."""
        tags = {"model": batch.model, "version": batch.version, "reason": reason}
        if rows:
            self.metrics.samples_dropped.inc(rows, tags)
        if requests:
            self.metrics.sample_requests_dropped.inc(requests, tags)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
