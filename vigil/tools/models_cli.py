"""`vigil models ...`: publish ONNX files as versions, list and show them, and move their aliases
(promote, canary, shadow, rollback, retire, load, unload) through a running server or, when none
answers, in the repository itself.

Exit codes: 0 done; 1 refused by the server or the repository; 2 a bad command line or a file
that cannot be published; 3 a change the server saved but not every replica applied yet.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from vigil.tools import gate_cli
from vigil.tools.model_client import (
    DEFAULT_URL,
    LocalModels,
    Models,
    ModelsError,
    NoServer,
    ServerModels,
    client_auth,
    local_actor,
)

T = TypeVar("T")
NOT_CONVERGED = 3
_Handler = Callable[[argparse.Namespace], int]


def _refuse(message: str, code: int = 2) -> int:
    print(f"vigil: {message}", file=sys.stderr)
    return code


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, ensure_ascii=False))


# ------------------------------------------------------------------ which door answers


def _ask(args: argparse.Namespace, op: Callable[[Models], T], *, changes: bool = False) -> T:
    """`op` against the server at --url; against the repository itself when nothing listens
    there (connection refused, and only then: a server that refuses is never bypassed)."""
    try:
        return op(ServerModels(args.url, client_auth(), args.timeout))
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
        print(f"vigil: no server at {args.url}: changed the repository {root} directly (as "
              f"{actor}); running servers see the change when they next read the repository "
              "(at start, or on `vigil models load NAME` against them)", file=sys.stderr)
    else:
        print(f"vigil: no server at {args.url}: read the repository {root} directly",
              file=sys.stderr)
    return result


def _explained(exc: ModelsError) -> str:
    """The refusal, and for 401/403 which token the route needs."""
    message = str(exc)
    if exc.scope and exc.status == 401:
        has = ("the token in VIGIL_TOKEN was not accepted" if client_auth()
               else "VIGIL_TOKEN is not set")
        message += (f"\n{has}: this command needs a token with the '{exc.scope}' scope "
                    f"(`vigil tokens create NAME --scopes {exc.scope}` on the server's host)")
    elif exc.scope and exc.status == 403:
        message += (f"\nthis command needs a token with the '{exc.scope}' scope in VIGIL_TOKEN "
                    f"(`vigil tokens create NAME --scopes {exc.scope}` on the server's host)")
    return message


def _answering(handler: _Handler) -> _Handler:
    """A refusal from the server or the repository becomes its message and exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ModelsError as exc:
            return _refuse(_explained(exc), 1)

    return run


# ------------------------------------------------------------------ publish


def _publish(args: argparse.Namespace) -> int:
    from vigil.tools.publishing import PublishError, current_commit, publish_file

    try:
        metadata = _pairs(args.meta)
        params = _json_object("--params", args.params)
        metrics = _json_object("--metrics", args.metrics)
        done = publish_file(
            Path(args.repository), Path(args.file), args.name, actor=args.actor or local_actor(),
            version=args.version,
            reference=None if args.reference is None else Path(args.reference),
            outputs_from_model=args.outputs_from_model, max_batch_rows=args.max_batch_rows,
            metadata=metadata,
            training_data=None if args.training_data is None else Path(args.training_data),
            code_commit=args.code_commit or current_commit(Path.cwd()),
            params=params, metrics=metrics, max_model_bytes=args.max_model_bytes,
            progress=args.progress, inherit_metadata=args.inherit_metadata,
        )
    except PublishError as exc:
        return _refuse(str(exc))
    m = done.version.manifest
    if not args.json:
        batching = (f"batches up to {m.max_batch_rows} rows" if m.max_batch_rows
                    else "never batched")
        profile = (f"reference profile of {done.profile_rows} rows" if done.profile_rows
                   is not None else "no reference profile (the monitor tracks latency and errors "
                   "only)")
        print(f"published {m.name}/{m.version} -> {done.version.path}")
        print(f"  sha256 {m.sha256}; {batching}; {profile}")
        print(f"  inputs  {_signature(m.inputs)}")
        print(f"  outputs {_signature(m.outputs)}")
        _print_mapping("lineage", m.lineage)
    loaded, code = _load_published(args, m.name)
    if args.json:
        _print_json({
            "name": m.name, "version": m.version, "path": str(done.version.path),
            "sha256": m.sha256, "max_batch_rows": m.max_batch_rows,
            "inputs": [s.to_metadata() for s in m.inputs],
            "outputs": [s.to_metadata() for s in m.outputs],
            "metadata": m.metadata, "lineage": m.lineage, "profile_rows": done.profile_rows,
            "audit": done.entry, "load": loaded,
        })
    return code


