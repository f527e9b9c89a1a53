"""The `vigil` command line: example models, model versions (vigil.tools.models_cli), reference
profiles, reports, tokens, the webhook outbox, the Grafana dashboard."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from monitoring.outbox import STATES
from vigil.tools import models_cli, tokens_cli
from vigil.tools.argtable import MODELS_DIR, Command, Entry, add_commands, arg
from vigil.tools.console import one_line
from vigil.tools.console import refuse as _refuse

if TYPE_CHECKING:
    from monitoring.outbox import Outbox


def _examples_build(args: argparse.Namespace) -> int:
    from vigil.tools.examples import build_examples

    for version in build_examples(Path(args.models_dir), force=args.force, progress=args.progress):
        m = version.manifest
        profile = "profile" if version.has_profile else "no profile"
        print(f"{m.name}/{m.version}  sha256={m.sha256[:12]}  {profile}  {version.path}")
    return 0


def _profile_build(args: argparse.Namespace) -> int:
    from vigil.tools.profiles import profile_version

    version_dir = Path(args.models_dir) / args.model / args.version
    if not version_dir.is_dir():
        raise FileNotFoundError(f"no model version {args.model}/{args.version} in {args.models_dir}")
    profile = profile_version(
        version_dir, Path(args.data), outputs_from_model=args.outputs_from_model,
        progress=args.progress,
    )
    outputs = [c.name for c in profile.outputs]
    print(
        f"{args.model}/{args.version}: {profile.rows} rows, {len(profile.features)} features, "
        f"outputs {outputs or 'none'} ({(profile.meta or {}).get('outputs')}), "
        f"{profile.nbytes} bytes of arrays -> {version_dir}/profile.json, profile.npz"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    import urllib.parse

    from vigil.tools.server_client import ServerClient, url_refusal

    if (why := url_refusal(args.monitor_url, args.insecure)) is not None:
        return _refuse(why)
    query = f"?{urllib.parse.urlencode({'version': args.version})}" if args.version else ""
    model = urllib.parse.quote(args.model, safe="")
    monitor = ServerClient(args.monitor_url, args.timeout, insecure=args.insecure)
    # The monitor keeps reports gzip-compressed (about a quarter of the page's size); the
    # client decompresses them.
    body = monitor.send("GET", f"/monitor/v1/models/{model}/report{query}",
                        headers={"Accept-Encoding": "gzip"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    print(f"wrote {len(body)} bytes to {out}")
    return 0


def _dashboards_build(args: argparse.Namespace) -> int:
    try:
        from vigil.tools import dashboards
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("grafana_foundation_sdk"):
            raise
        return _refuse("building the dashboard needs grafana-foundation-sdk: "
                       "pip install -e '.[observe]'", 1)
    out = Path(args.out)
    if args.check:
        if dashboards.is_current(out):
            print(f"{out} is up to date")
            return 0
        state = "differs from" if out.is_file() else "is missing; expected"
        return _refuse(f"{out} {state} what vigil.tools.dashboards generates; regenerate it "
                       f"with `{dashboards.REGENERATE} --out {out}` and commit the result", 1)
    changed = dashboards.write(out)
    print(f"{'wrote' if changed else 'unchanged:'} {out}")
    return 0


# ---------------------------------------------------------------------- vigil webhooks

# monitoring.outbox imports no statistics (tests/unit/test_cli_startup.py holds the parser free
# of scipy and httpx), so the states are imported, not written twice.
_DELIVERY_STATES = STATES
_EVERY = 1_000_000  # "no limit" for one event's deliveries


def _outbox_path(args: argparse.Namespace) -> Path:
    """--outbox, else VIGIL_OUTBOX_PATH (read by the monitor's settings), else
    vigil-outbox.sqlite beside the model repository: the file the running monitor uses."""
    from monitoring.settings import MonitorAppSettings

    if args.outbox:
        return Path(args.outbox).expanduser()
    return MonitorAppSettings(model_repository=Path(args.models_dir)).outbox_file()


def _with_outbox(command: Callable[[argparse.Namespace, Outbox], int]) -> Callable[..., int]:
    """Open the existing outbox for `command`; a missing file is refused (exit 2), not created."""

    def run(args: argparse.Namespace) -> int:
        import sqlite3

        from monitoring.outbox import Outbox

        path = _outbox_path(args)
        if not path.is_file():
            return _refuse(f"no webhook outbox at {path} (the monitor creates it when it starts); "
                           "name it with --outbox FILE or --models-dir DIR")
        try:
            outbox = Outbox(path)
        except sqlite3.DatabaseError as exc:
            raise RuntimeError(f"{path}: {exc}") from None
        try:
            return command(args, outbox)
        finally:
            outbox.close()

    return run


def _unknown_events(outbox: Outbox, event_ids: list[str]) -> int | None:
    """Exit 1 with a message when some of these events are not in the outbox (saying which
    were pruned by its retention)."""
    missing = [i for i in event_ids if outbox.event(i) is None]
    if missing:
        return _refuse(_not_here(outbox, missing), 1)
    return None


def _not_here(outbox: Outbox, event_ids: list[str]) -> str:
    """Why these events are not in the outbox: pruned by its retention (when), or never there
    as far as it remembers."""
    said, unknown = [], []
    for event_id in event_ids:
        tombstone = outbox.pruned(event_id)
        if tombstone is None:
            unknown.append(event_id)
        else:
            said.append(f"event {event_id} was pruned from {outbox.path} at "
                        f"{_iso(tombstone.pruned_at)} (created {_iso(tombstone.created_at)}; "
                        f"delivered or dead, beyond the retention{_retention(outbox)})")
    if unknown:
        note = ""
        if (pruning := outbox.pruning()).events:
            note = (f" ({pruning.events} delivered or dead events were pruned by its retention"
                    f"{_retention(outbox)}; only the newest ids are remembered)")
        said.insert(0, f"no such event in {outbox.path}: {', '.join(unknown)}{note}")
    return "; ".join(said)


def _retention(outbox: Outbox) -> str:
    retention = outbox.pruning().retention
    if retention is None:
        return ""
    return (f": kept {retention.max_age_s / 86_400:g} days, at most {retention.max_events} "
            "events")


def _pruned_note(outbox: Outbox) -> str | None:
    """A line for listings: how many events retention has pruned, if any."""
    pruning = outbox.pruning()
    if not pruning.events:
        return None
    return (f"({pruning.events} delivered or dead events pruned by the outbox's retention"
            f"{_retention(outbox)}, the last at {_iso(pruning.last_at)})")


def _iso(ts: float | None) -> str:
    from datetime import UTC, datetime

    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _short(text: str | None, width: int = 40) -> str:
    return one_line(text, width) or "-"


def _webhooks_list(args: argparse.Namespace, outbox: Outbox) -> int:
    import json

    rows = outbox.deliveries(state=args.state, target=args.target, limit=args.limit)
    note = _pruned_note(outbox)
    if args.json:
        for d in rows:
            print(json.dumps(d.to_dict()))
        if note:
            print(note, file=sys.stderr)  # stdout stays one JSON object a line
        return 0
    if not rows:
        filters = "".join(f" {k}={v}" for k, v in (("state", args.state), ("target", args.target))
                          if v is not None)
        print(f"no deliveries{filters and ' with' + filters} in {outbox.path}")
        if note:
            print(note)
        return 0
    table = [("EVENT", "TYPE", "SUBJECT", "TARGET", "STATE", "ATTEMPTS", "STATUS", "LAST ERROR",
              "CREATED")]
    table += [(d.event_id, d.type, d.subject, d.target, d.state, str(d.attempts),
               "-" if d.last_status is None else str(d.last_status), _short(d.last_error),
               _iso(d.created_at)) for d in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if note:
        print(note)
    return 0


def _webhooks_show(args: argparse.Namespace, outbox: Outbox) -> int:
    import json

    event = outbox.event(args.event_id)
    if event is None:
        return _refuse(_not_here(outbox, [args.event_id]), 1)
    print(json.dumps(event, indent=2, ensure_ascii=False))
    deliveries = outbox.deliveries(event_id=args.event_id, limit=_EVERY)
    print(f"\ndeliveries ({len(deliveries)}):")
    for d in deliveries:
        status = "-" if d.last_status is None else d.last_status
        line = (f"  {d.target}: {d.state}, attempts {d.attempts}, last status {status}, "
                f"last attempt {_iso(d.last_attempt_at)}")
        line += (f", next attempt {_iso(d.next_attempt_at)}" if d.state == "pending"
                 else f", done {_iso(d.done_at)}")
        print(line)
        if d.last_error:
            print(f"    last error: {d.last_error}")
    return 0


def _webhooks_retry(args: argparse.Namespace, outbox: Outbox) -> int:
    ids = list(dict.fromkeys(args.event_ids))
    if ids and args.all_dead:
        return _refuse("give event ids or --all-dead, not both")
    if not ids and not args.all_dead:
        return _refuse("name the events to retry, or --all-dead for every dead delivery")
    if (code := _unknown_events(outbox, ids)) is not None:
        return code
    count = outbox.retry(event_ids=ids, target=args.target)
    where = f" to {args.target}" if args.target else ""
    print(f"re-queued {count} dead deliver{'y' if count == 1 else 'ies'}{where}; a running "
          "monitor sends pending deliveries within about a second")
    return 0


def _webhooks_replay(args: argparse.Namespace, outbox: Outbox) -> int:
    ids = list(dict.fromkeys(args.event_ids))
    if (code := _unknown_events(outbox, ids)) is not None:
        return code
    plan: dict[str, list[str]] = {}
    for event_id in ids:
        if args.targets:
            plan[event_id] = list(dict.fromkeys(args.targets))
        else:
            plan[event_id] = sorted({d.target for d in
                                     outbox.deliveries(event_id=event_id, limit=_EVERY)})
            if not plan[event_id]:
                return _refuse(f"event {event_id} has no deliveries; name the targets with "
                               "--target NAME")
    total = 0
    for event_id, targets in plan.items():
        total += outbox.replay([event_id], targets)
        print(f"{event_id}: pending again for {', '.join(targets)}")
    print(f"re-queued {total} deliver{'y' if total == 1 else 'ies'}; a running monitor sends "
          "pending deliveries within about a second")
    return 0


def _webhooks_secret(args: argparse.Namespace) -> int:
    import base64
    import secrets

    print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
    return 0


def _webhooks_parser(commands: argparse._SubParsersAction) -> None:
    sends = ("The running monitor sends pending deliveries within about a second; this command "
             "sends nothing itself (it holds no webhook secret).")
    webhooks = commands.add_parser(
        "webhooks", help="the webhook outbox: list, show, retry and replay event deliveries",
        description=f"The monitor's webhook outbox (SQLite). {sends}",
    )
    webhooks_cmd = webhooks.add_subparsers(dest="webhooks_command", required=True)

    listing = webhooks_cmd.add_parser("list", help="deliveries, newest event first")
    listing.add_argument("--state", choices=_DELIVERY_STATES, default=None)
    listing.add_argument("--target", default=None, help="only deliveries to this target")
    listing.add_argument("--limit", type=models_cli.positive_int, default=50,
                         help="most deliveries shown (default: 50)")
    listing.add_argument("--json", action="store_true", help="one JSON object a line")

    show = webhooks_cmd.add_parser("show", help="an event as sent, and its deliveries")
    show.add_argument("event_id", metavar="EVENT_ID")

    retry = webhooks_cmd.add_parser(
        "retry", help="dead deliveries pending again, with a fresh attempt budget",
        description=f"Move dead deliveries back to pending with a fresh attempt budget. {sends}",
    )
    retry.add_argument("event_ids", nargs="*", metavar="EVENT_ID",
                       help="events whose dead deliveries to retry")
    retry.add_argument("--target", default=None, help="only deliveries to this target")
    retry.add_argument("--all-dead", action="store_true",
                       help="every dead delivery (of --target, if given) instead of named events")

    replay = webhooks_cmd.add_parser(
        "replay", help="send events again (same id and body), whatever their delivery state",
        description="Queue events again, same id and body, for targets whatever their delivery "
        f"state; a target that never had the event gets a delivery. {sends}",
    )
    replay.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
    replay.add_argument("--target", dest="targets", action="append", default=None,
                        metavar="NAME", help="a target to replay to (repeatable; default: every "
                        "target that has a delivery of the event)")

    for sub, func in ((listing, _webhooks_list), (show, _webhooks_show),
                      (retry, _webhooks_retry), (replay, _webhooks_replay)):
        sub.add_argument("--outbox", default=None,
                         help="outbox file (default: VIGIL_OUTBOX_PATH, else vigil-outbox.sqlite "
                         "beside the model repository)")
        sub.add_argument("--models-dir", default="models", help="model repository (default: models)")
        sub.set_defaults(func=_with_outbox(func))

    secret = webhooks_cmd.add_parser(
        "secret", help="print a new signing secret (whsec_ + base64 of 32 random bytes)",
        description="Print a new Standard Webhooks signing secret. Put it in the monitor's "
        "environment, in the variable a target's secret_env names, and give it to the receiver.",
    )
    secret.set_defaults(func=_webhooks_secret)


# ---------------------------------------------------------------------- the parser

_PROGRESS = arg("--progress", action=argparse.BooleanOptionalAction, default=None,
                help="show a progress bar (default: on a terminal, for large builds)")
_EXAMPLES = Command("examples", "the bundled example models", sub=(
    Command("build", "build breast_cancer/1 and mlp/1", _examples_build, (
        MODELS_DIR, arg("--force", action="store_true", help="rebuild versions that exist"),
        _PROGRESS)),
))

_PROFILE = Command("profile", "reference profiles for drift monitoring", sub=(
    Command("build", "profile reference data beside a model version (profile.json + .npz)",
            _profile_build, (
                arg("--model", required=True),
                arg("--version", required=True),
                arg("--data", required=True, help="reference data: .parquet, .csv or .npz"),
                MODELS_DIR,
                arg("--outputs-from-model", action=argparse.BooleanOptionalAction,
                    default=False, help="run the model on the reference features for the "
                    "output columns (prediction drift); without it, outputs are profiled only "
                    "when the data holds them"),
                _PROGRESS)),
))

_DASHBOARDS = Command("dashboards", "the Grafana dashboard, generated as code", sub=(
    Command("build", "write the Vigil dashboard JSON (needs the observe extra)",
            _dashboards_build, (
                arg("--out", default="configs/grafana/vigil.json",
                    help="JSON file to write (default: configs/grafana/vigil.json)"),
                arg("--check", action="store_true", help="write nothing; exit 1 when the file "
                    "differs from what would be generated"),
            ), description="Generate the Vigil Grafana dashboard from vigil.tools.dashboards "
            "(grafana-foundation-sdk) and write it as JSON."),
))

_REPORT = Command("report", "fetch the monitor's HTML drift report", _report, (
    arg("--model", required=True),
    arg("--version", default=None, help="default: the newest"),
    arg("--out", required=True, help="HTML file to write"),
    arg("--monitor-url", default="http://127.0.0.1:8000",
        help="where the server runs; its bearer token comes from VIGIL_TOKEN"),
    models_cli.INSECURE_ARG,
    arg("--timeout", type=float, default=120.0, help="seconds (default: 120)"),
))

_TOP: tuple[Entry, ...] = (_EXAMPLES, models_cli.add_parser, _PROFILE, tokens_cli.COMMAND,
                           _webhooks_parser, _DASHBOARDS, _REPORT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True), _TOP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI answers with a message, not a traceback
        return _refuse(str(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
