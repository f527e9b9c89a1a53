"""Alert events as CloudEvents 1.0, and their Standard Webhooks signature checked by the
reference library."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from monitoring.alert_settings import AlertRule
from monitoring.events import RESOLVED, alert_event, encode, rfc3339, signature
from monitoring.rules import AlertState, Crossed, Verdict
from tests.unit.monitoring.helpers import drift_of, window_of

KEY, OLD_KEY = bytes(range(32)), bytes(range(100, 132))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
OLD_SECRET = "whsec_" + base64.b64encode(OLD_KEY).decode()
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RULE = AlertRule(name="drift", when={"features_drifted": ["x", "y"]})


def _event(transition="fire", **kw) -> dict:
    window = window_of(index=7, rows=250, features=[
        drift_of("x", 0.001, drifted=True), drift_of("y", 0.5),
        drift_of("z", 0.4, method="wasserstein", threshold=0.1, drifted=True),
    ])
    args = {
        "rule": RULE, "model": "iris", "version": "3", "transition": transition,
        "verdict": Verdict(True, "drifted: x", (Crossed("drift_score", 0.001, 0.05, "x", "ks"),),
                           window=7),
        "state": AlertState(firing=True, since=1_700_000_100.0, last_fired_at=1_700_000_100.0),
        "window": window, "public_url": "http://monitor.example:8000/monitor/",
        "now": 1_700_000_100.25,
    }
    return alert_event(**{**args, **kw})


def test_rfc3339() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_700_000_060.5) == "2023-11-14T22:14:20.500Z"


def test_a_firing_is_a_cloudevent() -> None:
    event = _event()
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"]).version == 4
    assert event["source"] == "http://monitor.example:8000/monitor"
    assert event["type"] == "vigil.drift.detected"
    assert event["subject"] == "iris/3"
    assert event["time"] == "2023-11-14T22:15:00.250Z" and RFC3339_Z.match(event["time"])
    assert event["datacontenttype"] == "application/json"
    assert set(event) == {"specversion", "id", "source", "type", "subject", "time",
                          "datacontenttype", "data"}
    assert _event()["id"] != event["id"]


def test_a_firings_data() -> None:
    data = _event()["data"]
    assert (data["rule"], data["model"], data["version"], data["status"]) == \
        ("drift", "iris", "3", "firing")
    assert data["condition"] == {"features_drifted": ["x", "y"]}
    assert data["fired_at"] == "2023-11-14T22:15:00.000Z"
    assert data["window"] == {"index": 7, "start": "2023-11-14T22:13:20.000Z",
                              "end": "2023-11-14T22:14:20.500Z", "rows": 250, "requests": 0}
    assert data["verdict"] == "drifted: x"
    assert data["crossed"] == [{"statistic": "drift_score", "value": 0.001, "threshold": 0.05,
                                "column": "x", "method": "ks"}]
    assert [f["name"] for f in data["top_features"]] == ["x", "z", "y"]
    assert data["top_features"][0] == {"name": "x", "method": "ks", "score": 0.001,
                                       "threshold": 0.05, "drifted": True}
    assert data["links"] == {
        "drift": "http://monitor.example:8000/monitor/v1/models/iris/drift?version=3",
        "report": "http://monitor.example:8000/monitor/v1/models/iris/report?version=3",
    }
    assert "resolves" not in data and "reason" not in data


def test_a_resolution() -> None:
    state = AlertState(firing=False, last_fired_at=1_700_000_000.0)
    event = _event("resolve", verdict=Verdict(False, "gone"), state=state, window=None,
                   reason="rule_removed")
    assert event["type"] == RESOLVED == "vigil.alert.resolved"
    data = event["data"]
    assert (data["status"], data["resolves"], data["reason"]) == \
        ("resolved", "vigil.drift.detected", "rule_removed")
    assert (data["window"], data["top_features"], data["crossed"]) == (None, [], [])
    assert data["fired_at"] == "2023-11-14T22:13:20.000Z"
    assert "reason" not in _event("resolve", verdict=Verdict(False, "ok"))["data"]


def test_fired_at_is_given_for_any_firing_time() -> None:
    assert _event(state=AlertState(firing=True, since=0.0, last_fired_at=0.0))["data"][
        "fired_at"] == "1970-01-01T00:00:00.000Z"
    assert _event(state=AlertState())["data"]["fired_at"] is None


def test_a_silence_event_without_a_window() -> None:
    rule = AlertRule(name="quiet", when={"no_traffic_for_s": 60})
    event = _event(rule=rule, window=None, verdict=Verdict(True, "no request for 61 s",
                                                            (Crossed("silent_s", 61.0, 60.0),)))
    assert event["type"] == "vigil.traffic.stopped"
    assert event["data"]["crossed"] == [{"statistic": "silent_s", "value": 61.0, "threshold": 60.0}]
    assert event["data"]["window"] is None


def test_encode_is_compact_json() -> None:
    event = _event()
    body = encode(event)
    assert isinstance(body, bytes) and json.loads(body) == event
    assert b"\n" not in body


# ---------------------------------------------------------------- signatures


def _headers(keys, event_id: str, stamp: int, body: bytes) -> dict[str, str]:
    return {"webhook-id": event_id, "webhook-timestamp": str(stamp),
            "webhook-signature": signature(keys, event_id, stamp, body)}


def test_a_signed_body_verifies_with_standard_webhooks() -> None:
    event = _event()
    body = encode(event)
    headers = _headers([KEY], event["id"], int(time.time()), body)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", headers["webhook-signature"])
    assert Webhook(SECRET).verify(body, headers) == event
    # the very signature the library makes
    stamp = int(headers["webhook-timestamp"])
    assert Webhook(SECRET).sign(event["id"], datetime.fromtimestamp(stamp, UTC), body.decode()) \
        == headers["webhook-signature"]


def test_a_tampered_body_or_header_is_rejected() -> None:
    event = _event()
    body = encode(event)
    headers = _headers([KEY], event["id"], int(time.time()), body)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(body.replace(b'"iris"', b'"irid"'), headers)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": str(uuid.uuid4())})
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(OLD_SECRET).verify(body, headers)


def test_an_old_timestamp_is_rejected() -> None:
    event = _event()
    body = encode(event)
    old = int(time.time()) - 301
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, _headers([KEY], event["id"], old, body))
    recent = int(time.time()) - 240
    assert Webhook(SECRET).verify(body, _headers([KEY], event["id"], recent, body)) == event


def test_while_rotating_either_secret_verifies() -> None:
    event = _event()
    body = encode(event)
    headers = _headers([KEY, OLD_KEY], event["id"], int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(SECRET).verify(body, headers) == event
    assert Webhook(OLD_SECRET).verify(body, headers) == event
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_a_rollback_names_its_window_and_figures() -> None:
    """The rolled-back event's window is the window's summary with RFC 3339 times."""
    from monitoring.events import rollback_event
    from tests.unit.monitoring.helpers import latency_of

    rule = AlertRule(name="errors", when={"error_ratio_above": 0.1}, action="rollback_canary")
    window = window_of(index=3, rows=40, latency=latency_of(50, p99=0.5, error_ratio=0.2))
    event = rollback_event(rule=rule, model="iris", version="4", production="3", generation=9,
                           reason="why", verdict=Verdict(True, "errors"), window=window,
                           public_url="http://m/monitor", now=1_700_000_100.0)
    assert event["data"]["window"] == {
        "index": 3, "start": "2023-11-14T22:13:20.000Z", "end": "2023-11-14T22:14:20.500Z",
        "rows": 40, "requests": 50, "error_ratio": 0.2, "latency_p99_s": 0.5,
        "shadow_agreement": None,
    }
    assert (event["type"], event["subject"], event["source"]) == \
        ("vigil.model.rolled_back", "iris/4", "http://m/monitor")
    assert event["data"]["links"]["drift"] == "http://m/monitor/v1/models/iris/drift?version=4"
