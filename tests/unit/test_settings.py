"""Settings: defaults, bounds, unknown keys refused at every level, VIGIL_ environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from serving.settings import BatchSettings, LoadingSettings, MiB, RuntimeSettings, ServerSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever VIGIL_ variables the shell running the tests has, these tests start without."""
    for key in list(os.environ):
        if key.upper().startswith("VIGIL_"):
            monkeypatch.delenv(key)


def _errors(model: type[BaseModel], **kwargs: Any) -> list[tuple[tuple, str]]:
    with pytest.raises(ValidationError) as info:
        model(**kwargs)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("model", "kwargs", "loc", "kind"),
    [
        (BatchSettings, {"max_batch_rows": 0}, ("max_batch_rows",), "greater_than_equal"),
        (BatchSettings, {"max_batch_rows": 1_000_001}, ("max_batch_rows",), "less_than_equal"),
        (
            BatchSettings,
            {"batch_wait_timeout_s": 1.001},
            ("batch_wait_timeout_s",),
            "less_than_equal",
        ),
        (
            BatchSettings,
            {"batch_wait_timeout_s": -0.1},
            ("batch_wait_timeout_s",),
            "greater_than_equal",
        ),
        (BatchSettings, {"max_batch_rows": 2.5}, ("max_batch_rows",), "int_from_float"),
        (RuntimeSettings, {"providers": []}, ("providers",), "too_short"),
        (RuntimeSettings, {"providers": ["tpu"]}, ("providers", 0), "literal_error"),
        (RuntimeSettings, {"cuda_device_id": -1}, ("cuda_device_id",), "greater_than_equal"),
        (
            RuntimeSettings,
            {"cuda_memory_limit_bytes": MiB},
            ("cuda_memory_limit_bytes",),
            "greater_than_equal",
        ),
        (RuntimeSettings, {"intra_op_threads": 257}, ("intra_op_threads",), "less_than_equal"),
        (RuntimeSettings, {"inter_op_threads": -1}, ("inter_op_threads",), "greater_than_equal"),
        (
            RuntimeSettings,
            {"graph_optimization_level": "max"},
            ("graph_optimization_level",),
            "literal_error",
        ),
        (ServerSettings, {"max_body_bytes": 1023}, ("max_body_bytes",), "greater_than_equal"),
        (ServerSettings, {"max_body_bytes": 4097 * MiB}, ("max_body_bytes",), "less_than_equal"),
        (ServerSettings, {"max_json_body_bytes": 1023}, ("max_json_body_bytes",),
         "greater_than_equal"),
        (ServerSettings, {"max_bytes_elements": 0}, ("max_bytes_elements",), "greater_than_equal"),
        (ServerSettings, {"auth": "off"}, ("auth",), "literal_error"),
        (ServerSettings, {"sampling": {"max_rows_per_request": 0}},
         ("sampling", "max_rows_per_request"), "greater_than_equal"),
        (
            ServerSettings,
            {"batching": {"max_batch_rows": 0}},
            ("batching", "max_batch_rows"),
            "greater_than_equal",
        ),
        (LoadingSettings, {"unaliased_idle_s": -1}, ("unaliased_idle_s",), "greater_than_equal"),
        (LoadingSettings, {"unaliased_idle_s": 7 * 86400 + 1}, ("unaliased_idle_s",),
         "less_than_equal"),
        (LoadingSettings, {"max_unaliased": -1}, ("max_unaliased",), "greater_than_equal"),
        (LoadingSettings, {"max_unaliased": 65}, ("max_unaliased",), "less_than_equal"),
        (LoadingSettings, {"drain_timeout_s": 0}, ("drain_timeout_s",), "greater_than"),
        (ServerSettings, {"loading": {"drain_timeout_s": 601}}, ("loading", "drain_timeout_s"),
         "less_than_equal"),
    ],
)
def test_bounds(model: type[BaseModel], kwargs: dict, loc: tuple, kind: str) -> None:
    assert _errors(model, **kwargs) == [(loc, kind)]


def test_bounds_are_inclusive() -> None:
    assert BatchSettings(max_batch_rows=1, batch_wait_timeout_s=1.0).max_batch_rows == 1
    assert BatchSettings(batch_wait_timeout_s=0.0).batch_wait_timeout_s == 0.0
    assert RuntimeSettings(cuda_memory_limit_bytes=64 * MiB).cuda_memory_limit_bytes == 64 * MiB
    assert ServerSettings(max_body_bytes=1024).max_body_bytes == 1024


