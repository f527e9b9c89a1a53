"""Monitor settings: defaults, bounds, unknown keys refused at every level, frozen."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from monitoring.settings import (
    FeatureDriftOverride,
    MonitorAppSettings,
    MonitorSettings,
    WindowSettings,
)


def _errors(**kwargs: Any) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        MonitorSettings(**kwargs)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


def test_every_field_is_described_and_bounded() -> None:
    unbounded_ok = {"correction", "overrides", "feature_types", "window", "method", "alerts",
                    "webhooks", "rollouts", "min_agreement", "prediction_drift"}
    from monitoring.rollout_settings import RolloutCheckSettings

    for model in (MonitorSettings, WindowSettings, FeatureDriftOverride, RolloutCheckSettings):
        for name, field in model.model_fields.items():
            assert field.description, (model.__name__, name)
            bounded = any(
                hasattr(m, attr) for m in field.metadata for attr in ("ge", "gt", "le", "lt")
            )
            assert bounded or name in unbounded_ok, (model.__name__, name)


def test_unknown_keys_are_refused_at_every_level() -> None:
    assert _errors(colour="red") == [(("colour",), "extra_forbidden")]
    assert _errors(window={"rows": 10, "minutes": 1}) == [(("window", "minutes"), "extra_forbidden")]
    assert _errors(overrides={"x": {"method": "ks", "alpha": 0.1}}) == [
        (("overrides", "x", "alpha"), "extra_forbidden")
    ]


@pytest.mark.parametrize(
    ("kwargs", "loc"),
    [
        ({"drift_share": 0.0}, ("drift_share",)),
        ({"drift_share": 1.5}, ("drift_share",)),
        ({"history": 0}, ("history",)),
        ({"correction": "holm"}, ("correction",)),
        ({"window": {"rows": 0}}, ("window", "rows")),
        ({"overrides": {"x": {"method": "t-test"}}}, ("overrides", "x", "method")),
        ({"overrides": {"x": {"threshold": 0}}}, ("overrides", "x", "threshold")),
        ({"feature_types": {"x": "text"}}, ("feature_types", "x")),
        ({"max_exact_values": 10}, ("max_exact_values",)),
    ],
)
def test_bounds(kwargs: dict[str, Any], loc: tuple) -> None:
    assert [e[0] for e in _errors(**kwargs)] == [loc]


def test_window_needs_rows_or_seconds() -> None:
    with pytest.raises(ValidationError, match="rows, seconds or both"):
        WindowSettings(rows=None, seconds=None)
    assert WindowSettings(rows=None, seconds=5).rows is None


def test_frozen() -> None:
    settings = MonitorSettings()
    with pytest.raises(ValidationError):
        settings.drift_share = 0.3  # type: ignore[misc]
    assert isinstance(settings, BaseModel)


def test_overlong_column_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="1..256 characters"):
        MonitorSettings(overrides={"x" * 300: {"method": "ks"}})


@pytest.mark.parametrize("url", ["http://robot:hunter22-pw@monitor.example/monitor",
                                 "http://monitor.example/monitor?token=s3cr3t-t0ken",
                                 "http://monitor.example/monitor#s3cr3t-t0ken"])
def test_public_url_carries_no_credentials(url) -> None:
    """It goes into every event: a user, password, query or fragment is refused, and the
    error does not quote it."""
    with pytest.raises(ValidationError, match="may carry no user, password, query") as caught:
        MonitorAppSettings(model_repository="/srv/models", public_url=url)
    assert "hunter22-pw" not in str(caught.value) and "s3cr3t-t0ken" not in str(caught.value)
