"""Writes docs/reference's generated pages from the code, or checks that they are current.

`python -m vigil.tools.reference_docs` writes them; `--check` writes nothing and exits 1 naming
each page that differs from what the code gives (a test runs it, so a stale page fails). The
pages read the declarations themselves: the pydantic settings classes (reference_settings),
`vigil`'s argparse parser and the alert rule conditions with the CloudEvent types they fire
(here), the replicas' `ray.serve.metrics` objects, the families the monitor's collectors yield,
the Prometheus rule files and the generated dashboard (reference_observability).
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vigil.tools.reference_markdown import REGENERATE, header, table
from vigil.tools.reference_observability import metrics_page, prometheus_page
from vigil.tools.reference_settings import bounds_text, configuration_page, type_text

DEFAULT_OUT = Path("docs/reference")


# -- the command line --------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One parser of the `vigil` command tree: its words, its help, the parser itself."""

    words: tuple[str, ...]
    help: str
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)

    @property
    def anchor(self) -> str:
        return "-".join(self.words)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()
                      if sub.prog.endswith(name)]  # aliases share a parser: listed once
    return found


def walk(parser: argparse.ArgumentParser, words: tuple[str, ...] = ("vigil",),
         help_: str = "") -> Iterator[Command]:
    yield Command(words, help_, parser)
    for name, sub_help, sub in _subcommands(parser):
        yield from walk(sub, (*words, name), sub_help)


def _argument(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    takes = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    return ", ".join(f"`{o} {metavar}`" if takes else f"`{o}`" for o in action.option_strings)


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        text = text % {**vars(action), "default": action.default}
    notes = []
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        notes.append("one of " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        notes.append("required")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        notes.append("repeatable")
    if action.nargs in ("*", "+") and not action.option_strings:
        notes.append("one or more")
    if action.nargs == "?" and not action.option_strings:
        notes.append("optional")
    return "; ".join(x for x in (text, *notes) if x)


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is argparse.SUPPRESS or value == []:
        return ""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return ""
    if isinstance(value, bool):
        return f"`--{'' if value else 'no-'}{action.dest.replace('_', '-')}`"
    return f"`{value}`"


def command_section(command: Command) -> str:
    level = "#" * min(len(command.words) + 1, 6)
    parts = [f"{level} `{command.name}` {{#{command.anchor}}}", ""]
    description = command.parser.description or command.help
    if description:
        parts += [" ".join(description.split()), ""]
    subs = _subcommands(command.parser)
    if subs:
        rows = [(f"[`{name}`](#{command.anchor}-{name})", text) for name, text, _ in subs]
        parts += [table(("command", "what it does"), rows), ""]
    args = [a for a in command.parser._actions
            if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)
            and not isinstance(a, argparse._SubParsersAction)]
    if args:
        parts += [table(("argument", "default", "meaning"),
                        [(_argument(a), _default(a), _help(a)) for a in args]), ""]
    return "\n".join(parts)


def cli_page() -> str:
    from vigil.tools.cli import build_parser

    parts = [header("vigil.tools.cli.build_parser()"), "# The `vigil` command", "",
             "Every command, subcommand and argument of `vigil` (installed with Vigil; "
             "`.venv/bin/vigil` after `make serve`), as its parser declares them. "
             "`vigil COMMAND --help` prints the same.", ""]
    parts += [command_section(c) for c in walk(build_parser())]
    return "\n".join(parts).rstrip() + "\n"


# -- alert rules and events --------------------------------------------------------------------


def condition_event(name: str) -> str:
    """The CloudEvent type a rule with this condition fires (the condition's own property)."""
    from monitoring.alert_settings import Condition

    return Condition.model_construct(None, **{name: True}).event_type


def fired_by() -> dict[str, list[str]]:
    """CloudEvent type -> what sends it: each condition, the rollback action, a resolution."""
    from monitoring.alert_settings import AlertRule, Condition
    from monitoring.events import RESOLVED

    sources: dict[str, list[str]] = {}
    for name in Condition.model_fields:
        sources.setdefault(condition_event(name), []).append(f"a rule with `{name}` fires")
    rollback = AlertRule.model_construct(action="rollback_canary")
    sources.setdefault(rollback.event_type, []).append(
        "a rule with `action: rollback_canary` fires (instead of its condition's type)")
    sources.setdefault(RESOLVED, []).append("a firing alert resolves, or its rule is removed")
    from monitoring.rollouts import EVENTS_BY_DECISION, STARTED

    sources.setdefault(STARTED, []).append("the monitor first sees a rollout (`vigil models "
                                           "rollout`)")
    for decision, kinds in EVENTS_BY_DECISION.items():
        for kind in kinds:
            sources.setdefault(kind, []).append(f"a rollout's decision is `{decision}`")
    return sources


def alerts_page() -> str:
    from monitoring.alert_settings import Condition, EventType

    parts = [header("monitoring/alert_settings.py and monitoring/events.py"),
             "# Alert conditions and event types", "",
             "A rule's `when:` names exactly one of these conditions. How rules are judged, "
             "delivered and received: [Alerts and webhooks](../alerts-and-webhooks.md); every "
             "other field of a rule and a target: [Configuration](configuration.md#alertrule).",
             "", "## Conditions", ""]
    # A condition's own settings (e.g. quality_drop's metric and by) are on the configuration page.
    conditions = [(f"`{name}`", type_text(field.annotation).replace("](#", "](configuration.md#"),
                   bounds_text(name, field),
                   field.description or "", f"`{condition_event(name)}`")
                  for name, field in Condition.model_fields.items()]
    parts += [table(("condition", "value", "bounds", "breached when", "event type"), conditions),
              "", "## CloudEvent types", "",
              "The `type` of each event the monitor sends (CloudEvents 1.0, JSON). A webhook "
              "target's `events:` takes these names.", ""]
    sources = fired_by()
    types = [(f"`{t}`", "; ".join(sources.get(t, ["nothing yet"])))
             for t in typing.get_args(EventType)]
    parts.append(table(("type", "sent when"), types))
    return "\n".join(parts).rstrip() + "\n"


# -- the pages ---------------------------------------------------------------------------------

PAGES: dict[str, Callable[[], str]] = {
    "configuration.md": configuration_page,
    "cli.md": cli_page,
    "metrics.md": metrics_page,
    "alerts.md": alerts_page,
    "prometheus.md": prometheus_page,
}


def render() -> dict[str, str]:
    return {name: page() for name, page in PAGES.items()}


def stale(out: Path, pages: dict[str, str]) -> list[str]:
    """The pages whose file in `out` is missing or differs."""
    return [name for name, text in pages.items()
            if not (out / name).is_file() or (out / name).read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{REGENERATE}", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder of the generated pages (default: {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a page differs from the code")
    args = parser.parse_args(argv)
    pages = render()
    behind = stale(args.out, pages)
    if args.check:
        for name in behind:
            print(f"{args.out / name} is stale: run `{REGENERATE}`", file=sys.stderr)
        return 1 if behind else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in behind:
        (args.out / name).write_text(pages[name])
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