@pytest.mark.parametrize(
    ("model", "kwargs", "loc"),
    [
        (ServerSettings, {"max_batch_rows": 8}, ("max_batch_rows",)),
        (ServerSettings, {"runtime": {"provider": ["cpu"]}}, ("runtime", "provider")),
        (ServerSettings, {"batching": {"max_rows": 8}}, ("batching", "max_rows")),
        (RuntimeSettings, {"threads": 2}, ("threads",)),
        (BatchSettings, {"wait": 0.1}, ("wait",)),
    ],
)
def test_unknown_keys_are_refused_at_every_level(
    model: type[BaseModel], kwargs: dict, loc: tuple
) -> None:
    assert _errors(model, **kwargs) == [(loc, "extra_forbidden")]


def test_settings_are_frozen() -> None:
    settings = ServerSettings()
    with pytest.raises(ValidationError):
        settings.max_body_bytes = 2048  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.batching.max_batch_rows = 1  # type: ignore[misc]


def test_every_field_is_described() -> None:
    for model in (ServerSettings, RuntimeSettings, BatchSettings):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_environment_fills_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MODEL_REPOSITORY", "/srv/models")
    monkeypatch.setenv("VIGIL_MODELS", '["mlp"]')
    monkeypatch.setenv("VIGIL_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("VIGIL_RUNTIME__PROVIDERS", '["cuda","cpu"]')
    monkeypatch.setenv("VIGIL_RUNTIME__INTRA_OP_THREADS", "4")
    monkeypatch.setenv("VIGIL_BATCHING__MAX_BATCH_ROWS", "8")
    monkeypatch.setenv("VIGIL_BATCHING__ENABLED", "false")
    settings = ServerSettings()
    assert settings.model_repository == Path("/srv/models")
    assert settings.models == ["mlp"]
    assert settings.max_body_bytes == 2048
    assert settings.runtime.providers == ["cuda", "cpu"]
    assert settings.runtime.intra_op_threads == 4
    assert settings.runtime.require_gpu is False
    assert settings.batching == BatchSettings(max_batch_rows=8, enabled=False)


def test_explicit_args_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("VIGIL_BATCHING__MAX_BATCH_ROWS", "8")
    monkeypatch.setenv("VIGIL_BATCHING__ENABLED", "false")
    settings = ServerSettings(max_body_bytes=4096, batching={"max_batch_rows": 4})
    assert settings.max_body_bytes == 4096
    assert settings.batching.max_batch_rows == 4
    assert settings.batching.enabled is False  # not given explicitly: the environment fills it
    whole = ServerSettings(batching=BatchSettings(max_batch_rows=4))
    assert whole.batching == BatchSettings(max_batch_rows=4)  # a whole object is taken as is


def test_the_tokens_file_comes_from_vigil_tokens_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServerSettings().tokens_file is None  # then: tokens.yaml beside the repository
    monkeypatch.setenv("VIGIL_TOKENS_FILE", "/etc/vigil/tokens.yaml")
    assert ServerSettings().tokens_file == Path("/etc/vigil/tokens.yaml")
    assert ServerSettings(tokens_file="/x.yaml").tokens_file == Path("/x.yaml")


def test_environment_values_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_BATCHING__MAX_BATCH_ROWS", "0")
    assert _errors(ServerSettings) == [(("batching", "max_batch_rows"), "greater_than_equal")]


def test_unknown_nested_environment_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIL_BATCHING__MAX_ROWS", "8")
    assert _errors(ServerSettings) == [(("batching", "max_rows"), "extra_forbidden")]


def test_batch_settings_from_a_user_config() -> None:
    # What a deployment's user_config goes through in reconfigure().
    assert BatchSettings.model_validate({}) == BatchSettings()
    assert BatchSettings.model_validate(
        {"max_batch_rows": 32, "batch_wait_timeout_s": 0.01, "enabled": False}
    ) == BatchSettings(max_batch_rows=32, batch_wait_timeout_s=0.01, enabled=False)
    with pytest.raises(ValidationError):
        BatchSettings.model_validate({"max_batch_rows": 32, "typo": 1})
