"""Progressive rollouts as pure functions: the plan and its refusals, the state saved with a
model's aliases, and the step machine that turns one judged window into a decision.

A rollout walks a candidate through canary weights (`plan.steps`, fractions in (0, 1), strictly
increasing) and promotes it after the last step passes. A step passes after
`windows_per_step` consecutive judged windows in which every check passed. A window with a failed
check is one failed round: it holds the step (its passing count starts again), and
`max_failed_checks` failed rounds over the whole rollout roll the candidate back. A window
without a verdict (too few requests, no production figures) is never a pass; a step that has not
passed when its deadline comes halts the rollout, which then waits for an operator: it never
promotes on its own from there.

Nothing here reads files, clocks or Ray: the caller passes `now` and applies the decision
(through vigil.core.model_ops), so every rule is tested with windows alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Outcome = Literal["pass", "fail", "no_verdict"]
DecisionKind = Literal["advance", "hold", "halt", "promote", "roll_back"]
Status = Literal["running", "paused", "halted"]
OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "no_verdict")
STATUSES: tuple[Status, ...] = ("running", "paused", "halted")

MAX_STEPS = 20
MAX_WINDOWS_PER_STEP = 100
MAX_FAILED_CHECKS = 100
MIN_DEADLINE_S = 1.0
MAX_DEADLINE_S = 7 * 24 * 3600.0
DEFAULT_STEPS = (0.05, 0.10, 0.25, 0.50)
_HEADER_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                          "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class PlanRefused(ValueError):
    """A rollout that cannot end in a promotion, or cannot start now; `status` is the HTTP
    answer (400 a plan that is wrong in itself, 409 one the model's state refuses)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RolloutPlan:
    """The weights a candidate walks through, and how each step is judged."""

    steps: tuple[float, ...] = DEFAULT_STEPS
    windows_per_step: int = 2
    max_failed_checks: int = 2
    step_deadline_s: float = 600.0
    sticky_header: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "steps": list(self.steps)}


def parse_percent_steps(text: str) -> tuple[float, ...]:
    """`"5,10,25,50"` (percent of the model's unversioned traffic, an optional `%` each) as
    fractions; PlanRefused for anything else."""
    steps = []
    for part in text.split(","):
        item = part.strip().removesuffix("%").strip()
        try:
            value = float(item)
        except ValueError:
            raise PlanRefused(f"step {part.strip()!r} is not a number of percent "
                              "(write steps as 5,10,25,50)") from None
        steps.append(value / 100.0)
    return tuple(steps)


def make_plan(steps: Sequence[float] = DEFAULT_STEPS, windows_per_step: int = 2,
              max_failed_checks: int = 2, step_deadline_s: float = 600.0,
              sticky_header: str | None = None) -> RolloutPlan:
    """A plan that can end in a promotion, or PlanRefused naming what is wrong."""
    steps = tuple(steps)
    if not steps:
        raise PlanRefused("a rollout needs at least one step")
    if len(steps) > MAX_STEPS:
        raise PlanRefused(f"{len(steps)} steps: at most {MAX_STEPS}")
    for i, step in enumerate(steps, 1):
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise PlanRefused(f"step {i} ({step!r}) is not a finite number")
        if not 0.0 < step < 1.0:
            raise PlanRefused(f"step {i} sends {step:.4g} of the traffic: each step must be above "
                              "0 and below 1 (100%), and the rollout promotes after the last one")
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise PlanRefused(f"steps must strictly increase: step {i + 1} ({steps[i]:.4g}) is "
                              f"not above step {i} ({steps[i - 1]:.4g})")
    _count("windows_per_step", windows_per_step, MAX_WINDOWS_PER_STEP)
    _count("max_failed_checks", max_failed_checks, MAX_FAILED_CHECKS)
    if (isinstance(step_deadline_s, bool) or not isinstance(step_deadline_s, (int, float))
            or not MIN_DEADLINE_S <= step_deadline_s <= MAX_DEADLINE_S):
        raise PlanRefused(f"step_deadline_s must be between {MIN_DEADLINE_S:g} and "
                          f"{MAX_DEADLINE_S:g} seconds, got {step_deadline_s!r}")
    if sticky_header is not None and (not sticky_header
                                      or not set(sticky_header) <= _HEADER_CHARS):
        raise PlanRefused(f"sticky_header {sticky_header!r} is not an HTTP header name")
    return RolloutPlan(tuple(float(s) for s in steps), windows_per_step, max_failed_checks,
                       float(step_deadline_s), sticky_header)


