"""The replica's gauges stay in the scrape: Ray drops a gauge value no one sets again for ~20 s."""

import threading

import serving.metrics as replica_metrics_module
from serving.metrics import ReplicaMetrics


class RecordingGauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []
        self.seen = threading.Event()

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sets.append((value, dict(tags)))
        self.seen.set()


def test_loaded_counts_are_set_again_until_the_model_goes(monkeypatch):
    monkeypatch.setattr(replica_metrics_module, "GAUGE_REFRESH_S", 0.01)
    metrics = ReplicaMetrics()
    gauge = RecordingGauge()
    metrics.loaded_versions = gauge  # type: ignore[assignment]
    try:
        metrics.loaded({"a": 2, "b": 1})
        assert gauge.sets[:2] == [(2, {"model": "a"}), (1, {"model": "b"})]
        for _ in range(3):  # the refresher sets both again, on its own
            gauge.seen.clear()
            assert gauge.seen.wait(5)
        assert (2, {"model": "a"}) in gauge.sets[2:] and (1, {"model": "b"}) in gauge.sets[2:]

        # A model no longer served: its 0 is set once, then it is not set again (it ages out).
        metrics.loaded({"b": 0})
        done = len(gauge.sets)
        for _ in range(3):
            gauge.seen.clear()
            assert gauge.seen.wait(5)
        later = gauge.sets[done:]
        assert later and all(tags == {"model": "a"} for _, tags in later)
        assert (0, {"model": "b"}) in gauge.sets[:done]
    finally:
        metrics._stop.set()
