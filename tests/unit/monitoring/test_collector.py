"""The monitor's collector, rendered by prometheus_client from a fresh registry and parsed back."""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.collector import MonitorCollector, VersionSnapshot
from monitoring.collector_ops import AlertCollector
from monitoring.profile import build_profile
from monitoring.settings import MonitorSettings
from monitoring.webhooks import DeliveryStats
from monitoring.window import TumblingWindow
from tests.unit.monitoring.helpers import scrape

NO_FACTS = (np.empty(0), np.empty(0, np.int16))
ALLOWED_LABELS = {"model", "version", "feature", "method", "output", "quantile", "kind"}


def _scrape(snapshots: list[VersionSnapshot]) -> tuple[dict, dict]:
    samples, types, _ = scrape(MonitorCollector(lambda: snapshots))
    return samples, types


def _get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def closed():
    """A window of 4 rows: x shifted far from its reference, c the same; an output y."""
    reference = {"x": np.arange(20.0), "c": np.array(["a", "b"] * 10), "y": np.arange(20.0) % 3}
    profile = build_profile(reference, outputs=["y"])
    window = TumblingWindow(profile, MonitorSettings(window={"rows": 4, "seconds": None}), 0.0)
    rows = {"x": np.array([100.0, 101, 102, 103]), "c": np.array(["a", "b", "a", "zz"]),
            "y": np.array([0.0, 1, 2, np.nan])}
    latency, status = np.array([0.1, 0.2, 0.3, 0.4]), np.array([200, 200, 500, 404])
    (result,) = window.add(rows, 4, latency, status, now=1700000000.0)
    return result


def test_latest_window_and_counters(closed) -> None:
    snap = VersionSnapshot(
        model="m", version="1", profile_loaded=True, latest=closed, windows_evaluated=7,
        current_rows=2, rows_received=30, requests_received=12,
        rows_dropped={"replica": 5, "schema": 3}, requests_dropped={"schema": 1},
    )
    s, types = _scrape([snap])
    mv = {"model": "m", "version": "1"}
    assert _get(s, "vigil_profile_loaded", **mv) == 1.0
    assert _get(s, "vigil_window_rows", **mv) == 4 and _get(s, "vigil_window_requests", **mv) == 4
    assert _get(s, "vigil_open_window_rows", **mv) == 2
    assert _get(s, "vigil_last_window_timestamp_seconds", **mv) == 1700000000.0
    assert _get(s, "vigil_window_latency_seconds", quantile="0.5", **mv) == pytest.approx(0.25)
    assert _get(s, "vigil_window_latency_seconds", quantile="0.95", **mv) == pytest.approx(0.385)
    assert _get(s, "vigil_window_error_ratio", kind="server", **mv) == 0.25
    assert _get(s, "vigil_window_error_ratio", kind="client", **mv) == 0.25
    # x: ks against 0..19, all four rows far above: drifted; c: chisquare, unseen 'zz' counted
    assert _get(s, "vigil_feature_drifted", feature="x", method="ks", **mv) == 1.0
    assert _get(s, "vigil_feature_drift_score", feature="x", method="ks", **mv) < 0.05
    assert _get(s, "vigil_feature_drifted", feature="c", method="chisquare", **mv) is not None
    assert _get(s, "vigil_drift_share_ratio", **mv) == closed.result.drift.share_drifted
    assert _get(s, "vigil_dataset_drift", **mv) == float(closed.result.drift.dataset_drift)
    (output,) = [k for k in s if k[0] == "vigil_prediction_drift_score"]
    assert dict(output[1])["output"] == "y"
    assert _get(s, "vigil_out_of_range_ratio", feature="x", **mv) == 1.0
    assert _get(s, "vigil_unseen_categories_ratio", feature="c", **mv) == 0.25
    assert _get(s, "vigil_missing_ratio", feature="y", **mv) == 0.25
    assert _get(s, "vigil_schema_violation_columns", kind="missing_column", **mv) == 0
    assert _get(s, "vigil_sample_rows_received_total", **mv) == 30
    assert _get(s, "vigil_sample_requests_received_total", **mv) == 12
    assert _get(s, "vigil_sample_rows_dropped_total", kind="replica", **mv) == 5
    assert _get(s, "vigil_sample_rows_dropped_total", kind="schema", **mv) == 3
    assert _get(s, "vigil_sample_requests_dropped_total", kind="replica", **mv) == 0
    assert _get(s, "vigil_windows_evaluated_total", **mv) == 7
    assert types["vigil_windows_evaluated"] == "counter"
    assert types["vigil_feature_drift_score"] == "gauge"


