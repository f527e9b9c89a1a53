"""`vigil models ...`: publish ONNX files as versions, list and show them, and move their aliases
(promote, canary, shadow, rollback, retire, load, unload) through a running server or, when none
answers, in the repository itself. The bearer token in VIGIL_TOKEN goes over plain http only to
this host (loopback), unless --insecure.

Exit codes: 0 done; 1 refused by the server or the repository; 2 a bad command line or a file
that cannot be published; 3 a change the server saved but not every replica applied yet; 4 done
or shown, but the repository's files differ from what is served (a version served from memory,
a model.onnx that no longer matches, a model.yaml or aliases.json that cannot be read, an alias
that names no version): each fault is said on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vigil.core.audit import HISTORY_LIMIT, MAX_HISTORY_LIMIT
from vigil.core.rollout import PlanRefused
from vigil.tools import gate_cli, publish_cli, rollout_output
from vigil.tools.argtable import Arg, Command, Entry, Handler, add_commands, arg, positive_int
from vigil.tools.console import one_line, print_json, print_table, refuse, say
from vigil.tools.model_client import (
    DEFAULT_URL,
    LocalModels,
    Models,
    ModelsError,
    ServerModels,
    local_actor,
)
from vigil.tools.models_output import (
    convergence,
    describe,
    explained,
    fault_texts,
    print_mapping,
    repository_faults,
    signature,
)
from vigil.tools.server_client import INSECURE_FLAG, NoServer, url_refusal

T = TypeVar("T")
__all__ = ["INSECURE_ARG", "add_parser", "positive_int"]


# ------------------------------------------------------------------ which door answers


def _ask(args: argparse.Namespace, op: Callable[[Models], T], *, changes: bool = False) -> T:
    """`op` against the server at --url; against the repository itself when nothing listens
    there (connection refused, and only then: a server that refuses is never bypassed)."""
    try:
        return op(ServerModels(args.url, args.timeout, insecure=args.insecure))
    except NoServer:
        pass
    root = Path(args.repository)
    actor = local_actor()
    try:
        result = op(LocalModels(root, actor))
    except ModelsError as exc:
        raise ModelsError(f"no server at {args.url}, and in the repository {root}: {exc}",
                          exc.status) from None
    if changes:
        say(f"no server at {args.url}: changed the repository {root} directly (as {actor}); "
            "running servers see the change when they next read the repository (at start, or "
            "on `vigil models load NAME` against them)")
    else:
        say(f"no server at {args.url}: read the repository {root} directly")
    return result


def _answering(handler: Handler) -> Handler:
    """Before anything is written or sent, refuse (exit 2) a --url that the token must not go
    to, and warn when --insecure lets it; a refusal from the server or the repository becomes
    its message and exit 1."""

    def run(args: argparse.Namespace) -> int:
        if (why := url_refusal(args.url, args.insecure)) is not None:
            return refuse(why)
        try:
            return handler(args)
        except ModelsError as exc:
            return refuse(explained(exc), 1)

    return run


# ------------------------------------------------------------------ reading


def _list(args: argparse.Namespace) -> int:
    rows = _ask(args, lambda m: m.index())
    if args.json:
        print_json(rows)
        return repository_faults(sorted({t for r in rows for t in fault_texts(r.get("faults"))}))
    if not rows:
        print("no models")
        return 0
    table = [("MODEL", "VERSION", "STATE", "ALIASES", "REASON")]
    table += [(str(r.get("name")), str(r.get("version") or "-"), str(r.get("state")),
               ",".join(r.get("aliases") or []) or "-", one_line(r.get("reason")) or "-")
              for r in rows]
    print_table(table)
    return repository_faults(sorted({t for r in rows for t in fault_texts(r.get("faults"))}))


def _show(args: argparse.Namespace) -> int:
    from vigil.core.aliases import AliasState

    def both(models: Models) -> dict[str, Any]:
        doc = models.aliases(args.name)
        published = [str(v) for v in doc.get("published", [])]
        state = AliasState.from_dict(doc["aliases"], "the server's aliases")
        version = args.version or state.production_of(published)
        if args.version is None and "production" in (doc.get("broken") or {}):
            version = None  # production names no version: there is none to describe
        meta = models.version(args.name, version) if version is not None else None
        return {"aliases": doc, "version": meta}

    shown = _ask(args, both)
    faults = fault_texts(shown["aliases"].get("faults"))
    if args.json:
        print_json(shown)
        return repository_faults(faults)
    doc, meta = shown["aliases"], shown["version"]
    a = doc["aliases"]
    broken = doc.get("broken") or {}

    def flag(alias: str) -> str:  # the state served is the state shown: a broken alias says so
        return f" BROKEN: {broken[alias]}" if alias in broken else ""

    canary = a.get("canary")
    print(f"model {doc['model']} (generation {a.get('generation')})")
    print(f"  production: {a.get('production') or 'the newest version not retired'}"
          f"{flag('production')}; previous: {', '.join(a.get('previous') or []) or '-'}")
    if canary:
        sticky = f", sticky on header {canary['sticky_header']}" if canary.get("sticky_header") \
            else ""
        print(f"  canary: {canary['version']} at weight {canary['weight']:g}{sticky}"
              f"{flag('canary')}")
    else:
        print("  canary: -")
    print(f"  shadow: {a.get('shadow') or '-'}{flag('shadow')}; "
          f"retired: {', '.join(a.get('retired') or []) or '-'}"
          f"; unloaded: {'yes' if a.get('unloaded') else 'no'}")
    print(f"  published: {', '.join(doc.get('published') or []) or '-'}; "
          f"serving: {', '.join(doc.get('serving') or []) or '-'}")
    for version, reason in (doc.get("failed") or {}).items():
        print(f"  failed to load {version}: {one_line(reason)}")
    if meta is None:
        return repository_faults(faults)
    p = meta.get("parameters") or {}
    roles = ", ".join(p.get("aliases") or []) or "no alias"
    print(f"version {meta['versions'][0]} ({roles})")
    print(f"  sha256 {p.get('sha256')}; created {p.get('created')}; "
          f"max_batch_rows {p.get('max_batch_rows')}")
    print(f"  inputs  {signature(meta.get('inputs') or [])}")
    print(f"  outputs {signature(meta.get('outputs') or [])}")
    print_mapping("lineage", p.get("lineage") or {})
    if p.get("metadata"):
        print_mapping("metadata", p["metadata"])
    return repository_faults(faults)


def history_limit(text: str) -> int:
    """argparse type: how many audit entries, 1 to MAX_HISTORY_LIMIT (what a server returns)."""
    value = positive_int(text)
    if value > MAX_HISTORY_LIMIT:
        raise argparse.ArgumentTypeError(f"at most {MAX_HISTORY_LIMIT}: {value}")
    return value


def _history(args: argparse.Namespace) -> int:
    entries, more = _ask(args, lambda m: m.history(args.name, args.limit))
    if more and not args.json:
        say(f"older entries exist: the newest {len(entries)} are shown (--limit, at most "
            f"{MAX_HISTORY_LIMIT}; older ones are in the repository's audit.jsonl)")
    if args.json:
        print_json(entries)
        return 0
    if not entries:
        print(f"no changes recorded for {args.name}")
        return 0
    table = [("TIME", "ACTOR", "ACTION", "FROM -> TO", "REASON")]
    table += [(str(e.get("time")), str(e.get("actor")), str(e.get("action")),
               f"{e.get('from_version') or '-'} -> {e.get('to_version') or '-'}",
               one_line(e.get("reason")) or "-") for e in entries]
    print_table(table)
    return 0


# ------------------------------------------------------------------ changes


def _change(args: argparse.Namespace, action: str, version: str | None = None,
            weight: float | None = None, sticky_header: str | None = None,
            plan: dict[str, Any] | None = None) -> int:
    reason = getattr(args, "reason", "") or ""
    force = bool(getattr(args, "force", False))
    if force and not reason.strip():
        return refuse(f"{action} --force needs --reason: why the model gate is bypassed goes to "
                      "the audit log")
    answer = _ask(
        args,
        lambda m: m.change(args.name, action, version=version, weight=weight,
                           sticky_header=sticky_header, reason=reason, force=force, plan=plan),
        changes=True,
    )
    if args.json:
        print_json(answer)
    else:
        print(describe(answer))
    # A change that "changed nothing" while the repository breaks what serves must not exit 0.
    return convergence(answer, args.json) or repository_faults(fault_texts(answer.get("faults")))


def _promote(args: argparse.Namespace) -> int:
    return _change(args, "promote", args.version)


def _rollback(args: argparse.Namespace) -> int:
    return _change(args, "rollback")


def _retire(args: argparse.Namespace) -> int:
    return _change(args, "retire", args.version)


def _load(args: argparse.Namespace) -> int:
    return _change(args, "load")


def _unload(args: argparse.Namespace) -> int:
    return _change(args, "unload")


def _canary(args: argparse.Namespace) -> int:
    if args.off:
        if (args.version is not None or args.weight is not None or args.sticky_header
                or args.force):
            return refuse("canary NAME --off takes no version, --weight, --sticky-header or "
                          "--force")
        return _change(args, "canary_cleared")
    if args.version is None:
        return refuse("name the canary version (canary NAME VERSION --weight W), or --off")
    if args.weight is None:
        return refuse("a canary needs --weight: the share of unversioned requests, above 0 "
                       "and below 1")
    return _change(args, "canary", args.version, args.weight, args.sticky_header)


def _shadow(args: argparse.Namespace) -> int:
    if args.off:
        if args.version is not None:
            return refuse("shadow NAME --off takes no version")
        return _change(args, "shadow_cleared")
    if args.version is None:
        return refuse("name the shadow version (shadow NAME VERSION), or --off")
    return _change(args, "shadow", args.version)


def _rollout(args: argparse.Namespace) -> int:
    """`rollout NAME VERSION [plan]` starts one; `rollout status|pause|resume|abort NAME`."""
    if args.first in rollout_output.CONTROLS:
        if args.second is None:
            return refuse(f"rollout {args.first} needs the model's name")
        args.name = args.second
        action = rollout_output.CONTROLS[args.first]
        if action is not None:
            return _change(args, action)
        doc = _ask(args, lambda m: m.aliases(args.name))
        if args.json:
            print_json(doc["aliases"].get("rollout"))
            return 0
        print("\n".join(rollout_output.status_lines(args.name, doc["aliases"].get("rollout"))))
        return 0
    if args.second is None:
        return refuse("name the version to roll out (rollout NAME VERSION), or one of "
                      f"{', '.join(rollout_output.CONTROLS)} NAME")
    args.name = args.first
    try:
        plan = rollout_output.plan_of(args)
    except PlanRefused as exc:
        return refuse(f"rollout refused: {exc}")
    return _change(args, "rollout", args.second, plan=plan)


# ------------------------------------------------------------------ the parser

_NAME = arg("name")
_VERSION = arg("version")
_MAYBE_VERSION = arg("version", nargs="?", default=None)
_REASON = arg("--reason", default="", help="recorded in the audit log")
INSECURE_ARG = arg(INSECURE_FLAG, action="store_true",
                   help="send VIGIL_TOKEN over plain http to a host other than this one (warned; "
                   "prefer https)")
_COMMON = (
    arg("--url", default=DEFAULT_URL,
        help=f"the running server (default: {DEFAULT_URL}); its bearer token comes from "
        "VIGIL_TOKEN (scope admin)"),
    INSECURE_ARG,
    arg("--repository", "--models-dir", dest="repository", default="models",
        help="model repository, used directly when no server answers at --url (default: "
        "models)"),
    arg("--timeout", type=float, default=60.0,
        help="seconds to wait for the server (default: 60)"),
    arg("--json", action="store_true", help="print the JSON answer"),
)


def _force(what: str) -> Arg:
    return arg("--force", action="store_true",
               help=f"{what} a version that has not passed the model gate (needs --reason; "
               "recorded in the audit log)")


_CANARY_ARGS = (
    _NAME, _MAYBE_VERSION,
    arg("--weight", type=float, default=None,
        help="share of unversioned requests, above 0 and below 1"),
    arg("--sticky-header", default=None, metavar="HEADER",
        help="requests with the same value of this header go to the same side"),
    arg("--off", action="store_true", help="end the canary"),
    _force("send traffic to"),
)

_COMMANDS: tuple[Entry, ...] = (
    Command("publish", "publish an ONNX file as a new version", publish_cli.publish,
            (*publish_cli.ARGS, *_COMMON), description=publish_cli.DESCRIPTION),
    Command("list", "every model version, its state and aliases", _list, _COMMON),
    Command("show", "a model's aliases, and a version's signature and lineage", _show,
            (_NAME, arg("version", nargs="?", default=None, help="default: the production "
                        "version"), *_COMMON)),
    Command("history", "the audit log of a model's changes", _history,
            (_NAME, arg("--limit", type=history_limit, default=HISTORY_LIMIT,
                        help=f"the newest N entries (default {HISTORY_LIMIT}, at most "
                        f"{MAX_HISTORY_LIMIT})"), *_COMMON)),
    Command("promote", "make a version production", _promote,
            (_NAME, _VERSION, _force("promote"), _REASON, *_COMMON)),
    Command("canary", "send a share of traffic to a version, or --off", _canary,
            (*_CANARY_ARGS, _REASON, *_COMMON)),
    Command("shadow", "copy traffic to a version, or --off", _shadow,
            (_NAME, _MAYBE_VERSION, arg("--off", action="store_true", help="end the shadow"),
             _REASON, *_COMMON)),
    Command("rollback", "production back to the previous version", _rollback,
            (_NAME, _REASON, *_COMMON)),
    Command("retire", "stop loading a version (its files stay)", _retire,
            (_NAME, _VERSION, _REASON, *_COMMON)),
    Command("load", "serve the model's versions again (after unload)", _load,
            (_NAME, *_COMMON)),
    Command("unload", "stop serving every version of the model", _unload, (_NAME, *_COMMON)),
    Command("rollout", "walk a version through canary steps judged by the monitor, then "
            "promote it; or status|pause|resume|abort NAME", _rollout, (
                arg("first", metavar="NAME|status|pause|resume|abort"),
                arg("second", nargs="?", default=None, metavar="VERSION|NAME"),
                arg("--steps", default=None, metavar="PERCENTS",
                    help="canary weights in percent, strictly increasing, each above 0 and "
                    "below 100 (default 5,10,25,50); the version is promoted after the last"),
                arg("--windows-per-step", type=positive_int, default=2,
                    help="consecutive passing windows that pass a step (default 2)"),
                arg("--max-failed-checks", type=positive_int, default=2,
                    help="failed rounds (windows with a failed check) that roll the candidate "
                    "back (default 2)"),
                arg("--step-deadline-s", type=float, default=600.0,
                    help="a step not passed by then halts the rollout (default 600)"),
                arg("--sticky-header", default=None, metavar="HEADER",
                    help="requests with the same value of this header go to the same side"),
                _force("roll out"), _REASON, *_COMMON)),
    gate_cli.add_parser,
)


_MODELS = Command(
    "models", "model versions: publish, list, show, promote, canary, shadow, rollback",
    description=__doc__, keep_line_breaks=True, sub=_COMMANDS,
)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """`vigil models` and its subcommands."""
    add_commands(commands, (_MODELS,), wrap=_answering)