def _load_published(args: argparse.Namespace, model: str) -> tuple[dict[str, Any] | None, int]:
    """Ask the server at --url to load the model's versions again, so that its replicas have
    the new one; never a model an operator unloaded. Returns its answer and the exit code."""
    from vigil.core.aliases import read_aliases

    quiet = args.json
    # The repository was just written here: its aliases say whether the model is unloaded (the
    # server's own view of a model it has not read yet is a 404).
    if read_aliases(Path(args.repository), model).unloaded:
        if not quiet:
            print(f"{model} is unloaded, so it stays so; `vigil models load {model}` serves it "
                  "again")
        return None, 0
    try:
        answer = ServerModels(args.url, client_auth(), args.timeout).change(model, "load")
    except NoServer:
        if not quiet:
            print(f"no server at {args.url}: the repository {args.repository} was written; a "
                  "server reads it when it starts")
        return None, 0
    except ModelsError as exc:
        _refuse(f"published, but the server did not load it: {_explained(exc)}", 1)
        return None, 1
    if not quiet:
        print(f"{args.url}: {model} reloaded")
    return answer, _convergence(answer, quiet)


def _pairs(items: list[str]) -> dict[str, Any]:
    """--meta KEY=VALUE: VALUE as JSON when it is JSON (numbers, lists), else as text."""
    from vigil.tools.publishing import PublishError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PublishError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    """A JSON object given inline, or read from a file as @PATH."""
    from vigil.tools.publishing import PublishError

    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except OSError as exc:
            raise PublishError(f"{flag} {text}: {exc}") from None
    try:
        doc = json.loads(source)
    except ValueError as exc:
        raise PublishError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PublishError(f"{flag}: expected a JSON object, got {type(doc).__name__}")
    return doc


# ------------------------------------------------------------------ reading


def _list(args: argparse.Namespace) -> int:
    rows = _ask(args, lambda m: m.index())
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no models")
        return 0
    table = [("MODEL", "VERSION", "STATE", "ALIASES", "REASON")]
    table += [(str(r.get("name")), str(r.get("version")), str(r.get("state")),
               ",".join(r.get("aliases") or []) or "-", _one_line(r.get("reason")) or "-")
              for r in rows]
    _print_table(table)
    return 0


