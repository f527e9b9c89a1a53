"""The alert engine over a real outbox (firing, filters, restart, removed rules, silence,
describe), and the alert and webhook metrics as Prometheus renders them."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.alert_settings import AlertRule, WebhookTarget
from monitoring.alerts import AlertEngine
from monitoring.collector_ops import AlertCollector
from monitoring.outbox import Outbox
from monitoring.rules import AlertState
from monitoring.webhooks import SECONDS_BUCKETS, DeliveryStats
from tests.unit.monitoring.helpers import drift_of, latency_of, scrape, window_of

IRIS = ("iris", "1")
PUBLIC = "http://mon.example:8000/monitor"
DRIFT = AlertRule(name="drift", when={"dataset_drift": True})
SLOW = AlertRule(name="slow", when={"latency_p99_above_s": 0.5})
QUIET = AlertRule(name="quiet", when={"no_traffic_for_s": 60})
TARGETS = [
    WebhookTarget(name="all", url="http://127.0.0.1:9/a", secret_env="S"),
    WebhookTarget(name="latency", url="http://127.0.0.1:9/l", secret_env="S",
                  events=["vigil.latency.slo_breached"]),
    WebhookTarget(name="drift", url="http://127.0.0.1:9/d", secret_env="S",
                  events=["vigil.drift.detected", "vigil.alert.resolved"]),
]
DRIFTED = [drift_of("x", 0.001, drifted=True), drift_of("y", 0.01, drifted=True)]
STEADY = [drift_of("x", 0.5), drift_of("y", 0.6)]


def _window(index: int, features, **kw):
    return window_of(index=index, features=features, **kw)


class Notified:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def outbox(path: Path) -> Iterator[Outbox]:
    box = Outbox(path)
    yield box
    box.close()


def _engine(outbox: Outbox, rules=(DRIFT, SLOW), now: float = 0.0, notify=None) -> AlertEngine:
    engine = AlertEngine(outbox, PUBLIC, now, notify=notify)
    engine.configure(list(rules), TARGETS, [IRIS], now)
    return engine


def _events(outbox: Outbox) -> list[dict]:
    """Every stored event, oldest first, with the targets it is delivered to."""
    rows = outbox.deliveries(limit=1000)
    ids = sorted({d.event_id for d in rows}, key=lambda i: outbox.event(i)["time"])
    return [{**outbox.event(i), "targets": sorted(d.target for d in rows if d.event_id == i)}
            for i in ids]


def test_a_firing_commits_an_event_for_the_targets_that_want_it(outbox) -> None:
    notified = Notified()
    engine = _engine(outbox, notify=notified)
    assert notified.calls == 0 and _events(outbox) == []
    engine.on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    (event,) = _events(outbox)
    assert event["type"] == "vigil.drift.detected" and event["subject"] == "iris/1"
    assert event["targets"] == ["all", "drift"]  # not "latency"
    assert event["source"] == PUBLIC
    data = event["data"]
    assert (data["rule"], data["status"], data["window"]["index"]) == ("drift", "firing", 1)
    assert data["crossed"] == [{"statistic": "share_drifted", "value": 1.0, "threshold": 0.5}]
    assert [f["name"] for f in data["top_features"]] == ["x", "y"]
    assert (notified.calls, engine.events_committed) == (1, 1)
    state = AlertState(firing=True, since=100.0, last_fired_at=100.0,
                       last_event_id=event["id"], breaching=1)
    assert outbox.load_alerts() == {("iris", "1", "drift"): state}
    assert engine.states[("iris", "1", "drift")] == state
    # the latency rule had no requests to judge: a state, no event
    assert engine.firing() == [("iris", "1", "drift", True), ("iris", "1", "slow", False)]


def test_a_latency_firing_goes_to_the_latency_target(outbox) -> None:
    engine = _engine(outbox)
    window = _window(1, STEADY, latency=latency_of(50, p99=0.9))
    engine.on_window("iris", "1", window, now=10.0)
    (event,) = _events(outbox)
    assert (event["type"], event["targets"]) == ("vigil.latency.slo_breached", ["all", "latency"])


def test_a_restart_keeps_the_firing_state(path, outbox) -> None:
    _engine(outbox).on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    outbox.close()

    reopened = Outbox(path)
    engine = _engine(reopened, now=200.0)
    assert engine.states[("iris", "1", "drift")].firing
    engine.on_window("iris", "1", _window(1, DRIFTED), now=300.0)  # still breached: no event
    assert len(_events(reopened)) == 1
    engine.on_window("iris", "1", _window(2, STEADY), now=400.0)
    fired, resolved = _events(reopened)
    assert resolved["type"] == "vigil.alert.resolved"
    assert resolved["targets"] == ["all", "drift"]
    data = resolved["data"]
    assert (data["status"], data["resolves"], data["fired_at"]) == \
        ("resolved", "vigil.drift.detected", "1970-01-01T00:01:40.000Z")
    assert "reason" not in data
    state = reopened.load_alerts()[("iris", "1", "drift")]
    assert (state.firing, state.since, state.last_fired_at, state.last_event_id) == \
        (False, None, 100.0, resolved["id"])
    reopened.close()


def test_a_removed_rule_resolves_its_firing_alert(outbox) -> None:
    engine = _engine(outbox)
    engine.on_window("iris", "1", _window(1, DRIFTED, latency=latency_of(50, p99=0.1)), now=100.0)
    assert len(_events(outbox)) == 1
    engine.configure([SLOW], TARGETS, [IRIS], now=150.0)
    fired, resolved = _events(outbox)
    assert resolved["type"] == "vigil.alert.resolved"
    assert resolved["time"] == "1970-01-01T00:02:30.000Z"
    data = resolved["data"]
    assert (data["rule"], data["reason"], data["resolves"], data["window"]) == \
        ("drift", "rule_removed", "vigil.drift.detected", None)
    assert data["verdict"] == "the rule was removed or no longer watches this version"
    assert resolved["targets"] == ["all", "drift"]
    assert outbox.load_alerts() == {}  # drift's state is forgotten (slow's was never stored)
    assert ("iris", "1", "drift") not in engine.states
    assert [d["rule"] for d in engine.describe("iris", "1", 0.0)] == ["slow"]
    engine.configure([], TARGETS, [IRIS], now=160.0)  # slow was not firing: no event
    assert len(_events(outbox)) == 2 and engine.states == {}


def test_a_rule_that_stops_watching_a_version_resolves_there(outbox) -> None:
    engine = _engine(outbox)
    engine.on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    elsewhere = AlertRule(name="drift", model="iris", version="2", when={"dataset_drift": True})
    engine.configure([elsewhere, SLOW], TARGETS, [IRIS, ("iris", "2")], now=120.0)
    assert [e["data"].get("reason") for e in _events(outbox)] == [None, "rule_removed"]


def test_a_rule_removed_while_the_monitor_was_down_is_dropped_quietly(path, outbox,
                                                                       caplog) -> None:
    _engine(outbox).on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    caplog.set_level(logging.WARNING, "vigil.alerts")
    reopened = Outbox(path)
    engine = AlertEngine(reopened, PUBLIC, 200.0)
    engine.configure([SLOW], TARGETS, [IRIS], now=200.0)
    assert len(_events(outbox)) == 1 and outbox.load_alerts() == {}
    reopened.close()
    assert "its rule is gone" in caplog.text


def test_for_windows_and_describe(outbox) -> None:
    rule = AlertRule(name="drift", when={"dataset_drift": True}, for_windows=2, cooldown_s=60)
    engine = _engine(outbox, rules=[rule])
    (fresh,) = engine.describe("iris", "1", 100.0)
    assert (fresh["status"], fresh["latest"], fresh["firing"]) == ("ok", None, False)
    engine.on_window("iris", "1", _window(5, DRIFTED), now=100.0)
    (pending,) = engine.describe("iris", "1", 100.0)
    assert pending == {
        "rule": "drift", "when": {"dataset_drift": True}, "action": "notify",
        "event_type": "vigil.drift.detected", "status": "pending", "for_windows": 2, "resolve_windows": 1, "cooldown_s": 60.0,
        "firing": False, "since": None, "last_fired_at": None, "last_event_id": None,
        "breaching": 1, "healthy": 0, "cooldown_until": None,
        "latest": {"window": 5, "breached": True,
                   "detail": "2 of 2 features drifted (share 1, threshold 0.5)",
                   "crossed": [{"statistic": "share_drifted", "value": 1.0, "threshold": 0.5,
                                "column": None, "method": None}],
                   "at": 100.0},
    }
    assert _events(outbox) == []
    engine.on_window("iris", "1", _window(6, DRIFTED), now=110.0)
    (firing,) = engine.describe("iris", "1", 110.0)
    assert (firing["status"], firing["since"], firing["latest"]["window"]) == ("firing", 110.0, 6)
    assert engine.describe("other", "1", 110.0) == [
        {**firing, "status": "ok", "firing": False, "since": None, "last_fired_at": None,
         "last_event_id": None, "breaching": 0, "latest": None}
    ]


def test_a_silence_rule_is_judged_by_tick(outbox) -> None:
    engine = _engine(outbox, rules=[QUIET, DRIFT], now=0.0)
    engine.on_window("iris", "1", _window(1, STEADY), now=5.0)  # silence is not judged per window
    assert ("iris", "1", "quiet") not in engine.evaluations
    engine.tick([IRIS], now=59.0)
    assert engine.evaluations[("iris", "1", "quiet")].verdict.breached is False
    assert _events(outbox) == []
    engine.tick([IRIS], now=60.0)  # 60 s since the engine started, without a request
    (stopped,) = _events(outbox)
    assert stopped["type"] == "vigil.traffic.stopped" and stopped["targets"] == ["all"]
    assert stopped["data"]["crossed"] == [{"statistic": "silent_s", "value": 60.0,
                                           "threshold": 60.0}]
    assert stopped["data"]["window"] is None
    engine.tick([IRIS], now=90.0)  # still silent: no second event
    assert len(_events(outbox)) == 1
    engine.request_seen("iris", "1", now=100.0)
    engine.tick([IRIS], now=101.0)
    _, resolved = _events(outbox)
    assert (resolved["type"], resolved["data"]["resolves"]) == \
        ("vigil.alert.resolved", "vigil.traffic.stopped")
    engine.tick([IRIS, ("iris", "2")], now=130.0)  # version 2: silent since the start
    assert [e["subject"] for e in _events(outbox)] == ["iris/1", "iris/1", "iris/2"]


def test_a_failed_commit_is_tried_again_by_the_next_verdict(outbox, caplog) -> None:
    engine = _engine(outbox)
    commit = outbox.commit

    def broken(*args, **kwargs):
        raise OSError("disk full")

    outbox.commit = broken  # type: ignore[method-assign]
    engine.on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    assert "could not commit alerts of iris/1" in caplog.text
    assert not engine.states.get(("iris", "1", "drift"), AlertState()).firing
    outbox.commit = commit  # type: ignore[method-assign]
    engine.on_window("iris", "1", _window(2, DRIFTED), now=110.0)
    (event,) = _events(outbox)
    assert event["data"]["window"]["index"] == 2 and engine.states[("iris", "1", "drift")].firing


# ---------------------------------------------------------------- metrics


def _get(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_alert_and_webhook_metrics() -> None:
    stats = DeliveryStats()
    for target, outcome, seconds in (("a", "delivered", 0.003), ("a", "delivered", 0.2),
                                     ("a", "timeout", 10.0), ("b", "connection_error", 0.02)):
        stats.observe(target, outcome, seconds)
    stats.dead_letters["b"] += 1
    stats.pending = {"a": 2, "old": 1}  # "old": no longer configured, rows left
    firing = [("iris", "1", "drift", True), ("iris", "1", "slow", False)]
    s, types, text = scrape(AlertCollector(lambda: firing, stats, lambda: ["a", "b", "c"]))

    assert _get(s, "vigil_alert_firing", model="iris", version="1", rule="drift") == 1.0
    assert _get(s, "vigil_alert_firing", model="iris", version="1", rule="slow") == 0.0
    assert types == {"vigil_alert_firing": "gauge", "vigil_webhook_deliveries": "counter",
                     "vigil_webhook_dead_letters": "counter",
                     "vigil_webhook_outbox_pending": "gauge",
                     "vigil_webhook_delivery_seconds": "histogram"}

    def deliveries(target: str, outcome: str) -> float | None:
        return _get(s, "vigil_webhook_deliveries_total", target=target, outcome=outcome)

    assert (deliveries("a", "delivered"), deliveries("a", "timeout"), deliveries("a", "rejected"),
            deliveries("b", "connection_error"), deliveries("c", "delivered"),
            deliveries("old", "http_error")) == (2, 1, 0, 1, 0, 0)
    assert {t: _get(s, "vigil_webhook_outbox_pending", target=t) for t in "abc"} == \
        {"a": 2, "b": 0, "c": 0}
    assert _get(s, "vigil_webhook_outbox_pending", target="old") == 1
    assert {t: _get(s, "vigil_webhook_dead_letters_total", target=t) for t in "abc"} == \
        {"a": 0, "b": 1, "c": 0}
    assert 'vigil_webhook_deliveries_total{outcome="delivered",target="a"} 2.0' in text

    bounds = [*map(str, SECONDS_BUCKETS), "+Inf"]
    for target, total, seconds_sum in (("a", 3, 10.203), ("b", 1, 0.02), ("c", 0, 0.0)):
        buckets = [_get(s, "vigil_webhook_delivery_seconds_bucket", target=target, le=b)
                   for b in bounds]
        assert None not in buckets
        assert buckets == sorted(buckets)  # cumulative
        assert buckets[-1] == total == _get(s, "vigil_webhook_delivery_seconds_count",
                                            target=target)
        assert _get(s, "vigil_webhook_delivery_seconds_sum", target=target) == \
            pytest.approx(seconds_sum)
    a = {b: _get(s, "vigil_webhook_delivery_seconds_bucket", target="a", le=b) for b in bounds}
    assert (a["0.005"], a["0.1"], a["0.25"], a["5.0"], a["10.0"]) == (1, 1, 2, 2, 3)


def test_metrics_without_alerts_or_targets() -> None:
    s, types, _ = scrape(AlertCollector(lambda: [], DeliveryStats(), lambda: []))
    assert s == {}
    assert set(types) == {"vigil_alert_firing", "vigil_webhook_deliveries",
                          "vigil_webhook_dead_letters", "vigil_webhook_outbox_pending",
                          "vigil_webhook_delivery_seconds"}


def test_the_engine_feeds_the_firing_gauge(outbox) -> None:
    engine = _engine(outbox)
    engine.on_window("iris", "1", _window(1, DRIFTED), now=100.0)
    s, _, _ = scrape(AlertCollector(engine.firing, DeliveryStats(), lambda: ["all"]))
    assert _get(s, "vigil_alert_firing", model="iris", version="1", rule="drift") == 1.0
    assert _get(s, "vigil_alert_firing", model="iris", version="1", rule="slow") == 0.0
    assert json.loads(json.dumps(engine.describe("iris", "1", 0.0)))[0]["status"] == "firing"


def test_describe_says_until_when_a_resolved_alert_cools_down(outbox) -> None:
    rule = AlertRule(name="drift", when={"dataset_drift": True}, cooldown_s=60)
    engine = _engine(outbox, rules=[rule])
    engine.on_window("iris", "1", _window(1, DRIFTED), now=100.0)  # fires
    engine.on_window("iris", "1", _window(2, STEADY), now=110.0)  # resolves
    engine.on_window("iris", "1", _window(3, DRIFTED), now=120.0)  # inside the cooldown
    (cooling,) = engine.describe("iris", "1", 120.0)
    assert (cooling["status"], cooling["firing"], cooling["cooldown_until"]) == ("pending", False, 160.0)
    assert engine.describe("iris", "1", 161.0)[0]["cooldown_until"] is None
    engine.on_window("iris", "1", _window(4, DRIFTED), now=161.0)  # past it: fires again
    assert engine.describe("iris", "1", 161.0)[0]["status"] == "firing"
