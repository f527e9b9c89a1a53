"""Alert rule and webhook target settings: one condition, names, URLs, secrets, filters."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from monitoring.alert_settings import (
    EVENT_TYPES,
    AlertRule,
    Condition,
    WebhookTarget,
    redact_url,
    scrub,
    secret_key,
)
from monitoring.settings import MonitorSettings

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
CHOICES = ("dataset_drift", "drift_share_at_least", "features_drifted", "prediction_drift",
           "missing_ratio_above", "out_of_range_ratio_above", "unseen_category_ratio_above",
           "latency_p99_above_s", "error_ratio_above", "shadow_agreement_below",
           "no_traffic_for_s")


def _rule(**kw) -> AlertRule:
    return AlertRule(**{"name": "r", "when": {"dataset_drift": True}, **kw})


def _target(**kw) -> WebhookTarget:
    return WebhookTarget(**{"name": "t", "url": "http://127.0.0.1:9000/hook",
                            "secret_env": "VIGIL_SECRET", **kw})


@pytest.mark.parametrize("when", [{}, {"dataset_drift": True, "error_ratio_above": 0.1}])
def test_when_needs_exactly_one_condition_and_names_the_choices(when) -> None:
    with pytest.raises(ValidationError) as info:
        _rule(when=when)
    message = str(info.value)
    assert "exactly one condition of" in message
    assert all(name in message for name in CHOICES)
    assert ("got none" in message) if not when else ("'dataset_drift', 'error_ratio_above'" in message)


def test_unknown_keys_are_refused_in_rule_condition_and_target() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        _rule(severity="page")
    with pytest.raises(ValidationError, match="Extra inputs"):
        _rule(when={"dataset_drift": True, "drift_sahre": 0.5})
    with pytest.raises(ValidationError, match="Extra inputs"):
        _target(retries=3)


def test_condition_values_are_bounded() -> None:
    for bad in ({"dataset_drift": False}, {"drift_share_at_least": 0.0},
                {"drift_share_at_least": 1.5}, {"features_drifted": []},
                {"features_drifted": [""]}, {"missing_ratio_above": 1.0},
                {"latency_p99_above_s": 0.0}, {"no_traffic_for_s": 0.5}):
        with pytest.raises(ValidationError):
            Condition(**bad)


def test_a_traffic_rule_is_judged_continuously() -> None:
    assert _rule(when={"no_traffic_for_s": 60}).for_windows == 1
    with pytest.raises(ValidationError, match="for_windows and resolve_windows do not apply"):
        _rule(when={"no_traffic_for_s": 60}, for_windows=2)
    with pytest.raises(ValidationError, match="do not apply"):
        _rule(when={"no_traffic_for_s": 60}, resolve_windows=3)
    assert _rule(when={"error_ratio_above": 0.1}, for_windows=3).for_windows == 3


@pytest.mark.parametrize(
    ("when", "event_type", "family"),
    [
        ({"dataset_drift": True}, "vigil.drift.detected", "drift"),
        ({"drift_share_at_least": 0.3}, "vigil.drift.detected", "drift"),
        ({"features_drifted": ["x"]}, "vigil.drift.detected", "drift"),
        ({"prediction_drift": True}, "vigil.prediction_drift.detected", "drift"),
        ({"missing_ratio_above": 0.1}, "vigil.data_quality.degraded", "quality"),
        ({"out_of_range_ratio_above": 0.1}, "vigil.data_quality.degraded", "quality"),
        ({"unseen_category_ratio_above": 0.1}, "vigil.data_quality.degraded", "quality"),
        ({"latency_p99_above_s": 0.5}, "vigil.latency.slo_breached", "requests"),
        ({"error_ratio_above": 0.05}, "vigil.errors.rate_exceeded", "requests"),
        ({"no_traffic_for_s": 600}, "vigil.traffic.stopped", "traffic"),
        ({"shadow_agreement_below": 0.9}, "vigil.shadow.disagrees", "shadow"),
    ],
)
def test_every_condition_has_its_event_type_and_family(when, event_type, family) -> None:
    condition = Condition(**when)
    (kind, value), = when.items()
    assert (condition.kind, condition.value) == (kind, value)
    assert (condition.event_type, condition.family) == (event_type, family)
    assert condition.event_type in EVENT_TYPES


def test_action_is_notify_or_rollback_canary() -> None:
    assert _rule().action == "notify" and _rule().event_type == "vigil.drift.detected"
    rollback = _rule(when={"error_ratio_above": 0.05}, action="rollback_canary")
    assert rollback.event_type == "vigil.model.rolled_back" and rollback.event_type in EVENT_TYPES
    with pytest.raises(ValidationError, match="'notify' or 'rollback_canary'"):
        _rule(action="rollback")
    with pytest.raises(ValidationError, match="no_traffic_for_s is not one of their conditions"):
        _rule(when={"no_traffic_for_s": 60}, action="rollback_canary")
    assert "vigil.model.rolled_back" in _target(events=["vigil.model.rolled_back"]).events


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_shadow_agreement_below_is_a_share(bad) -> None:
    assert Condition(shadow_agreement_below=1.0).value == 1.0
    with pytest.raises(ValidationError, match="shadow_agreement_below"):
        Condition(shadow_agreement_below=bad)


def test_names_are_validated() -> None:
    """A name with a trailing newline is refused too (it passed `^...$` with re.match, and
    then named a metric label and an outbox key)."""
    assert _rule(name="drift.p99_v-2").name == "drift.p99_v-2"
    for bad in ("", "-x", "has space", "a/b", "x" * 65, "drift\n"):
        with pytest.raises(ValidationError, match="rule names are 1..64"):
            _rule(name=bad)
        with pytest.raises(ValidationError, match="target names are 1..64"):
            _target(name=bad)


def test_names_are_unique_in_the_monitor_settings() -> None:
    rules = [{"name": "a", "when": {"dataset_drift": True}},
             {"name": "a", "when": {"error_ratio_above": 0.1}}]
    with pytest.raises(ValidationError, match=r"rule names must be unique: \['a'\]"):
        MonitorSettings(alerts=rules)
    hook = {"url": "https://example.com/h", "secret_env": "S"}
    with pytest.raises(ValidationError, match=r"webhook target names must be unique: \['h'\]"):
        MonitorSettings(webhooks=[{"name": "h", **hook}, {"name": "h", **hook}])
    settings = MonitorSettings(alerts=rules[:1], webhooks=[{"name": "a", **hook}])
    assert (settings.alerts[0].name, settings.webhooks[0].name) == ("a", "a")  # apart: fine
    assert MonitorSettings().alerts == [] and MonitorSettings().webhooks == []


def test_watches_model_and_version() -> None:
    assert _rule().watches("m", "1")
    rule = _rule(model="m", version="2")
    assert (rule.watches("m", "2"), rule.watches("m", "1"), rule.watches("n", "2")) == \
        (True, False, False)
    assert _rule(model="m").watches("m", "7") and not _rule(model="m").watches("x", "7")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/e", "https://hooks.example.com/a?b=1"])
def test_http_and_https_urls_are_accepted(url) -> None:
    assert _target(url=url).url == url


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/hook",
                                 "http:///nohost", "javascript:alert(1)"])
def test_other_urls_are_refused(url) -> None:
    with pytest.raises(ValidationError, match="http:// or https://"):
        _target(url=url)


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://host/\x7f"])
def test_urls_the_http_client_cannot_send_to_are_refused(url) -> None:
    with pytest.raises(ValidationError, match="not a valid webhook url"):
        _target(url=url)


def test_secret_env_names_one_variable_or_two_while_rotating() -> None:
    assert _target(secret_env="A").secret_envs == ["A"]
    assert _target(secret_env=["NEW", "OLD"]).secret_envs == ["NEW", "OLD"]
    with pytest.raises(ValidationError, match="one variable, or two"):
        _target(secret_env=["A", "B", "C"])
    with pytest.raises(ValidationError, match="one variable, or two"):
        _target(secret_env=[])
    with pytest.raises(ValidationError, match="not an environment variable name"):
        _target(secret_env="1BAD")
    with pytest.raises(ValidationError, match="not an environment variable name"):
        _target(secret_env=["GOOD", "BAD-NAME"])
    with pytest.raises(ValidationError, match="not an environment variable name"):
        _target(secret_env="SECRET\n")


def test_secrets_are_read_from_the_environment() -> None:
    new, old = bytes(range(100, 124)), bytes(range(24))
    env = {"NEW": "whsec_" + base64.b64encode(new).decode(),
           "OLD": "whsec_" + base64.b64encode(old).decode()}
    assert _target(secret_env="NEW").secrets(env) == [new]
    assert _target(secret_env=["NEW", "OLD"]).secrets(env) == [new, old]
    with pytest.raises(ValueError, match="environment variable MISSING is not set"):
        _target(secret_env=["NEW", "MISSING"]).secrets(env)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "VIGIL_SECRET is not set"),
        ("", "VIGIL_SECRET is not set"),
        (base64.b64encode(KEY).decode(), "VIGIL_SECRET must hold a secret starting with 'whsec_'"),
        ("whsec_not*base64!", "VIGIL_SECRET is not whsec_ \\+ base64"),
        ("whsec_abcde", "VIGIL_SECRET is not whsec_ \\+ base64"),  # 5 chars: no base64 length
        ("whsec_" + base64.b64encode(bytes(15)).decode(),
         "the secret in VIGIL_SECRET has 15 bytes; use at least 16"),
        ("whsec_", "VIGIL_SECRET is not set|has 0 bytes"),
    ],
)
def test_bad_secrets_name_their_variable(value, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        secret_key(value, "VIGIL_SECRET", "t")
    assert "webhook target 't'" in str(info.value)


def test_unpadded_base64_is_accepted() -> None:
    for key, padding in ((bytes(range(1, 17)), "=="), (bytes(range(1, 18)), "=")):  # 16, 17 bytes
        padded = base64.b64encode(key).decode()
        assert padded.endswith(padding) and not padded.endswith(padding + "=")
        assert secret_key("whsec_" + padded, "E", "t") == key
        assert secret_key("whsec_" + padded.rstrip("="), "E", "t") == key
    assert secret_key(SECRET, "E", "t") == KEY


def test_wants_filters_event_types() -> None:
    everything = _target()
    assert all(everything.wants(t) for t in EVENT_TYPES)
    some = _target(events=["vigil.drift.detected", "vigil.alert.resolved"])
    assert [t for t in EVENT_TYPES if some.wants(t)] == ["vigil.drift.detected",
                                                          "vigil.alert.resolved"]
    with pytest.raises(ValidationError):
        _target(events=["vigil.unknown"])
    with pytest.raises(ValidationError):
        _target(events=[])


def test_target_limits() -> None:
    target = _target()
    assert (target.timeout_s, target.max_attempts, target.concurrency, target.backoff_s,
            target.max_backoff_s) == (10.0, 8, 4, 1.0, 300.0)
    for bad in ({"timeout_s": 0}, {"max_attempts": 0}, {"concurrency": 65}, {"backoff_s": 0}):
        with pytest.raises(ValidationError):
            _target(**bad)


# ---------------------------------------------------------------- URLs shown redacted

SECRET_URL = "https://robot:hunter22-pw@hooks.example:8443/in?token=s3cr3t-t0ken&v=2#frag-ment"
SECRETS = ("hunter22-pw", "s3cr3t-t0ken", "frag-ment")


@pytest.mark.parametrize(("url", "shown"), [
    (SECRET_URL, "https://***@hooks.example:8443/in?token=***&v=***#***"),
    ("http://127.0.0.1:9000/events", "http://127.0.0.1:9000/events"),
    ("http://h/x?flag&k=", "http://h/x?flag&k=***"),
])
def test_redact_url_keeps_where_it_goes_not_its_secrets(url, shown) -> None:
    assert redact_url(url) == shown


def test_scrub_removes_the_url_and_each_secret_part_from_text() -> None:
    """An error that quotes the URL, raw or percent-decoded, or a part of it (a receiver
    echoing its query, a client naming the user:password it failed with)."""
    url = "http://robot:hunter%2022@h/x?token=s3cr3t%2Ft0ken"
    text = (f"failed: {url}; GET /x?token=s3cr3t/t0ken; auth robot:hunter 22 refused; "
            "short values like v=2 and the host h stay")
    assert scrub(text, url) == ("failed: http://***@h/x?token=***; GET /x?token=***; auth *** "
                                "refused; short values like v=2 and the host h stay")


def test_a_target_shows_its_url_redacted_and_sends_to_the_real_one() -> None:
    """The status route and the reconfigure log dump the settings: the URL is redacted there,
    in JSON and Python dumps alike, while `url` keeps the real one for the deliverer."""
    target = _target(url=SECRET_URL)
    assert target.url == SECRET_URL
    settings = MonitorSettings(webhooks=[target])
    for dumped in (json.dumps(settings.model_dump(mode="json")), str(settings.model_dump()),
                   settings.model_dump_json(), str(settings.model_dump(exclude_defaults=True))):
        assert "hooks.example:8443" in dumped
        assert not any(s in dumped for s in SECRETS), dumped


@pytest.mark.parametrize("bad", [
    {"url": SECRET_URL.replace("https", "ftp")},  # refused url: quoted, redacted
    {"url": SECRET_URL, "timeout_s": -1},  # another field of the target
    {"url": SECRET_URL, "name": "dup"},  # a check of the whole settings (unique names)
])
def test_validation_errors_do_not_quote_secrets(bad) -> None:
    hooks = [{"name": "t", "secret_env": "S", **bad}]
    if bad.get("name") == "dup":
        hooks = [{**hooks[0], "name": "dup"}, {**hooks[0], "name": "dup"}]
    with pytest.raises(ValidationError) as caught:
        MonitorSettings(webhooks=hooks)
    assert not any(s in str(caught.value) for s in SECRETS), str(caught.value)
