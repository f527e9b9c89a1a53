"""The documentation (issue 21): the generated reference pages are what the code gives, and a
stale or missing one fails the check; `mkdocs build --strict` passes, and fails on a link to a
missing page, an unknown anchor or a page left out of the navigation; the README stays short with
the two commands on top; the quick start has the blocks tests/integration/test_quickstart.py runs
against a real `make serve`."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field

from serving.settings import BatchSettings
from tests.docs_blocks import ROOT, blocks, expanded, section
from vigil.tools import reference_docs
from vigil.tools.reference_observability import collectors
from vigil.tools.reference_settings import SECTIONS, model_section, nested_models

REFERENCE = ROOT / "docs" / "reference"
README = ROOT / "README.md"
MKDOCS = Path(sys.executable).with_name("mkdocs")


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


# ---------------------------------------------------------------- the site


def _build(config_dir: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "-f", str(config_dir / "mkdocs.yml"), "-d", str(site)],
        cwd=config_dir, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_strict_with_every_page(tmp_path: Path) -> None:
    result = _build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("getting-started", "reference/configuration", "reference/http-api"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    quick = (tmp_path / "site" / "getting-started" / "index.html").read_text()
    assert "tritonclient" in quick and "--8&lt;--" not in quick  # the README's snippet, included


def test_a_broken_link_an_unknown_anchor_or_a_page_off_the_nav_fails_the_build(
    tmp_path: Path,
) -> None:
    """A copy of the docs with three faults: the strict build fails and names each."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy)
    shutil.copy(README, copy)
    index = copy / "docs" / "index.md"
    index.write_text(index.read_text() + "\n[gone](no-such-page.md), "
                     "[nowhere](security.md#no-such-section)\n")
    (copy / "docs" / "stray.md").write_text("# Not in the navigation\n")

    result = _build(copy, tmp_path / "site")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for fault in ("no-such-page.md", "#no-such-section", "stray.md"):
        assert fault in out, (fault, out)


# ---------------------------------------------------------------- README and the quick start


def test_readme_is_short_and_opens_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    first = blocks(text)[0]
    assert [line.split("#")[0].strip() for line in first.code.splitlines()] == [
        "make serve", "make test"]


def test_readme_links_to_pages_that_exist() -> None:
    targets = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert len(targets) >= 12
    for target in targets:
        assert (ROOT / target).exists(), target


def test_the_quick_start_shows_the_readme_blocks_with_answers_to_check() -> None:
    page = expanded(ROOT / "docs" / "getting-started.md")
    runnable = [b for b in blocks(section(page, "First requests"))
                if b.lang in ("bash", "python") and not b.runs_make()]
    assert [b.lang for b in runnable] == ["bash", "python"]
    curl, triton = runnable
    assert curl.expected() == ['{"model_name":"breast_cancer","model_version":"1","id":"first",'
                               '"outputs":[{"name":"label",']
    assert triton.expected() == ["(4, 10)"]


@dataclass(frozen=True)
class _Held:
    versions: int = 0


class _StateCollector:
    """A collector as the monitor may grow one: its sources a state holder and two callables."""

    def __init__(self, held: Callable[[], _Held], names: Callable[[], Iterable[str]],
                 stats: _Held) -> None:
        self.held, self.names, self.stats = held, names, stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("vigil_held_versions", "Versions held.", labels=["name"])
        family.add_metric(["all"], self.held().versions + self.stats.versions)
        for name in self.names():
            family.add_metric([name], 1)
        yield family


def test_collectors_of_any_shape_are_built_over_empty_sources() -> None:
    """The metrics page reads a collector whatever its constructor takes (the lead re-runs the
    generator after other branches reshape monitoring/collector.py): a callable returns an empty
    value of its type, a holder is built with its defaults."""
    module = ModuleType(__name__)
    module._StateCollector = _StateCollector  # type: ignore[attr-defined]
    (collector,) = collectors(module)
    (family,) = collector.collect()
    assert (family.name, family._labelnames) == ("vigil_held_versions", ("name",))
