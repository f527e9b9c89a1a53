"""The documentation (issue 21): the generated reference pages are what the code gives, and a
stale or missing one fails the check."""

from __future__ import annotations

import argparse
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field

from serving.settings import BatchSettings
from vigil.tools import reference_docs
from vigil.tools.reference_settings import SECTIONS, model_section, nested_models

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return reference_docs.render()


# ---------------------------------------------------------------- generated reference pages


def test_committed_reference_pages_are_what_the_code_gives(pages: dict[str, str]) -> None:
    stale = reference_docs.stale(REFERENCE, pages)
    assert not stale, f"stale pages {stale}: run `python -m vigil.tools.reference_docs`"


def test_check_fails_on_a_stale_or_missing_page_and_regenerating_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A copy of docs/reference with a metric renamed on one page and another page deleted:
    `--check` exits 1 naming both and writes nothing; a run without --check rewrites them."""
    out = tmp_path / "reference"
    shutil.copytree(REFERENCE, out)
    assert reference_docs.main(["--check", "--out", str(out)]) == 0
    metrics = out / "metrics.md"
    metrics.write_text(metrics.read_text().replace("vigil_requests_total", "vigil_requests_all"))
    (out / "cli.md").unlink()

    assert reference_docs.main(["--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{metrics} is stale" in err and f"{out / 'cli.md'} is stale" in err
    assert not (out / "cli.md").exists()

    assert reference_docs.main(["--out", str(out)]) == 0
    assert reference_docs.main(["--check", "--out", str(out)]) == 0
    assert (out / "cli.md").read_text() == (REFERENCE / "cli.md").read_text()


def test_a_new_settings_field_shows_with_its_type_default_bounds_and_description() -> None:
    class Wider(BatchSettings):
        """Batching with one more knob."""

        queue_limit: int | None = Field(default=7, ge=1, le=9, description="A new | knob.")

    text = model_section("Wider", Wider, "")
    assert "| `queue_limit` | int | `7` | ≥ 1, ≤ 9 | A new &#124; knob. |" in text
    assert "### Wider {#wider}" in text and "Batching with one more knob." in text


def test_every_field_of_every_settings_class_is_on_the_configuration_page(
    pages: dict[str, str],
) -> None:
    text = pages["configuration.md"]
    for part in SECTIONS:
        for model in (part.model, *nested_models(part.model)):
            assert f"{{#{model.__name__.lower()}}}" in text, model
            for name in model.model_fields:
                assert f"| `{name}` |" in text, f"{model.__name__}.{name}"


def _commands(parser: argparse.ArgumentParser,
              words: tuple[str, ...] = ("vigil",)) -> Iterator[tuple[str, ...]]:
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def test_every_command_of_the_parser_has_its_section(pages: dict[str, str]) -> None:
    from vigil.tools.cli import build_parser

    found = list(_commands(build_parser()))
    assert ("vigil", "models", "promote") in found and ("vigil", "tokens", "create") in found
    for words in found:
        assert f"`{' '.join(words)}` {{#{'-'.join(words)}}}" in pages["cli.md"], words


def test_every_metric_name_in_the_declaring_modules_is_on_the_metrics_page(
    pages: dict[str, str],
) -> None:
    """Read the other way, from the source text: what the page's introspection finds is all."""
    for path, prefix in (("serving/metrics.py", "ray_"), ("monitoring/collector.py", "")):
        names = set(re.findall(r'"(vigil_\w+)"', (ROOT / path).read_text()))
        assert names, path
        for name in names:
            assert f"| `{prefix}{name}` |" in pages["metrics.md"], name


def test_every_condition_and_event_type_is_on_the_alerts_page(pages: dict[str, str]) -> None:
    from monitoring.alert_settings import EVENT_TYPES, Condition

    for name in Condition.model_fields:
        assert f"| `{name}` |" in pages["alerts.md"]
    for event in EVENT_TYPES:
        row = next(line for line in pages["alerts.md"].splitlines()
                   if line.startswith(f"| `{event}` |"))
        assert "nothing yet" not in row, row
