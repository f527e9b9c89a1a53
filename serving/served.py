"""A loaded model version: its onnxruntime session and batcher, and the requests that use it."""

from __future__ import annotations

import ctypes
import time

from serving.batching import RowBatcher
from serving.metrics import replica_metrics
from serving.runtime import OnnxModel
from serving.settings import BatchSettings, RuntimeSettings
from vigil.core.repository import ModelVersion


class ServedModel:
    """A loaded model version with its batcher, and its use: `users` counts the requests routed
    to it that have not finished (changed on the event loop only; read by the drain), and
    `last_active` (perf_counter) is its last request, or the last time an alias was on it."""

    def __init__(self, version: ModelVersion, runtime: RuntimeSettings,
                 batching: BatchSettings) -> None:
        self.version = version
        self.model = OnnxModel(version, runtime)
        # Rows are sampled only where the monitor has a reference to compare them with; every
        # version still reports latency and status.
        self.has_profile = version.has_profile
        self.batcher = RowBatcher(
            self.model.run,
            batching,
            declared_max_rows=self.model.max_batch_rows,
            observer=replica_metrics().for_model(self.model.name, self.model.version),
            thread_name=f"vigil-{self.model.name}-{self.model.version}",
        )
        self.users = 0
        self.last_active = time.perf_counter()

    @property
    def label(self) -> str:
        return f"{self.model.name}/{self.model.version}"

    @property
    def busy(self) -> bool:
        """Requests are routed to it, or its batcher still has work queued or running."""
        return self.users > 0 or not self.batcher.idle

    def close(self) -> None:
        """Stop the batcher's thread; the session goes with the last reference to this object."""
        self.batcher.close()

    def release(self) -> None:
        """Close, free the onnxruntime session now, and hand the freed heap back to the OS:
        glibc keeps freed arenas otherwise, and a replica that cycled through many versions
        would look as large as one that holds them all."""
        self.close()
        self.model.session = None
        _trim_heap()


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
