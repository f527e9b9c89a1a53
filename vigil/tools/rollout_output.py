"""What `vigil models rollout` prints: the plan sent, and a rollout's status (the plan, the step,
every check's last figures, and what happens next, at what time)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from vigil.core import rollout
from vigil.core.rollout import PlanRefused

CONTROLS = {"status": None, "pause": "rollout_paused", "resume": "rollout_resumed",
            "abort": "rollout_aborted"}


def plan_of(args: argparse.Namespace) -> dict[str, Any]:
    """The plan's JSON from the command line (steps in percent), checked here first, so a plan
    that cannot end in a promotion is refused before anything is sent (PlanRefused)."""
    steps = (rollout.parse_percent_steps(args.steps) if args.steps is not None
             else rollout.DEFAULT_STEPS)
    plan = rollout.make_plan(steps, args.windows_per_step, args.max_failed_checks,
                             args.step_deadline_s, args.sticky_header)
    return plan.to_dict()


def status_lines(model: str, doc: dict[str, Any] | None, now: float | None = None) -> list[str]:
    """A rollout's saved state (the aliases' `rollout`) in words."""
    if doc is None:
        return [f"{model}: no rollout"]
    try:
        state = rollout.RolloutState.from_dict(doc, "the server's aliases")
    except ValueError as exc:
        raise PlanRefused(str(exc), 500) from None
    now = time.time() if now is None else now
    plan = state.plan
    steps = " -> ".join(f"{s * 100:g}%" for s in plan.steps)
    lines = [
        f"{model}: rollout of version {state.version}, {state.status}, step {state.step + 1} of "
        f"{len(plan.steps)} ({state.weight * 100:g}% of unversioned requests)",
        f"  plan: {steps} then promote; {plan.windows_per_step} passing window(s) per step, "
        f"rolled back after {plan.max_failed_checks} failed round(s), "
        f"{plan.step_deadline_s:g} s per step"
        + (f", sticky on header {plan.sticky_header}" if plan.sticky_header else ""),
        f"  started {_clock(state.started_at)}; this step since {_clock(state.step_started_at)}; "
        f"{state.passed_windows} window(s) passed at this step; {state.failed_checks} failed "
        "round(s) so far",
    ]
    if state.last_checks:
        lines.append(f"  last judged window {state.last_window}:")
        for check in state.last_checks:
            figures = "" if check.observed is None else f"{check.observed:.4g}"
            bound = "" if check.bound is None else f" (bound {check.bound:.4g})"
            lines.append(f"    {check.outcome:<10} {check.name:<16} {figures}{bound} "
                         f"{check.detail}".rstrip())
    lines.append(f"  next: {_next(state, now)}")
    return lines


def _next(state: rollout.RolloutState, now: float) -> str:
    if state.status == "paused":
        return "nothing until `vigil models rollout resume` (windows are not judged)"
    if state.status == "halted":
        return (f"halted ({state.halted_reason}); `resume` starts the step's deadline again, "
                "`abort` rolls the candidate back")
    left = state.plan.windows_per_step - state.passed_windows
    after = ("promotes the version" if state.step + 1 == len(state.plan.steps)
             else f"advances to {state.plan.steps[state.step + 1] * 100:g}%")
    return (f"{left} more passing window(s) {after}; if the step has not passed by "
            f"{_clock(state.deadline)} (in {max(0.0, state.deadline - now):.0f} s), it halts")


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