PLAN_FIELDS = ("steps", "windows_per_step", "max_failed_checks", "step_deadline_s",
               "sticky_header")


def plan_from_dict(doc: Any) -> RolloutPlan:
    """A plan sent as JSON (`steps` as fractions; omitted fields take their defaults), or
    PlanRefused (400) naming what is wrong."""
    if not isinstance(doc, dict):
        raise PlanRefused("'plan' must be an object with steps (fractions in (0, 1)), "
                          "windows_per_step, max_failed_checks, step_deadline_s, sticky_header")
    unknown = set(doc) - set(PLAN_FIELDS)
    if unknown:
        raise PlanRefused(f"unknown plan fields {sorted(unknown)}; known: {list(PLAN_FIELDS)}")
    steps = doc.get("steps", DEFAULT_STEPS)
    if not isinstance(steps, list | tuple):
        raise PlanRefused("'steps' must be a list of fractions in (0, 1)")
    defaults = RolloutPlan()
    return make_plan(tuple(steps), doc.get("windows_per_step", defaults.windows_per_step),
                     doc.get("max_failed_checks", defaults.max_failed_checks),
                     doc.get("step_deadline_s", defaults.step_deadline_s),
                     doc.get("sticky_header"))


def _count(name: str, value: Any, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise PlanRefused(f"{name} must be a whole number from 1 to {most}, got {value!r}")


def check_startable(model: str, version: str, production: str | None,
                    running: RolloutState | None, gate_passed: bool) -> None:
    """PlanRefused (409) when the model's state refuses a rollout of `version` now."""
    if running is not None:
        raise PlanRefused(f"{model} already has a rollout of version {running.version} "
                          f"({running.status}, step {running.step + 1} of "
                          f"{len(running.plan.steps)}): abort it first", 409)
    if production == version:
        raise PlanRefused(f"version {version} of {model} is production already", 409)
    if not gate_passed:
        raise PlanRefused(f"version {version} of {model} has not passed the model gate under the "
                          "policy in force (run `vigil models gate`, as promote requires)", 409)


@dataclass(frozen=True)
class CheckResult:
    """One named check on one window: its outcome, what was observed, and the bound."""

    name: str
    outcome: Outcome
    observed: float | None = None
    bound: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RolloutState:
    """A running rollout, saved in the model's aliases: it carries on from here after any
    restart."""

    version: str
    plan: RolloutPlan
    started_at: float
    step_started_at: float
    step: int = 0  # index into plan.steps
    passed_windows: int = 0  # consecutive passing windows at this step
    failed_checks: int = 0  # failed rounds over the whole rollout
    status: Status = "running"
    halted_reason: str | None = None
    last_window: int | None = None  # the candidate's last judged window (never judged twice)
    last_checks: tuple[CheckResult, ...] = field(default=())

    @property
    def weight(self) -> float:
        return self.plan.steps[self.step]

    @property
    def deadline(self) -> float:
        return self.step_started_at + self.plan.step_deadline_s

    def to_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["plan"] = self.plan.to_dict()
        doc["last_checks"] = [c.to_dict() for c in self.last_checks]
        return doc

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> RolloutState:
        """The state saved by to_dict; ValueError naming `where` and the field otherwise."""
        try:
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            plan_doc = doc["plan"]
            plan = make_plan(tuple(plan_doc["steps"]), plan_doc["windows_per_step"],
                             plan_doc["max_failed_checks"], plan_doc["step_deadline_s"],
                             plan_doc.get("sticky_header"))
            checks = tuple(CheckResult(**c) for c in doc.get("last_checks", ()))
            state = cls(version=str(doc["version"]), plan=plan,
                        started_at=float(doc["started_at"]),
                        step_started_at=float(doc["step_started_at"]), step=int(doc["step"]),
                        passed_windows=int(doc["passed_windows"]),
                        failed_checks=int(doc["failed_checks"]), status=doc["status"],
                        halted_reason=doc.get("halted_reason"),
                        last_window=doc.get("last_window"), last_checks=checks)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: the rollout is malformed ({exc})") from None
        if state.status not in STATUSES or not 0 <= state.step < len(plan.steps):
            raise ValueError(f"{where}: the rollout is malformed (status {state.status!r}, "
                             f"step {state.step})")
        if any(c.outcome not in OUTCOMES for c in checks):
            raise ValueError(f"{where}: the rollout is malformed (a check's outcome)")
        return state


def start(version: str, plan: RolloutPlan, now: float) -> RolloutState:
    """A new rollout at its first step."""
    return RolloutState(version=version, plan=plan, started_at=now, step_started_at=now)


@dataclass(frozen=True)
class Decision:
    """What to do after one judged window or tick. `state` is the rollout afterwards (None when
    it ended: promoted or rolled back); `weight` the canary weight to apply (advance)."""

    kind: DecisionKind
    state: RolloutState | None
    reason: str
    weight: float | None = None


def decide(state: RolloutState, window: int, checks: Iterable[CheckResult],
           now: float) -> Decision:
    """The decision after the candidate's closed `window` was judged by `checks`."""
    checks = tuple(checks)
    if state.status != "running":
        return Decision("hold", state, f"the rollout is {state.status}: window {window} not "
                        "judged")
    if state.last_window is not None and window <= state.last_window:
        return Decision("hold", state, f"window {window} was judged already")
    judged = replace(state, last_window=window, last_checks=checks)
    failed = [c.name for c in checks if c.outcome == "fail"]
    if failed:
        judged = replace(judged, failed_checks=state.failed_checks + 1, passed_windows=0)
        rounds = f"{judged.failed_checks} of {state.plan.max_failed_checks} failed rounds"
        if judged.failed_checks >= state.plan.max_failed_checks:
            return Decision("roll_back", None, f"window {window} failed {', '.join(failed)}: "
                            f"{rounds}; the candidate is rolled back")
        return Decision("hold", judged, f"window {window} failed {', '.join(failed)} "
                        f"({rounds}); step {state.step + 1} holds")
    if not checks or any(c.outcome == "no_verdict" for c in checks):
        missing = [c.name for c in checks if c.outcome == "no_verdict"] or ["every check"]
        return _past_deadline(judged, now) or Decision(
            "hold", judged, f"window {window} gave no verdict on {', '.join(missing)}")
    judged = replace(judged, passed_windows=state.passed_windows + 1)
    if judged.passed_windows < state.plan.windows_per_step:
        return _past_deadline(judged, now) or Decision(
            "hold", judged, f"window {window} passed ({judged.passed_windows} of "
            f"{state.plan.windows_per_step} at step {state.step + 1})")
    if state.step + 1 == len(state.plan.steps):
        return Decision("promote", None, f"window {window} passed the last step "
                        f"({state.weight:.4g}): the candidate is promoted")
    advanced = replace(judged, step=state.step + 1, passed_windows=0, step_started_at=now)
    return Decision("advance", advanced, f"step {state.step + 1} passed at window {window}: "
                    f"weight {state.weight:.4g} -> {advanced.weight:.4g}", advanced.weight)


def guard(state: RolloutState, reason: str) -> Decision:
    """A rollback rule (an alert rule with action rollback_canary) fired on the rollout's
    candidate: roll it back, whatever its step or status. A paused or halted rollout still
    serves its candidate, and the rule protects production from it."""
    return Decision("roll_back", None, reason)


def tick(state: RolloutState, now: float) -> Decision:
    """The decision when no window closed: a running step past its deadline halts (a candidate
    that gets no traffic closes no window, and must not wait forever)."""
    if state.status != "running":
        return Decision("hold", state, f"the rollout is {state.status}")
    return _past_deadline(state, now) or Decision("hold", state, "waiting for a window")


def _past_deadline(state: RolloutState, now: float) -> Decision | None:
    if now < state.deadline:
        return None
    reason = (f"step {state.step + 1} ({state.weight:.4g}) did not pass within "
              f"{state.plan.step_deadline_s:g} s ({state.passed_windows} of "
              f"{state.plan.windows_per_step} windows passed): halted, not promoted")
    return Decision("halt", replace(state, status="halted", halted_reason=reason), reason)


def pause(state: RolloutState) -> RolloutState:
    """Stop judging windows; the weight stays."""
    if state.status != "running":
        raise PlanRefused(f"the rollout of {state.version} is {state.status}, not running", 409)
    return replace(state, status="paused")


def resume(state: RolloutState, now: float) -> RolloutState:
    """Judge windows again; the step's deadline starts again from now."""
    if state.status == "running":
        raise PlanRefused(f"the rollout of {state.version} is running already", 409)
    return replace(state, status="running", halted_reason=None, step_started_at=now)