def test_failed_columns_export_no_score_and_are_counted() -> None:
    """x's window values span more than float64 (its psi fails); n holds an integer beyond
    float64 (it cannot be prepared: drift and quality fail); y is tested as usual."""
    profile = build_profile({"x": np.arange(21.0), "n": np.arange(21.0), "y": np.arange(21.0)})
    settings = MonitorSettings(window={"rows": 3, "seconds": None},
                               overrides={"x": {"method": "psi"}})
    huge = np.empty(3, dtype=object)
    huge[:] = [1, 10**400, 2]
    rows = {"x": np.array([-1.7e308, 1.7e308, 0.0]), "n": huge, "y": np.array([1.0, 2, 3])}
    (closed,) = TumblingWindow(profile, settings, 0.0).add(rows, 3, *NO_FACTS, now=1.0)
    s, _ = _scrape([VersionSnapshot("m", "1", True, latest=closed)])
    mv = {"model": "m", "version": "1"}
    assert _get(s, "vigil_failed_columns", **mv) == 2
    scored = {dict(k[1])["feature"] for k in s if k[0] == "vigil_feature_drift_score"}
    assert scored == {"y"}
    assert _get(s, "vigil_out_of_range_ratio", feature="x", **mv) == 2 / 3  # x's quality holds
    assert _get(s, "vigil_missing_ratio", feature="n", **mv) is None  # n's does not
    assert _get(s, "vigil_drift_share_ratio", **mv) == 1.0  # y drifted: 1 of the 1 tested


def test_no_failed_column_is_a_zero(closed) -> None:
    s, _ = _scrape([VersionSnapshot("m", "1", True, latest=closed)])
    assert _get(s, "vigil_failed_columns", model="m", version="1") == 0


def test_names_and_labels_follow_the_house_rules(closed) -> None:
    s, _ = _scrape([VersionSnapshot("m", "1", True, latest=closed)])
    assert all(name.startswith("vigil_") for name, _ in s)
    assert set().union(*(dict(labels).keys() for _, labels in s)) <= ALLOWED_LABELS


def test_a_version_without_profile_exports_latency_not_drift(closed) -> None:
    from dataclasses import replace

    no_drift = replace(closed, result=None)
    s, _ = _scrape([VersionSnapshot("m", "1", False, latest=no_drift)])
    assert _get(s, "vigil_profile_loaded", model="m", version="1") == 0.0
    assert _get(s, "vigil_window_latency_seconds", model="m", version="1", quantile="0.99")
    assert not [k for k in s if k[0] in ("vigil_feature_drift_score", "vigil_drift_share_ratio")]


def test_before_any_window_and_for_unknown_models_only_counters(closed) -> None:
    s, _ = _scrape([
        VersionSnapshot("m", "1", True),
        VersionSnapshot("_unknown", "", None, rows_received=4, rows_dropped={"schema": 4}),
    ])
    assert _get(s, "vigil_profile_loaded", model="m", version="1") == 1.0
    assert _get(s, "vigil_window_rows", model="m", version="1") is None
    assert _get(s, "vigil_sample_rows_dropped_total", model="_unknown", version="",
                kind="schema") == 4
    assert _get(s, "vigil_profile_loaded", model="_unknown", version="") is None
    assert _get(s, "vigil_windows_evaluated_total", model="_unknown", version="") is None


# ---------------------------------------------------------------- exposition, pinned

EXPOSITION = Path(__file__).with_name("collector_exposition.txt")


def _families(text: str) -> dict[str, str]:
    """Family name -> its block of the exposition (HELP, TYPE and sample lines)."""
    blocks: dict[str, str] = {}
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            name = line.split()[2]
        blocks[name] = blocks.get(name, "") + line
    return blocks


def test_exposition_is_pinned() -> None:
    """Every family the collectors exported before their families became one table (names,
    help, types, labels, sample order and values on fixed snapshots) is exported the same;
    families added since may come after them. A changed or missing family fails, named."""
    window = TumblingWindow(_profile(), MonitorSettings(window={"rows": 4, "seconds": None}), 0.0)
    rows = {"x": np.array([100.0, 101, 102, 103]), "c": np.array(["a", "b", "a", "zz"]),
            "y": np.array([0.0, 1, 2, np.nan])}
    (latest,) = window.add(rows, 4, np.array([0.1, 0.2, 0.3, 0.4]),
                           np.array([200, 200, 500, 499]), now=1700000000.0, agreement=(3, 4))
    snaps = [
        VersionSnapshot("m", "1", True, latest=latest, windows_evaluated=7, current_rows=2,
                        rows_received=30, requests_received=12,
                        rows_dropped={"replica": 5, "schema": 3}, requests_dropped={"schema": 1},
                        rows_agreeing=3, rows_compared=4),
        VersionSnapshot("m", "2", False, latest=dataclasses.replace(latest, result=None)),
        VersionSnapshot("n", "1", True),
        VersionSnapshot("_unknown", "", None, rows_received=4, rows_dropped={"schema": 4},
                        messages_dropped={"malformed": 2}),
    ]
    stats = DeliveryStats()
    stats.observe("a", "delivered", 0.02)
    stats.observe("a", "timeout", 10.0)
    stats.observe("b", "rejected", 100.0)
    stats.dead_lettered("b")
    stats.set_pending({"a": 3, "c": 1})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(lambda: snaps))
    registry.register(AlertCollector(lambda: [("m", "1", "drift", True), ("m", "2", "lat", False)],
                                     stats, lambda: ["a", "z"]))
    now = _families(generate_latest(registry).decode())
    pinned = _families(EXPOSITION.read_text())
    assert [name for name in now if name in pinned] == list(pinned)  # same order
    for name, block in pinned.items():
        assert now[name] == block, name