def _show(args: argparse.Namespace) -> int:
    from vigil.core.aliases import AliasState

    def both(models: Models) -> dict[str, Any]:
        doc = models.aliases(args.name)
        published = [str(v) for v in doc.get("published", [])]
        state = AliasState.from_dict(doc["aliases"], "the server's aliases")
        version = args.version or state.production_of(published)
        meta = models.version(args.name, version) if version is not None else None
        return {"aliases": doc, "version": meta}

    shown = _ask(args, both)
    if args.json:
        _print_json(shown)
        return 0
    doc, meta = shown["aliases"], shown["version"]
    a = doc["aliases"]
    canary = a.get("canary")
    print(f"model {doc['model']} (generation {a.get('generation')})")
    print(f"  production: {a.get('production') or 'the newest version not retired'}"
          f"; previous: {', '.join(a.get('previous') or []) or '-'}")
    if canary:
        sticky = f", sticky on header {canary['sticky_header']}" if canary.get("sticky_header") \
            else ""
        print(f"  canary: {canary['version']} at weight {canary['weight']:g}{sticky}")
    else:
        print("  canary: -")
    print(f"  shadow: {a.get('shadow') or '-'}; retired: {', '.join(a.get('retired') or []) or '-'}"
          f"; unloaded: {'yes' if a.get('unloaded') else 'no'}")
    print(f"  published: {', '.join(doc.get('published') or []) or '-'}; "
          f"serving: {', '.join(doc.get('serving') or []) or '-'}")
    for version, reason in (doc.get("failed") or {}).items():
        print(f"  failed to load {version}: {_one_line(reason)}")
    if meta is None:
        return 0
    p = meta.get("parameters") or {}
    roles = ", ".join(p.get("aliases") or []) or "no alias"
    print(f"version {meta['versions'][0]} ({roles})")
    print(f"  sha256 {p.get('sha256')}; created {p.get('created')}; "
          f"max_batch_rows {p.get('max_batch_rows')}")
    print(f"  inputs  {_signature(meta.get('inputs') or [])}")
    print(f"  outputs {_signature(meta.get('outputs') or [])}")
    _print_mapping("lineage", p.get("lineage") or {})
    if p.get("metadata"):
        _print_mapping("metadata", p["metadata"])
    return 0


def _history(args: argparse.Namespace) -> int:
    entries = _ask(args, lambda m: m.history(args.name))
    if args.limit is not None:
        entries = entries[-args.limit:]
    if args.json:
        _print_json(entries)
        return 0
    if not entries:
        print(f"no changes recorded for {args.name}")
        return 0
    table = [("TIME", "ACTOR", "ACTION", "FROM -> TO", "REASON")]
    table += [(str(e.get("time")), str(e.get("actor")), str(e.get("action")),
               f"{e.get('from_version') or '-'} -> {e.get('to_version') or '-'}",
               _one_line(e.get("reason")) or "-") for e in entries]
    _print_table(table)
    return 0


# ------------------------------------------------------------------ changes


def _change(args: argparse.Namespace, action: str, version: str | None = None,
            weight: float | None = None, sticky_header: str | None = None) -> int:
    reason = getattr(args, "reason", "") or ""
    force = bool(getattr(args, "force", False))
    answer = _ask(
        args,
        lambda m: m.change(args.name, action, version=version, weight=weight,
                           sticky_header=sticky_header, reason=reason, force=force),
        changes=True,
    )
    if args.json:
        _print_json(answer)
    else:
        print(_describe(answer))
    return _convergence(answer, args.json)


def _convergence(answer: dict[str, Any], quiet: bool) -> int:
    """Exit 3, naming the replicas behind, when the server says not all of them applied it."""
    if "converged" not in answer:  # changed in the repository: no replica was asked
        return 0
    replicas = answer.get("replicas") or {}
    took = float(answer.get("applied_s") or 0)
    if answer["converged"]:
        if not quiet:
            print(f"  applied by all {len(replicas)} replica(s) in {took:.2f} s")
        return 0
    behind = answer.get("behind") or []
    _refuse(f"{answer.get('model')}: the change is saved (generation "
            f"{answer.get('generation')}), but {len(behind)} of {len(replicas)} replica(s) had "
            f"not applied it after {took:.2f} s: {', '.join(map(str, behind))}; they serve as "
            "before until they catch up", NOT_CONVERGED)
    return NOT_CONVERGED


