"""A full disk under the repository and under the monitor's outbox (a real 1 MiB tmpfs, mounted
here: root only, skipped elsewhere): publishing fails with a clear error and leaves nothing
behind; an outbox write commits nothing, is logged and counted as a metric, and the alert is
committed by the next window once there is room (nothing dropped in silence)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.collector_ops import Held, StateCollector
from monitoring.outbox import Outbox
from tests.graphs import COUPLED_MODELS
from tests.unit.monitoring.helpers import drift_of, scrape, window_of
from vigil.core import repository as repo


class Disk:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"

    def fill(self) -> None:
        """Every free block taken by one file."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    root = tmp_path / "tmpfs"
    root.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root only): {mounted.stderr.decode().strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", str(root)], check=False)


def _model() -> tuple[bytes, tuple, tuple]:
    builder, inputs, outputs = next(iter(COUPLED_MODELS.values()))
    return builder().SerializeToString(), inputs, outputs


def test_publishing_to_a_full_disk_says_so_and_leaves_nothing(disk: Disk) -> None:
    root = disk.root / "models"
    onnx, inputs, outputs = _model()
    repo.publish(root, "kept", "1", onnx, inputs, outputs)
    disk.fill()
    with pytest.raises(repo.RepositoryError) as refused:
        repo.publish(root, "new", "1", onnx, inputs, outputs)
    message = str(refused.value)
    assert "could not write new/1" in message and "No space left on device" in message
    assert "nothing was published" in message
    with pytest.raises(repo.RepositoryError, match="could not write kept/2"):
        repo.publish(root, "kept", "2", onnx, inputs, outputs)
    # Nothing half-written: no folder of the new model, no version 2, no hidden staging folder.
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if not p.name.startswith(".publish")) == \
        ["kept", "kept/1", "kept/1/model.onnx", "kept/1/model.yaml"]
    disk.free()
    assert repo.publish(root, "kept", "2", onnx, inputs, outputs).manifest.version == "2"


def test_an_outbox_on_a_full_disk_counts_logs_and_commits_later(disk: Disk, caplog) -> None:
    from monitoring.alert_settings import AlertRule, WebhookTarget
    from monitoring.alerts import AlertEngine

    outbox = Outbox(disk.root / "outbox.sqlite")
    engine = AlertEngine(outbox, "http://mon.example/monitor", 0.0)
    engine.configure([AlertRule(name="drift", when={"dataset_drift": True})],
                     [WebhookTarget(name="t", url="http://127.0.0.1:9/e", secret_env="S")],
                     [("iris", "1")], 0.0)
    drifted = [drift_of("x", 0.001, drifted=True), drift_of("y", 0.01, drifted=True)]
    disk.fill()
    with caplog.at_level(logging.ERROR, logger="vigil.outbox"):
        engine.on_window("iris", "1", window_of(index=1, features=drifted), now=100.0)
    assert outbox.write_failures() == {"disk_full": 1}
    assert any("a write failed (disk_full)" in r.getMessage() and str(outbox.path) in
               r.getMessage() for r in caplog.records)
    samples, _, _ = scrape(StateCollector(lambda: Held(
        outbox_write_failures=outbox.write_failures())))
    failures = "vigil_webhook_outbox_write_failures_total"
    assert samples[(failures, frozenset({("reason", "disk_full")}))] == 1
    assert samples[(failures, frozenset({("reason", "io_error")}))] == 0
    assert outbox.pending() == {} and outbox.load_alerts() == {}  # nothing half-committed
    assert engine.firing() == [("iris", "1", "drift", False)]  # not fired: tried again

    disk.free()
    engine.on_window("iris", "1", window_of(index=2, features=drifted), now=200.0)
    assert outbox.pending() == {"t": 1} and engine.firing() == [("iris", "1", "drift", True)]
    outbox.close()
