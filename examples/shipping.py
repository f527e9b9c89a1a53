"""What the example receiver does with a version it published, when asked to close the loop: the
model gate, then a progressive rollout started on the server (the monitor judges and promotes it).

A version that fails the gate is not rolled out, unless a reason to force it is given (the demo's
bad candidate: it must then be rolled back by the rollout's checks, not by the gate)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.core import rollout
from vigil.tools.model_client import ModelsError, ServerModels
from vigil.tools.server_client import NoServer, RefusedURL

logger = logging.getLogger("vigil.retrain_receiver")


@dataclass(frozen=True)
class Shipping:
    """Gate each published version and start its rollout on the server at `server_url` (with
    $VIGIL_TOKEN, which then needs the admin scope besides the monitor's)."""

    server_url: str
    plan: rollout.RolloutPlan
    force_reason: str | None = None
    timeout_s: float = 60.0

    def ship(self, models_dir: Path, model: str, version: str, actor: str) -> dict[str, Any]:
        """The gate's verdict and the rollout's start (or why not), for the job's outcome."""
        from vigil.tools.model_gate import GateError, validate

        try:
            verdict = validate(models_dir, model, version, actor=actor)
        except GateError as exc:
            return {"gate": "error", "gate_error": str(exc), "rollout": None}
        gate = "passed" if verdict["passed"] else "failed"
        failed = [c["name"] for c in verdict["checks"] if not c["passed"]]
        if not verdict["passed"] and self.force_reason is None:
            logger.warning("%s/%s failed the model gate (%s): no rollout", model, version,
                           ", ".join(failed))
            return {"gate": gate, "gate_failed": failed, "rollout": None}
        forced = not verdict["passed"]
        reason = (f"forced past the gate ({', '.join(failed)}): {self.force_reason}" if forced
                  else f"retrained by {actor}, gate passed")
        try:
            answer = ServerModels(self.server_url, self.timeout_s).change(
                model, "rollout", version=version, plan=self.plan.to_dict(), reason=reason,
                force=forced)
        except (ModelsError, NoServer, RefusedURL) as exc:
            logger.warning("%s/%s: the rollout was refused: %s", model, version, exc)
            return {"gate": gate, "gate_failed": failed, "rollout": "refused",
                    "rollout_error": str(exc)}
        logger.info("%s/%s: rollout started (%s)", model, version,
                    " -> ".join(f"{s * 100:g}%" for s in self.plan.steps))
        return {"gate": gate, "gate_failed": failed, "rollout": "started", "forced": forced,
                "generation": answer.get("generation")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--rollout", default=None, metavar="PERCENTS",
        help="after publishing, gate the version and start a progressive rollout with these "
        "steps (e.g. 5,10,25,50) on --server-url; needs $VIGIL_TOKEN with the admin scope")
    add("--server-url", default="http://127.0.0.1:8000", help="the server that takes rollouts")
    add("--windows-per-step", type=int, default=2, help="passing windows per step (default 2)")
    add("--step-deadline-s", type=float, default=600.0, help="a step's deadline (default 600)")
    add("--max-failed-checks", type=int, default=2, help="failed rounds before a rollback")
    add("--force-past-gate", default=None, metavar="REASON",
        help="roll out a version that failed the gate, with this reason (audited; the demo's "
        "bad candidate)")
    add("--train-on-shuffled-labels", action="store_true",
        help="train on shuffled labels: a deliberately worse candidate (the demo's DEMO_BAD)")


def from_args(args: argparse.Namespace) -> Shipping | None:
    """The Shipping the command line asks for (None without --rollout); ValueError names what is
    wrong with the plan."""
    if args.rollout is None:
        if args.force_past_gate is not None:
            raise ValueError("--force-past-gate needs --rollout")
        return None
    try:
        plan = rollout.make_plan(rollout.parse_percent_steps(args.rollout),
                                 args.windows_per_step, args.max_failed_checks,
                                 args.step_deadline_s)
    except rollout.PlanRefused as exc:
        raise ValueError(f"--rollout: {exc}") from None
    return Shipping(args.server_url, plan, args.force_past_gate)
