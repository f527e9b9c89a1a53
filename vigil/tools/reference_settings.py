"""The configuration reference page, written from the pydantic settings classes themselves."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from monitoring.settings import MonitorAppSettings, MonitorSettings
from serving.settings import BatchSettings, ServerSettings
from vigil.core.settings import AppSettings
from vigil.tools.reference_markdown import header, table

Model = type[BaseModel]


@dataclass(frozen=True)
class Section:
    """One settings class as a section of the page: its heading and where its fields are given."""

    heading: str
    model: Model
    where: str
    own_fields_only: bool = False  # leave out the fields of AppSettings (shown once, above)


SECTIONS = (
    Section("Application args: shared by both applications", AppSettings,
            "Both applications' `args` in `configs/serve.yaml`, and the `vigil` command (it finds "
            "the same tokens file)."),
    Section("Application args: the model server", ServerSettings,
            "`args` of the `vigil` application (`serving.app:build_app`), besides the shared "
            "fields. Changing them with `serve deploy` replaces the replicas.", True),
    Section("Application args: the monitor", MonitorAppSettings,
            "`args` of the `monitor` application (`monitoring.app:build_monitor_app`), besides "
            "the shared fields. Changing them with `serve deploy` replaces the replica.", True),
    Section("The model server's user_config", BatchSettings,
            "The `ModelServer` deployment's `user_config`: applied live by `reconfigure()` on "
            "`serve deploy`, without a restart; `GET /v2/vigil/batching` shows the live values."),
    Section("The monitor's user_config", MonitorSettings,
            "The `Monitor` deployment's `user_config`: applied live on `serve deploy` (open "
            "windows close under the old values, new ones use the new); an invalid change is "
            "refused whole."),
)


def anchor(model: Model) -> str:
    return model.__name__.lower()


def link(model: Model) -> str:
    return f"[{model.__name__}](#{anchor(model)})"


def _literal(values: tuple[Any, ...]) -> str:
    shown = ", ".join(f"`{_value(v)}`" for v in values)
    return shown if len(values) == 1 else f"one of {shown}"


def type_text(annotation: Any) -> str:
    """A field's type in words (no '|': it would split a table cell)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(a) for a in args if a is not type(None))
    if origin is Literal:
        return _literal(args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {type_text(args[0])} to {type_text(args[1])}" if args else "map"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return link(annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _value(value: Any, name: str = "") -> str:
    if isinstance(value, int) and name.endswith("_bytes") and value >= 2**20:
        return _sized(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | PurePath):
        return str(value)
    return json.dumps(value) if isinstance(value, list | dict) else repr(value)


def _sized(value: int) -> str:
    """A byte count with its size in MiB or GiB when it is a whole number of them."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if value % size == 0:
            return f"{value} ({value // size} {unit})"
    return str(value)


def default_text(name: str, field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default is PydanticUndefined:
        value = field.get_default(call_default_factory=True, validated_data={})
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "each field's default"
    return f"`{_value(value, name)}`"


_BOUNDS = (("ge", "≥ {}"), ("gt", "> {}"), ("le", "≤ {}"), ("lt", "< {}"),
           ("min_length", "length ≥ {}"), ("max_length", "length ≤ {}"), ("pattern", "matches `{}`"))


def bounds_text(name: str, field: FieldInfo) -> str:
    """The field's constraints (annotated_types metadata pydantic keeps), in a fixed order."""
    found = {bound: getattr(m, bound) for m in field.metadata for bound, _ in _BOUNDS
             if getattr(m, bound, None) is not None}
    return ", ".join(form.format(_value(found[bound], name)) for bound, form in _BOUNDS
                     if bound in found)


def nested_models(model: Model) -> Iterator[Model]:
    """Every settings class a field of `model` holds, at any depth, in field order."""
    for field in model.model_fields.values():
        yield from _models_in(field.annotation)


def _models_in(annotation: Any) -> Iterator[Model]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        yield from nested_models(annotation)
    for arg in get_args(annotation):
        yield from _models_in(arg)


def field_table(model: Model, own_fields_only: bool = False) -> str:
    rows = [(f"`{name}`", type_text(field.annotation), default_text(name, field),
             bounds_text(name, field), field.description or "")
            for name, field in model.model_fields.items()
            if not (own_fields_only and name in AppSettings.model_fields)]
    return table(("field", "type", "default", "bounds", "description"), rows)


def model_section(heading: str, model: Model, where: str, own_fields_only: bool = False) -> str:
    """A heading (anchored by the class name), where it is set, the class docstring, the fields."""
    parts = [f"### {heading} {{#{anchor(model)}}}", "",
             f"`{model.__module__}.{model.__qualname__}`" + (f": {where}" if where else ""), ""]
    if model.__doc__:
        parts += [" ".join(model.__doc__.split()), ""]
    if model.model_config.get("extra") == "forbid":
        parts += ["Unknown keys are refused.", ""]
    parts.append(field_table(model, own_fields_only))
    return "\n".join(parts)


def environment_note() -> str:
    """How the application args also come from the environment, from AppSettings' own config."""
    prefix = AppSettings.model_config.get("env_prefix", "")
    nested = AppSettings.model_config.get("env_nested_delimiter", "")
    return (f"Application args may also come from the environment, as `{prefix}<FIELD>` in upper "
            f"case (nested fields joined by `{nested}`, e.g. `{prefix}RUNTIME{nested}PROVIDERS="
            f"'[\"cuda\",\"cpu\"]'`), in the environment of the process that builds the "
            "application; explicit `args` win. Nothing else reads the environment.")


def configuration_page() -> str:
    parts = [header("the settings classes of vigil.core.settings, serving.settings, "
                    "monitoring.settings and monitoring.alert_settings"),
             "# Configuration reference", "",
             "Every field Vigil's Serve config takes: the two applications' `args`, and each "
             "deployment's `user_config`. Values are validated when the application is built "
             "or reconfigured; a value out of bounds is refused with a message naming it.", "",
             environment_note(), "", "## Top level", ""]
    shown: list[Model] = []
    for section in SECTIONS:
        parts += [model_section(section.heading, section.model, section.where,
                                section.own_fields_only), ""]
        shown.append(section.model)
    parts += ["## Nested settings", "",
              "The settings classes that the fields above hold.", ""]
    for section in SECTIONS:
        for model in nested_models(section.model):
            if model not in shown:
                shown.append(model)
                parts += [model_section(model.__name__, model, ""), ""]
    return "\n".join(parts).rstrip() + "\n"
