"""Declarative argparse for the `vigil` commands: each command is data (Command, Arg), and one
loop (add_commands) turns a table of them into parsers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Subcommands = argparse._SubParsersAction  # what add_subparsers returns


@dataclass(frozen=True)
class Arg:
    """One `add_argument` call: its flags (or positional name) and keyword options."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: what it runs (`func` in the namespace), its arguments in order, and its own
    subcommands (dest `<name>_command`, one required)."""

    name: str
    help: str
    run: Handler | None = None
    args: tuple[Arg, ...] = ()
    description: str | None = None
    keep_line_breaks: bool = False  # the description is laid out by hand (a module docstring)
    sub: tuple[Entry, ...] = ()


# A table entry: a Command, or a function that adds a hand-built parser to the subcommands.
Entry = Command | Callable[[Subcommands], object]


def add_commands(commands: Subcommands, table: Sequence[Entry],
                 wrap: Callable[[Handler], Handler] | None = None) -> None:
    """Add each entry of `table` to `commands`, in order; `wrap` (if given) wraps every
    Command's handler, subcommands' included."""
    for entry in table:
        if not isinstance(entry, Command):
            entry(commands)
            continue
        formatter = (argparse.RawDescriptionHelpFormatter if entry.keep_line_breaks
                     else argparse.HelpFormatter)
        parser = commands.add_parser(entry.name, help=entry.help, description=entry.description,
                                     formatter_class=formatter)
        for argument in entry.args:
            parser.add_argument(*argument.flags, **argument.options)
        if entry.run is not None:
            parser.set_defaults(func=entry.run if wrap is None else wrap(entry.run))
        if entry.sub:
            nested = parser.add_subparsers(dest=f"{entry.name}_command", required=True)
            add_commands(nested, entry.sub, wrap)


# An argument several commands share.
MODELS_DIR = arg("--models-dir", default="models", help="model repository (default: models)")


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value
