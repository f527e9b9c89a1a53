"""`vigil webhooks ...`: the monitor's webhook outbox for operators: list, show, retry and replay
event deliveries, and make a signing secret. The commands read and write the outbox file; the
running monitor sends what they re-queue."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from monitoring.outbox import STATES, Outbox
from vigil.tools.argtable import MODELS_DIR, Command, arg, positive_int
from vigil.tools.console import one_line
from vigil.tools.console import refuse as _refuse

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


_SENDS = ("The running monitor sends pending deliveries within about a second; this command "
          "sends nothing itself (it holds no webhook secret).")
_OUTBOX_ARGS = (
    arg("--outbox", default=None, help="outbox file (default: VIGIL_OUTBOX_PATH, else "
        "vigil-outbox.sqlite beside the model repository)"),
    MODELS_DIR,
)

COMMAND = Command(
    "webhooks", "the webhook outbox: list, show, retry and replay event deliveries",
    description=f"The monitor's webhook outbox (SQLite). {_SENDS}", sub=(
        Command("list", "deliveries, newest event first", _with_outbox(_webhooks_list), (
            arg("--state", choices=_DELIVERY_STATES, default=None),
            arg("--target", default=None, help="only deliveries to this target"),
            arg("--limit", type=positive_int, default=50,
                help="most deliveries shown (default: 50)"),
            arg("--json", action="store_true", help="one JSON object a line"),
            *_OUTBOX_ARGS)),
        Command("show", "an event as sent, and its deliveries", _with_outbox(_webhooks_show),
                (arg("event_id", metavar="EVENT_ID"), *_OUTBOX_ARGS)),
        Command("retry", "dead deliveries pending again, with a fresh attempt budget",
                _with_outbox(_webhooks_retry), (
                    arg("event_ids", nargs="*", metavar="EVENT_ID",
                        help="events whose dead deliveries to retry"),
                    arg("--target", default=None, help="only deliveries to this target"),
                    arg("--all-dead", action="store_true", help="every dead delivery (of "
                        "--target, if given) instead of named events"),
                    *_OUTBOX_ARGS),
                description="Move dead deliveries back to pending with a fresh attempt budget. "
                f"{_SENDS}"),
        Command("replay", "send events again (same id and body), whatever their delivery state",
                _with_outbox(_webhooks_replay), (
                    arg("event_ids", nargs="+", metavar="EVENT_ID"),
                    arg("--target", dest="targets", action="append", default=None,
                        metavar="NAME", help="a target to replay to (repeatable; default: every "
                        "target that has a delivery of the event)"),
                    *_OUTBOX_ARGS),
                description="Queue events again, same id and body, for targets whatever their "
                f"delivery state; a target that never had the event gets a delivery. {_SENDS}"),
        Command("secret", "print a new signing secret (whsec_ + base64 of 32 random bytes)",
                _webhooks_secret, description="Print a new Standard Webhooks signing secret. Put "
                "it in the monitor's environment, in the variable a target's secret_env names, "
                "and give it to the receiver."),
    ))