def _describe(answer: dict[str, Any]) -> str:
    """One line saying what a change did."""
    model, action = answer.get("model"), answer.get("action")
    old, new = answer.get("from_version"), answer.get("to_version")
    aliases = answer.get("aliases") or {}
    suffix = f" (generation {answer.get('generation')})"
    if not answer.get("changed", True):
        return f"{model}: {action}: nothing to change{suffix}"
    if action in ("promote", "rollback"):
        return f"{model}: production {old or '-'} -> {new}{suffix}"
    if action == "canary":
        canary = aliases.get("canary") or {}
        sticky = (f", sticky on header {canary['sticky_header']}" if canary.get("sticky_header")
                  else "")
        return (f"{model}: canary {new} takes {canary.get('weight', 0):g} of unversioned "
                f"requests{sticky} (was {old or '-'}){suffix}")
    if action == "canary_cleared":
        return f"{model}: canary {old} cleared; production takes all traffic{suffix}"
    if action == "shadow":
        return f"{model}: shadow {new} gets a copy of unversioned requests (was {old or '-'}){suffix}"
    if action == "shadow_cleared":
        return f"{model}: shadow {old} cleared{suffix}"
    if action == "retire":
        return f"{model}/{old}: retired, no longer loaded (its files stay){suffix}"
    if action == "unload":
        return f"{model}: unloaded, no version is served{suffix}"
    return f"{model}: loaded{suffix}"


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
        if args.version is not None or args.weight is not None or args.sticky_header:
            return _refuse("canary NAME --off takes no version, --weight or --sticky-header")
        return _change(args, "canary_cleared")
    if args.version is None:
        return _refuse("name the canary version (canary NAME VERSION --weight W), or --off")
    if args.weight is None:
        return _refuse("a canary needs --weight: the share of unversioned requests, above 0 "
                       "and below 1")
    return _change(args, "canary", args.version, args.weight, args.sticky_header)


def _shadow(args: argparse.Namespace) -> int:
    if args.off:
        if args.version is not None:
            return _refuse("shadow NAME --off takes no version")
        return _change(args, "shadow_cleared")
    if args.version is None:
        return _refuse("name the shadow version (shadow NAME VERSION), or --off")
    return _change(args, "shadow", args.version)


# ------------------------------------------------------------------ output helpers


def _signature(specs: Any) -> str:
    parts = []
    for s in specs:
        doc = s if isinstance(s, dict) else s.to_metadata()
        parts.append(f"{doc['name']}:{doc['datatype']}{list(doc['shape'])}")
    return ", ".join(parts) or "-"


