"""Progressive rollouts, applied: the one place that turns the decisions of vigil.core.rollout on
closed windows into changes (through vigil.core.model_ops) and their events.

A rollout's state lives in its model's aliases; this module reads it (at most once per
``ALIASES_TTL_S`` per model) and keeps only what a restart may lose: the windows waiting for
production's figures over the same span, and production's recent windows. A candidate window is
judged once production has closed a window that reaches its end (or after ``settle_s``, with what
production closed by then): both sides are then compared over the same time.

Each decision is one audited change written with its events by monitoring.changes (held in the
outbox before the change, released after it): they are sent if and only if the change was made,
after a crash too. A decision made from a rollout that changed meanwhile (an operator paused or
aborted it) is refused by model_ops and dropped. A rollback rule that fires on the candidate
(monitoring.alerts) rolls it back through here too, by vigil.core.rollout.guard's decision.
Runs on the monitor's window thread.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.changes import Announcement, ChangeWriter
from monitoring.events import encode, rollout_event
from monitoring.outbox import NewEvent, Outbox
from monitoring.rollout_checks import WindowFigures, judge
from monitoring.rollout_settings import RolloutCheckSettings
from monitoring.window import ClosedWindow
from vigil.core import model_ops, rollout
from vigil.core.actions import AliasAction
from vigil.core.aliases import ALIASES_FILE, AliasError, AliasState, read_aliases
from vigil.core.rollout import Decision, RolloutState

logger = logging.getLogger("vigil.rollouts")
ALIASES_TTL_S = 1.0
MODELS_TTL_S = 5.0  # the repository's models listed at most this often (ticks)
ACTOR = "vigil-monitor (rollout)"
RECENT_WINDOWS = 16  # production windows kept per model while a rollout runs
PENDING_WINDOWS = 8  # candidate windows waiting for production's figures

_ACTIONS = {"hold": AliasAction.ROLLOUT_HELD, "advance": AliasAction.ROLLOUT_ADVANCED,
            "halt": AliasAction.ROLLOUT_HALTED, "promote": AliasAction.ROLLOUT_PROMOTED,
            "roll_back": AliasAction.ROLLOUT_ROLLED_BACK}
EVENTS_BY_DECISION = {"advance": ("vigil.rollout.advanced",), "halt": ("vigil.rollout.halted",),
           "promote": ("vigil.rollout.promoted",),
           "roll_back": ("vigil.rollout.rolled_back", "vigil.model.rolled_back")}
STARTED = "vigil.rollout.started"

Targets = Callable[[str], tuple[str, ...]]  # the webhook targets that want an event type
# A version's quality on its labelled predictions answered in [start, end), higher is better
# (None: too few labels); monitoring.label_join.LabelJoin.rollout_quality.
Quality = Callable[[str, str, float, float, int], "float | None"]


@dataclass
class _Model:
    """What the driver holds of one model while it has a rollout."""

    read_at: float = float("-inf")
    aliases: AliasState | None = None
    production: deque[ClosedWindow] = field(default_factory=lambda: deque(maxlen=RECENT_WINDOWS))
    pending: deque[ClosedWindow] = field(default_factory=lambda: deque(maxlen=PENDING_WINDOWS))


class RolloutDriver:
    """The rollouts of one repository's models."""

    def __init__(self, repository: Path, outbox: Outbox, public_url: str, targets: Targets,
                 on_change: Callable[[str], None], settings: RolloutCheckSettings | None = None,
                 settle_s: float = 120.0, notify: Callable[[], None] | None = None,
                 quality: Quality | None = None) -> None:
        self.repository = Path(repository)
        self.outbox = outbox
        self.public_url = public_url
        self.targets = targets
        self.settings = settings or RolloutCheckSettings()
        self.settle_s = settle_s
        self.notify = notify or (lambda: None)
        self.quality = quality  # labels for the quality check (None: the check is left out)
        # on_change tells the serving replicas that a model's aliases changed
        self.changes = ChangeWriter(repository, outbox, on_change, lambda: self.notify())
        self.models: dict[str, _Model] = {}
        self.checks_total: dict[tuple[str, str, str], int] = {}  # (model, check, outcome)
        self.decisions_total: dict[tuple[str, str], int] = {}  # (model, decision kind)
        self._listed: list[str] = []
        self._listed_at = float("-inf")

    # ------------------------------------------------------------------ reading the aliases

    def _aliases(self, model: str, now: float, fresh: bool = False) -> AliasState | None:
        held = self.models.setdefault(model, _Model())
        if fresh or not 0.0 <= now - held.read_at < ALIASES_TTL_S:
            try:
                held.aliases = read_aliases(self.repository, model)
            except (AliasError, OSError) as exc:
                logger.error("cannot read the aliases of %s (its rollout is not judged): %s",
                             model, exc)
                held.aliases = None
            held.read_at = now
            if held.aliases is not None and held.aliases.rollout is not None:
                self._announce(model, held.aliases, now)
        if held.aliases is None or held.aliases.rollout is None:
            held.pending.clear()
            held.production.clear()
        return held.aliases

    def running(self) -> list[tuple[str, RolloutState]]:
        """The rollouts seen at the latest reads (for metrics and ticks)."""
        return [(m, h.aliases.rollout) for m, h in sorted(self.models.items())
                if h.aliases is not None and h.aliases.rollout is not None]

    def candidate(self, model: str, now: float) -> str | None:
        """The version `model` rolls out now (None: no rollout)."""
        state = self._aliases(model, now)
        return None if state is None or state.rollout is None else state.rollout.version

    def roll_back_by_rule(self, model: str, version: str, reason: str, details: dict[str, Any],
                          window: ClosedWindow | None, now: float) -> str | None:
        """A rollback rule fired on `version`, the candidate of `model`'s rollout: roll it back
        (vigil.core.rollout.guard). Returns the id of the vigil.model.rolled_back event, None
        when nothing was rolled back (no such rollout now, or the change was refused or
        failed)."""
        state = self._aliases(model, now, fresh=True)
        if state is None or state.rollout is None or state.rollout.version != version:
            return None
        ids = self._apply(model, state.rollout, rollout.guard(state.rollout, reason), window, (),
                          now, extra=details)
        return ids[-1] if ids else None

    # ------------------------------------------------------------------ windows and ticks

    def on_window(self, model: str, version: str, window: ClosedWindow, now: float) -> None:
        """A window of `model`/`version` closed."""
        state = self._aliases(model, now)
        if state is None or state.rollout is None:
            return
        held = self.models[model]
        if version == state.rollout.version:
            held.pending.append(window)
        elif version == self._production(model, state):
            held.production.append(window)
        else:
            return
        self._judge_pending(model, now, force=False)

    def tick(self, models: Iterable[str], now: float) -> None:
        """Judge candidate windows that waited `settle_s`, and halt steps past their deadline
        (a candidate without traffic closes no window; a model the monitor has no sample of
        is found in the repository)."""
        for model in sorted({*models, *self._repository_models(now)}):
            state = self._aliases(model, now)
            if state is None or state.rollout is None:
                continue
            self._judge_pending(model, now, force=True)
            state = self._aliases(model, now)
            if state is not None and state.rollout is not None:
                decision = rollout.tick(state.rollout, now)
                if decision.kind == "halt":
                    self._apply(model, state.rollout, decision, None, (), now)

    def _repository_models(self, now: float) -> list[str]:
        """The models whose aliases exist, listed at most once per MODELS_TTL_S."""
        if not 0.0 <= now - self._listed_at < MODELS_TTL_S:
            try:
                self._listed = sorted(p.parent.name for p in self.repository.glob(
                    f"*/{ALIASES_FILE}"))
            except OSError as exc:
                logger.error("cannot list the repository %s: %s", self.repository, exc)
            self._listed_at = now
        return self._listed

    def _production(self, model: str, state: AliasState) -> str | None:
        if state.production is not None:
            return state.production
        try:
            return state.production_of(model_ops.published_versions(self.repository, model))
        except AliasError:
            return None

    def _judge_pending(self, model: str, now: float, force: bool) -> None:
        held = self.models[model]
        while held.pending:
            window = held.pending[0]
            covered = any(p.closed_at >= window.closed_at for p in held.production)
            if not covered and not (force and now - window.closed_at >= self.settle_s):
                return
            held.pending.popleft()
            state = self._aliases(model, now, fresh=True)
            if state is None or state.rollout is None:
                return
            judged = state.rollout
            candidate, production = self._figures(model, state, held, window)
            checks = judge(candidate, production, self.settings)
            decision = rollout.decide(judged, window.index, checks, now)
            if decision.state == judged:  # paused, halted, or this window was judged already
                continue
            for check in checks:
                key = (model, check.name, check.outcome)
                self.checks_total[key] = self.checks_total.get(key, 0) + 1
            self._apply(model, judged, decision, window, checks, now)

    def _figures(self, model: str, state: AliasState, held: _Model,
                 window: ClosedWindow) -> tuple[WindowFigures, WindowFigures | None]:
        """The candidate's window and production's figures over its span, each with its
        quality on the labels joined by now when labels are fed (both or neither)."""
        assert state.rollout is not None
        production = self._production_figures(held, window)
        candidate = WindowFigures.of(window)
        version = self._production(model, state)
        if self.quality is None or production is None or version is None:
            return candidate, production
        least = self.settings.min_requests  # labelled rows each side needs
        try:
            mine = self.quality(model, state.rollout.version, window.opened_at,
                                window.closed_at, least)
            theirs = self.quality(model, version, window.opened_at, window.closed_at, least)
        except Exception:  # noqa: BLE001 - the other checks still judge the window
            logger.exception("reading the labels of %s over window %d failed", model,
                             window.index)
            return candidate, production
        return (dataclasses.replace(candidate, quality=mine),
                dataclasses.replace(production, quality=theirs))

    @staticmethod
    def _production_figures(held: _Model, window: ClosedWindow) -> WindowFigures | None:
        """Production's figures over the candidate window's span: its windows that overlap it,
        taken together (requests summed, error ratio and p99 weighted by requests)."""
        over = [p for p in held.production
                if p.closed_at > window.opened_at and p.opened_at < window.closed_at]
        if not over:
            return None
        requests = sum(p.requests for p in over)
        if requests == 0:
            return WindowFigures(over[-1].index, 0, 0.0, None)
        errors = sum(p.latency.error_ratio * p.requests for p in over)
        timed = [(p.latency.p99, p.requests) for p in over if p.latency.p99 is not None]
        p99 = (sum(v * n for v, n in timed) / sum(n for _, n in timed)) if timed and sum(
            n for _, n in timed) else None
        return WindowFigures(over[-1].index, requests, errors / requests, p99)

    # ------------------------------------------------------------------ applying a decision

    def _apply(self, model: str, judged: RolloutState, decision: Decision,
               window: ClosedWindow | None, checks: Iterable[rollout.CheckResult],
               now: float, extra: dict[str, Any] | None = None) -> list[str]:
        """One decision as one audited change with its events (monitoring.changes); returns
        their ids ([] when it was not made). `extra`: more details for the audit entry."""
        figures = [c.to_dict() for c in checks]
        kinds = EVENTS_BY_DECISION.get(decision.kind, ())
        ids = [str(uuid.uuid4()) for _ in kinds]
        details: dict[str, Any] = {**(extra or {}), "decision": decision.kind, "checks": figures,
                                   "window": None if window is None else window.summary()}
        if ids:
            details.update(event_id=ids[0], event_ids=ids)

        def announce(change: model_ops.Change) -> list[Announcement]:
            production = change.after.production
            state = change.after.rollout
            found = []
            for event_id, kind in zip(ids, kinds, strict=True):
                doc = rollout_event(
                    kind=kind, model=model, version=judged.version,
                    state=None if state is None else state.to_dict(),
                    plan=judged.plan.to_dict(), step=judged.step, weight=decision.weight,
                    reason=decision.reason, checks=figures, window=window,
                    generation=change.after.generation, production=production,
                    public_url=self.public_url, now=now)
                doc["id"] = event_id
                found.append(Announcement(NewEvent(event_id, kind, doc["subject"], now,
                                                   encode(doc), self.targets(kind)), {}))
            return found

        try:
            self.changes.write(model, _ACTIONS[decision.kind], actor=ACTOR,
                               reason=decision.reason, version=judged.version, details=details,
                               announce=announce, expect=judged, rollout=decision.state, now=now)
        except AliasError as exc:  # the rollout changed since it was judged: dropped
            logger.warning("rollout of %s/%s: %s not applied: %s", model, judged.version,
                           decision.kind, exc)
            self._aliases(model, now, fresh=True)
            return []
        except Exception:  # noqa: BLE001 - the window thread goes on; the next window retries
            logger.exception("rollout of %s/%s: applying %s failed", model, judged.version,
                             decision.kind)
            return []
        key = (model, decision.kind)
        self.decisions_total[key] = self.decisions_total.get(key, 0) + 1
        log = logger.info if decision.kind == "hold" else logger.warning
        log("rollout of %s/%s: %s", model, judged.version, decision.reason)
        self._aliases(model, now, fresh=True)
        return ids

    def _announce(self, model: str, state: AliasState, now: float) -> None:
        """`vigil.rollout.started`, once per rollout: its id is derived from the rollout, so a
        restarted monitor that reads it again commits nothing new."""
        started = state.rollout
        assert started is not None
        event_id = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                  f"vigil:{model}/{started.version}@{started.started_at!r}"))
        if self.outbox.has_event(event_id):
            return
        doc = rollout_event(kind=STARTED, model=model, version=started.version,
                            state=started.to_dict(), plan=started.plan.to_dict(), step=0,
                            weight=started.plan.steps[0], reason="rollout started", checks=[],
                            window=None, generation=state.generation,
                            production=state.production, public_url=self.public_url, now=now)
        doc["id"] = event_id
        try:
            self.outbox.commit({}, [NewEvent(event_id, STARTED, doc["subject"], now, encode(doc),
                                             self.targets(STARTED))])
        except Exception:  # noqa: BLE001 - announced at the next read
            logger.exception("committing %s for %s/%s failed", STARTED, model, started.version)
            return
        self.notify()
