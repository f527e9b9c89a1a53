"""Retrain breast_cancer from a drifted version, once, from the command line: what
.github/workflows/retrain.yml runs for a `vigil.drift.detected` dispatch (then the model gate and
a rollout), and the same job the example receiver runs on its own.

    VIGIL_TOKEN=... python -m examples.retrain --models-dir models \\
        --monitor-url http://127.0.0.1:8000/monitor --version 1 [--event-id ID]

Publishes through vigil.tools.publishing, audited as ``<actor>:<event id>`` (--actor, default
retrain). Prints the outcome as JSON on stdout ({"version": "2", ...}); exit 1 when nothing was
published (the monitor has no rows, the version is unknown), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from examples.retraining import MIN_LABELLED_ROWS, RECENT_SHARE, TOKEN_ENV, RetrainError, Retrainer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--monitor-url", default="http://127.0.0.1:8000/monitor")
    parser.add_argument("--version", required=True, help="the drifted version to start from")
    parser.add_argument("--event-id", default="manual",
                        help="the CloudEvent id that asked for it (recorded in the metadata)")
    parser.add_argument("--actor", default="retrain",
                        help="who publishes, in the audit log as ACTOR:EVENT_ID (default: retrain)")
    parser.add_argument("--min-labelled-rows", type=int, default=MIN_LABELLED_ROWS, metavar="N",
                        help="train on the window's labelled rows and their true labels alone "
                        f"when it has at least N; else on pseudo-labels (default: "
                        f"{MIN_LABELLED_ROWS})")
    parser.add_argument("--recent-share", type=float, default=RECENT_SHARE, metavar="F",
                        help="the least share of the training rows that comes from the window "
                        f"(default: {RECENT_SHARE})")
    args = parser.parse_args(argv)
    if args.min_labelled_rows < 1:
        parser.error("--min-labelled-rows must be at least 1")
    if not 0 < args.recent_share <= 1:
        parser.error("--recent-share must be in (0, 1]")
    retrainer = Retrainer(args.models_dir, args.monitor_url, os.environ.get(TOKEN_ENV) or None,
                          actor=args.actor, min_labelled_rows=args.min_labelled_rows,
                          recent_share=args.recent_share)
    try:
        outcome = retrainer.retrain(args.event_id, args.version)
    except RetrainError as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