def _print_mapping(title: str, doc: dict[str, Any]) -> None:
    print(f"  {title}:" + ("" if doc else " -"))
    for key, value in doc.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        print(f"    {key}: {text}")


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# ------------------------------------------------------------------ the parser


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"the running server (default: {DEFAULT_URL}); its bearer token "
                        "comes from VIGIL_TOKEN (scope admin)")
    parser.add_argument("--repository", "--models-dir", dest="repository", default="models",
                        help="model repository, used directly when no server answers at --url "
                        "(default: models)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server (default: 60)")
    parser.add_argument("--json", action="store_true", help="print the JSON answer")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """`vigil models` and its subcommands."""
    models = commands.add_parser(
        "models", help="model versions: publish, list, show, promote, canary, shadow, rollback",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = models.add_subparsers(dest="models_command", required=True)

    publish = sub.add_parser(
        "publish", help="publish an ONNX file as a new version",
        description="Publish an ONNX file as a new immutable version of a model in the "
        "repository (written directly), with its signature, lineage and optional reference "
        "profile; then ask the server at --url, if one runs, to load it. Publishing never moves "
        "production traffic: promote or canary the version for that.",
    )
    publish.add_argument("file", metavar="FILE.onnx")
    publish.add_argument("--name", required=True, help="model name")
    publish.add_argument("--version", default=None,
                         help="version label (default: one above the highest numbered version)")
    publish.add_argument("--reference", default=None, metavar="DATA",
                         help="reference data (.parquet, .csv, .npz) for drift monitoring: its "
                         "profile is written into the version")
    publish.add_argument("--outputs-from-model", action=argparse.BooleanOptionalAction,
                         default=False, help="profile the model's outputs on the reference "
                         "features too (prediction drift)")
    publish.add_argument("--max-batch-rows", type=int, default=None, metavar="N",
                         help="declare batching: rows of several requests may share one run, up "
                         "to N (needs a dynamic first dimension on every input and output)")
    publish.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                         help="free-form metadata (repeatable; VALUE as JSON when it parses)")
    publish.add_argument("--training-data", default=None, metavar="FILE",
                         help="recorded in the lineage with its sha256 and row count")
    publish.add_argument("--code-commit", default=None, metavar="SHA",
                         help="default: `git rev-parse HEAD` here, when this is a git work tree")
    publish.add_argument("--params", default=None, metavar="JSON",
                         help="training parameters, a JSON object (or @FILE)")
    publish.add_argument("--metrics", default=None, metavar="JSON",
                         help="evaluation figures, a JSON object (or @FILE)")
    publish.add_argument("--max-model-bytes", type=positive_int, default=2 * 1024**3,
                         metavar="N", help="refuse larger files (default: 2 GiB)")
    publish.add_argument("--actor", default=None,
                         help="who publishes, for the lineage and the audit log "
                         "(default: local:<os user>)")
    publish.add_argument("--inherit-metadata", action=argparse.BooleanOptionalAction,
                         default=True, help="take production's feature names, classes, task and "
                         "held-out set (metadata.evaluation) for a new version of a served model "
                         "(default: on; --meta overrides a key)")
    publish.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="show a progress bar while profiling (default: on a terminal, "
                         "for large data)")
    publish.set_defaults(func=_publish)

    listing = sub.add_parser("list", help="every model version, its state and aliases")
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="a model's aliases, and a version's signature and lineage")
    show.add_argument("name")
    show.add_argument("version", nargs="?", default=None,
                      help="default: the production version")
    show.set_defaults(func=_show)

    history = sub.add_parser("history", help="the audit log of a model's changes")
    history.add_argument("name")
    history.add_argument("--limit", type=positive_int, default=None,
                         help="only the newest N entries")
    history.set_defaults(func=_history)

    promote = sub.add_parser("promote", help="make a version production")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true",
                         help="promote a version that has not passed the model gate (needs "
                         "--reason; recorded in the audit log)")
    promote.set_defaults(func=_promote)

    canary = sub.add_parser("canary", help="send a share of traffic to a version, or --off")
    canary.add_argument("name")
    canary.add_argument("version", nargs="?", default=None)
    canary.add_argument("--weight", type=float, default=None,
                        help="share of unversioned requests, above 0 and below 1")
    canary.add_argument("--sticky-header", default=None, metavar="HEADER",
                        help="requests with the same value of this header go to the same side")
    canary.add_argument("--off", action="store_true", help="end the canary")
    canary.set_defaults(func=_canary)

    shadow = sub.add_parser("shadow", help="copy traffic to a version, or --off")
    shadow.add_argument("name")
    shadow.add_argument("version", nargs="?", default=None)
    shadow.add_argument("--off", action="store_true", help="end the shadow")
    shadow.set_defaults(func=_shadow)

    rollback = sub.add_parser("rollback", help="production back to the previous version")
    rollback.add_argument("name")
    rollback.set_defaults(func=_rollback)

    retire = sub.add_parser("retire", help="stop loading a version (its files stay)")
    retire.add_argument("name")
    retire.add_argument("version")
    retire.set_defaults(func=_retire)

    load = sub.add_parser("load", help="serve the model's versions again (after unload)")
    load.add_argument("name")
    load.set_defaults(func=_load)

    unload = sub.add_parser("unload", help="stop serving every version of the model")
    unload.add_argument("name")
    unload.set_defaults(func=_unload)

    gate_cli.add_parser(sub)

    for parser in (promote, canary, shadow, rollback, retire):
        parser.add_argument("--reason", default="", help="recorded in the audit log")
    for parser in (publish, listing, show, history, promote, canary, shadow, rollback, retire,
                   load, unload):
        _common(parser)
        parser.set_defaults(func=_answering(parser.get_default("func")))
