"""A one-minute soak (load_tests.soak, `make soak`'s code) on the session's server: mixed models,
sizes and encodings at 70% of the throughput measured first, with tokens, sampling and the
monitor's alert rules on. Every Vigil process is found and watched; no request fails, no process
is replaced, and RSS and file descriptors stay flat after the warm-up. Latency is reported in the
CSV, not asserted (timed assertions belong to load_tests/)."""

from __future__ import annotations

import csv
import os

import pytest

from load_tests import procs, soak
from load_tests.loadgen import build_bodies, measure_throughput

pytestmark = pytest.mark.slow

SECONDS, INTERVAL_S, WARMUP_S = 60.0, 10.0, 20.0


def test_a_minute_of_mixed_load_fails_nothing_and_leaves_every_process_flat(vigil, tmp_path):
    port = int(vigil.base_url.rsplit(":", 1)[1])
    bodies = build_bodies(vigil.models_dir, vigil.token)
    assert {b.kind for b in bodies} == {f"{m}/{p}/{n}" for m in ("breast_cancer", "mlp")
                                        for p in ("json", "binary") for n in (1, 1024)}
    capacity = measure_throughput(port, bodies, 8, 8.0)

    def ours() -> list[int]:  # the session's Ray was started by this process
        return procs.descendants(os.getpid())

    rows, watcher = soak.run_soak(port, vigil.token, bodies, ours, 0.7 * capacity, SECONDS,
                                  INTERVAL_S)
    result = soak.verdict(rows, WARMUP_S, watcher)
    soak.write_csv(rows, tmp_path / "soak.csv")
    print("\n".join(soak.summary_lines(result)))

    assert len(rows) == SECONDS / INTERVAL_S
    assert result["errors"] == 0, [r["failures"] for r in rows if r["errors"]]
    watched = set(rows[-1]["processes"])
    assert {"replica-1", "replica-2", "monitor", "alias_board", "controller", "proxy",
            "haproxy"} <= watched
    assert not result["replaced"]
    for name, figures in result["processes"].items():
        assert figures["rss_growth"] < soak.RSS_GROWTH_MAX, (name, figures)
        assert figures["fds_flat"], (name, figures)
    assert rows[-1]["vigil_webhook_outbox_bytes"] and rows[-1]["window_lag_s"] is not None
    with (tmp_path / "soak.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[-1]["replica-1.rss_mib"]) > 0