def _profile():
    reference = {"x": np.arange(20.0), "c": np.array(["a", "b"] * 10), "y": np.arange(20.0) % 3}
    return build_profile(reference, outputs=["y"])


# ---------------------------------------------------------------- delivery stats across threads


def test_scrapes_while_attempts_are_recorded_see_whole_attempts() -> None:
    """Writers record attempts (1 s each, new targets appearing) while a scraper renders the
    metrics: every scrape succeeds (no 'dictionary changed size during iteration'), and in
    every scrape each target's histogram count equals its attempts and its sum their seconds
    (an attempt is seen whole or not at all)."""
    stats = DeliveryStats()
    stop = threading.Event()
    errors: list[BaseException] = []
    scrapes = 0

    def write(prefix: str) -> None:
        i = 0
        while not stop.is_set():
            stats.observe(f"{prefix}{i % 200}", "delivered", 1.0)
            i += 1

    def read() -> None:
        nonlocal scrapes
        try:
            while not stop.is_set():
                s, _, _ = scrape(AlertCollector(lambda: [], stats, lambda: []))
                targets = {dict(k[1])["target"] for k in s if k[0] == "vigil_webhook_deliveries_total"}
                for t in targets:
                    attempts = s[("vigil_webhook_deliveries_total",
                                  frozenset({"target": t, "outcome": "delivered"}.items()))]
                    count = s[("vigil_webhook_delivery_seconds_count", frozenset({"target": t}.items()))]
                    total = s[("vigil_webhook_delivery_seconds_sum", frozenset({"target": t}.items()))]
                    assert attempts == count == total, (t, attempts, count, total)
                scrapes += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            stop.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: a race shows within a second
    try:
        threads = [threading.Thread(target=write, args=(p,)) for p in "ab"]
        threads.append(threading.Thread(target=read))
        for t in threads:
            t.start()
        stop.wait(2.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]
    assert scrapes > 0


def test_outbox_size_metrics() -> None:
    """Rows by state, events, bytes and the pruned total, once the deliverer has counted them;
    no samples before."""
    from monitoring.collector_ops import Held, StateCollector
    from monitoring.outbox import OutboxSize

    s, types, _ = scrape(StateCollector(lambda: Held(outbox=None)))
    assert not [k for k in s if k[0].startswith("vigil_webhook_outbox_")
                and not k[0].startswith("vigil_webhook_outbox_write_failures")]
    # Failed writes are counted from the start, zeros included (test_disk_full counts one).
    assert {k for k in s if k[0].startswith("vigil_webhook_outbox_write_failures")} == {
        ("vigil_webhook_outbox_write_failures_total", frozenset({("reason", r)}))
        for r in ("disk_full", "io_error")}
    assert types["vigil_webhook_outbox_pruned_events"] == "counter"
    assert types["vigil_webhook_outbox_bytes"] == "gauge"
    size = OutboxSize(7, {"pending": 2, "delivered": 9, "dead": 1}, 40960, 120)
    s, _, _ = scrape(StateCollector(lambda: Held(outbox=size)))
    assert _get(s, "vigil_webhook_outbox_events") == 7
    assert {st: _get(s, "vigil_webhook_outbox_deliveries", state=st)
            for st in ("pending", "delivered", "dead")} == {"pending": 2, "delivered": 9, "dead": 1}
    assert _get(s, "vigil_webhook_outbox_bytes") == 40960
    assert _get(s, "vigil_webhook_outbox_pruned_events_total") == 120


def test_state_metrics_say_what_the_monitor_holds() -> None:
    from monitoring.collector_ops import Held, StateCollector

    s, types, _ = scrape(StateCollector(lambda: Held(versions=3, released=7, reports=2,
                                                     report_bytes=3_000_000)))
    assert (_get(s, "vigil_monitored_versions"), _get(s, "vigil_monitor_released_versions_total"),
            _get(s, "vigil_report_cache_reports"), _get(s, "vigil_report_cache_bytes")) == \
        (3, 7, 2, 3_000_000)
    assert types["vigil_monitor_released_versions"] == "counter"
