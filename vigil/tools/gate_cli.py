"""`vigil models validate NAME V`: the model gate from the command line (vigil.tools.model_gate).

Runs where the repository is (a CI job, the publisher's host): it loads the version with
onnxruntime and scores it and production on the held-out set the gate's policy names
(<repository>/<model>/gate.yaml, <repository>/gate.yaml, production's metadata.evaluation; never
the candidate's own model.yaml). canary and promote take the version only with a passed verdict
under the policy in force: one made with --holdout or --margin counts only if that is the same
policy. Exit 0 passed, 1 failed, 2 could not run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vigil.tools.model_client import local_actor


def _validate(args: argparse.Namespace) -> int:
    from vigil.tools.model_gate import GateError, validate

    try:
        verdict = validate(
            Path(args.repository), args.name, args.version,
            actor=args.actor or local_actor(),
            allow_signature_change=args.allow_signature_change,
            holdout=None if args.holdout is None else Path(args.holdout),
            margin=args.margin,
        )
    except GateError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(verdict, indent=2))
    else:
        against = verdict["against"]
        print(f"{args.name}/{args.version}: {'PASSED' if verdict['passed'] else 'FAILED'} the "
              f"model gate" + (f" (against production {against})" if against else ""))
        policy = verdict["policy"]
        print(f"  policy {policy['digest'][:12]} from {policy['source']} (held-out set "
              f"{policy['data']}, margin {policy['content']['margin']})" if policy
              else "  no gate policy (nothing names a held-out set)")
        for check in verdict["checks"]:
            print(f"  {'ok  ' if check['passed'] else 'FAIL'} {check['name']:<18} {check['detail']}")
        print("  recorded in model.yaml (lineage.validation) and the audit log")
    return 0 if verdict["passed"] else 1


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`vigil models validate`."""
    parser = sub.add_parser(
        "validate", help="run the model gate on a version (canary and promote require it)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--repository", "--models-dir", dest="repository", default="models",
                        help="model repository (default: models)")
    parser.add_argument("--holdout", default=None, metavar="DATA",
                        help="held-out set (.parquet, .csv, .npz) instead of the policy's; the "
                        "verdict is then recorded under that other policy")
    parser.add_argument("--margin", type=float, default=None,
                        help="how much worse than production is still accepted (accuracy/AUC: "
                        "absolute; RMSE: a share) instead of the policy's (default 0.01); the "
                        "verdict is then recorded under that other policy")
    parser.add_argument("--allow-signature-change", action="store_true",
                        help="declare that the signature differs from production's on purpose")
    parser.add_argument("--actor", default=None, help="who validates (default: local:<os user>)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")
    parser.set_defaults(func=_validate)
    return parser
