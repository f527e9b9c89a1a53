"""The alert engine: applies the rules to closed windows and silences, keeps every alert's state,
and commits firings and resolutions as events to the outbox.

Runs on the monitor's window thread (it is not thread-safe). Only a change that matters survives
a restart: firing or not, since when, the last firing (for the cooldown) and event; the counts of
consecutive windows start again after a restart, as the windows themselves do. So a restart
neither fires an alert again nor forgets one that fires.

A rule whose action is ``rollback_canary`` is judged only on its model's canary (see
monitoring.canary; on any other version its counts start again). When it fires, the canary is
cleared and a ``vigil.model.rolled_back`` event is sent instead of the condition's own, written in
the same step as the change: held in the outbox before it, released after it (with the alert's
state), dropped if it failed, and reconciled against the audit log at start and after a release
that failed, so it is never lost nor sent for a change that did not happen. The alert does not
stay firing (its last firing is kept, for the cooldown), so the next canary is judged from
scratch. When the canary cannot be cleared (gone already, replaced, an error) no event is sent
and the alert does not fire; a failed change is tried again at the next breach.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.alert_settings import AlertRule, WebhookTarget
from monitoring.canary import CanaryGuard, RolledBack, rollback_details, rollback_reason
from monitoring.changes import Announcement, ChangeWriter
from monitoring.events import alert_event, encode, rollback_event
from monitoring.outbox import AlertKey, NewEvent, Outbox
from monitoring.rollouts import RolloutDriver
from monitoring.rules import (
    AlertState,
    Transition,
    Verdict,
    advance,
    judge,
    judge_estimated,
    judge_labels,
    judge_silence,
)
from monitoring.window import ClosedWindow

logger = logging.getLogger("vigil.alerts")


@dataclass(frozen=True)
class Evaluation:
    """The latest verdict of one rule on one version (for the drift JSON)."""

    verdict: Verdict
    at: float


class AlertEngine:
    """Every (model, version, rule) alert of the monitored versions."""

    def __init__(self, outbox: Outbox, public_url: str, now: float,
                 notify: Callable[[], None] | None = None, repository: Path | None = None,
                 on_rollback: Callable[[str], None] | None = None,
                 rollouts: RolloutDriver | None = None) -> None:
        """`repository`: the model repository whose canaries rollback rules judge and clear
        (None: rollback rules judge nothing); `on_rollback(model)`: called after a canary was
        cleared, to tell the serving replicas; `rollouts`: the driver that rolls back a canary
        under a progressive rollout (its decision, its events)."""
        self.outbox = outbox
        self.public_url = public_url
        self.notify = notify or (lambda: None)  # called after events were committed
        self.changes = (None if repository is None else
                        ChangeWriter(repository, outbox, on_rollback, lambda: self.notify()))
        self.canaries = None if self.changes is None else CanaryGuard(self.changes)
        self.rollouts = rollouts
        self.rules: list[AlertRule] = []
        self.targets: list[WebhookTarget] = []
        self.states: dict[AlertKey, AlertState] = outbox.load_alerts()
        self.evaluations: dict[AlertKey, Evaluation] = {}
        self.started_at = now
        self.last_request: dict[tuple[str, str], float] = {}
        self.events_committed = 0
        self._previous: list[AlertRule] = []  # the rules before the latest configure
        self._unsettled = self.changes is not None  # held rollback events may wait (a crash)
        self._settle()

    def configure(self, rules: list[AlertRule], targets: list[WebhookTarget],
                  versions: Iterable[tuple[str, str]], now: float) -> None:
        """New rules and targets. A firing alert whose rule is gone (or no longer watches its
        version) resolves, so that receivers close what they opened."""
        self.rules, self.targets = list(rules), list(targets)
        watched = {(m, v, r.name) for m, v in versions for r in rules if r.watches(m, v)}
        gone = [k for k in self.states if k not in watched]
        self._forget(gone, self._previous, "the rule was removed or no longer watches this "
                     "version", "rule_removed", now)
        self._previous = list(rules)

    def forget_version(self, model: str, version: str, now: float) -> None:
        """The monitor released `version` (retired, or its model unloaded): its alerts resolve,
        since no window of it will close again, and the engine keeps nothing of it."""
        self.last_request.pop((model, version), None)
        keys = [k for k in [*self.states, *self.evaluations] if k[:2] == (model, version)]
        self._forget(list(dict.fromkeys(keys)), self.rules, "the version is no longer served "
                     "(retired, or its model unloaded)", "version_released", now)

    def _forget(self, keys: list[AlertKey], rules: list[AlertRule], why: str, reason: str,
                now: float) -> None:
        """Drop these alerts' state; a firing one resolves with `reason` (its rule from
        `rules`), so that receivers close what they opened."""
        changes: dict[AlertKey, AlertState | None] = {}
        events = []
        for key in keys:
            state = self.states.pop(key, None)
            self.evaluations.pop(key, None)
            if state is None:
                continue
            changes[key] = None
            rule = next((r for r in rules if r.name == key[2]), None)
            if state.firing and rule is not None:
                events.append(self._event(rule, key, "resolve", Verdict(False, why), state, None,
                                          now, reason=reason))
            elif state.firing:
                logger.warning("alert %s of %s/%s was firing; its rule is gone (resolved "
                               "silently: the rule is unknown since the monitor restarted)",
                               key[2], key[0], key[1])
        if changes or events:
            self._commit(changes, events)

    def request_seen(self, model: str, version: str, now: float) -> None:
        self.last_request[(model, version)] = now

    def on_window(self, model: str, version: str, window: ClosedWindow, now: float) -> None:
        """Judge every rule watching this version on its newly closed window (rollback rules
        only when it is its model's canary)."""
        self._settle()
        rules = self._window_rules(model, version, now, "window")
        self._apply(model, version, [(r, judge(r, window)) for r in rules], window, now)

    def on_settled(self, model: str, version: str, window: ClosedWindow,
                   quality: dict[str, Any], now: float) -> None:
        """Judge the label rules watching this version on a window whose labels settled
        (monitoring.label_join.LabelJoin.settle), with its quality from labels."""
        self._settle()
        rules = self._window_rules(model, version, now, "labels")
        self._apply(model, version, [(r, judge_labels(r, window, quality)) for r in rules],
                    window, now)

    def on_estimated(self, model: str, version: str, window: ClosedWindow,
                     estimated: dict[str, Any], now: float) -> None:
        """Judge the estimated_quality_drop rules watching this version on a closed window,
        with its quality estimated before labels (LabelJoin.estimate_due)."""
        self._settle()
        rules = self._window_rules(model, version, now, "estimated")
        self._apply(model, version, [(r, judge_estimated(r, window, estimated)) for r in rules],
                    window, now)

    def _window_rules(self, model: str, version: str, now: float,
                      when: str) -> list[AlertRule]:
        """The rules judging this version's windows `when` they close ("window"), settle
        ("labels") or are estimated ("estimated"); rollback rules only when it is its model's
        canary now (else their counts start again)."""
        family = {"labels": ("labels",), "estimated": ("estimated",)}.get(
            when, ("drift", "quality", "requests", "shadow"))
        rules = [r for r in self.rules if r.when.family in family and r.watches(model, version)]
        if any(r.action == "rollback_canary" for r in rules) and not self._is_canary(
            model, version, now
        ):
            for rule in rules:
                if rule.action == "rollback_canary":
                    self._start_again((model, version, rule.name))
            rules = [r for r in rules if r.action != "rollback_canary"]
        return rules

    def _is_canary(self, model: str, version: str, now: float) -> bool:
        return self.canaries is not None and self.canaries.canary(model, now) == version

    def _start_again(self, key: AlertKey) -> None:
        """Forget the consecutive counts of a rollback rule on a version that is not the canary
        (now): a later canary deployment of it is judged from scratch."""
        state = self.states.get(key)
        if state is not None and (state.breaching or state.healthy):
            self.states[key] = dataclasses.replace(state, breaching=0, healthy=0)

    def tick(self, versions: Iterable[tuple[str, str]], now: float) -> None:
        """Judge the silence rules (no request for N seconds) of every version."""
        self._settle()
        silence = [r for r in self.rules if r.when.family == "traffic"]
        if not silence:
            return
        for model, version in versions:
            quiet = now - self.last_request.get((model, version), self.started_at)
            rules = [r for r in silence if r.watches(model, version)]
            if rules:
                self._apply(model, version, [(r, judge_silence(r, quiet)) for r in rules], None, now)

    def _apply(self, model: str, version: str, verdicts: list[tuple[AlertRule, Verdict]],
               window: ClosedWindow | None, now: float) -> None:
        changes: dict[AlertKey, AlertState | None] = {}
        states: dict[AlertKey, AlertState] = {}
        events = []
        for rule, verdict in verdicts:
            key = (model, version, rule.name)
            self.evaluations[key] = Evaluation(verdict, now)
            before = self.states.get(key, AlertState())
            after, transition = advance(rule, before, verdict, now)
            if transition == "fire" and rule.action == "rollback_canary":
                after = self._roll_back(rule, key, before, after, verdict, window, now)
            elif transition is not None:
                event = self._event(rule, key, transition, verdict, after, window, now)
                after = AlertState(**{**after.to_dict(), "last_event_id": event.id})
                events.append(event)
                changes[key] = after
                logger.warning("alert %s of %s/%s %s: %s", rule.name, model, version,
                               "fires" if transition == "fire" else "resolved", verdict.detail)
            states[key] = after
        if changes:
            try:
                self._commit(changes, events)
            except Exception:  # noqa: BLE001 - the next verdict tries again; windows go on
                logger.exception("could not commit alerts of %s/%s to the outbox", model, version)
                states = {k: v for k, v in states.items() if k not in changes}
        self.states.update(states)

    def _roll_back(self, rule: AlertRule, key: AlertKey, before: AlertState, fired: AlertState,
                   verdict: Verdict, window: ClosedWindow | None, now: float) -> AlertState:
        """A rollback rule fired: roll the canary back, as one change written with its event
        (monitoring.changes). A canary under a progressive rollout is rolled back by its
        rollout's own decision (vigil.core.rollout.guard: the rollout ends, its events say why);
        any other is cleared by the canary guard. Returns the alert's state (not firing), or,
        when nothing was rolled back, the state as if it had not fired."""
        model, version, _ = key
        state = AlertState(firing=False, since=None, last_fired_at=now)
        if self.rollouts is not None and self.rollouts.candidate(model, now) == version:
            reason = rollback_reason(rule, model, version, verdict, window)
            details = rollback_details(rule, verdict, window)
            event_id = self.rollouts.roll_back_by_rule(model, version, reason, details, window,
                                                       now)
            if event_id is not None:
                state = dataclasses.replace(state, last_event_id=event_id)
                try:
                    self.outbox.commit({key: state}, [])
                except Exception:  # noqa: BLE001 - kept in memory; committed with the next change
                    logger.exception("could not commit alert %s of %s/%s", key[2], model, version)
                return state
            return dataclasses.replace(fired, firing=False, since=None,
                                       last_fired_at=before.last_fired_at)

        def announce(done: RolledBack) -> Announcement:
            doc = rollback_event(rule=rule, model=model, version=version,
                                 production=done.production, generation=done.generation,
                                 reason=done.reason, verdict=verdict, window=window,
                                 public_url=self.public_url, now=now)
            doc["id"] = done.event_id  # the id the audit entry names
            targets = tuple(t.name for t in self.targets if t.wants(doc["type"]))
            event = NewEvent(doc["id"], doc["type"], doc["subject"], now, encode(doc), targets)
            return Announcement(event, {key: dataclasses.replace(state,
                                                                 last_event_id=event.id)})

        done = None
        if self.canaries is not None and self.canaries.canary(model, now) == version:
            done = self.canaries.roll_back(rule, model, version, verdict, window, now, announce)
        if done is None:  # gone, replaced, or failed: not fired (a failed change retries)
            return dataclasses.replace(fired, firing=False, since=None,
                                       last_fired_at=before.last_fired_at)
        if done.released:
            self.events_committed += 1
        else:
            self._unsettled = True  # held: the next window's settling releases it
        return dataclasses.replace(state, last_event_id=done.event_id)

    def _settle(self) -> None:
        """Release the held rollback events whose change happened, drop the others (a crash or
        a failed release between the change and the release)."""
        if not self._unsettled or self.changes is None:
            return
        try:
            released = self.changes.settle()
        except Exception:  # noqa: BLE001 - tried again at the next window
            logger.exception("settling held rollback events failed")
            return
        self._unsettled = False
        for held in released:
            self.states.update({k: v for k, v in held.alerts.items() if v is not None})
            self.events_committed += 1

    def _event(self, rule: AlertRule, key: AlertKey, transition: Transition, verdict: Verdict,
               state: AlertState, window: ClosedWindow | None, now: float,
               reason: str | None = None) -> NewEvent:
        model, version, _ = key
        doc = alert_event(rule=rule, model=model, version=version, transition=transition,
                          verdict=verdict, state=state, window=window,
                          public_url=self.public_url, now=now, reason=reason)
        targets = tuple(t.name for t in self.targets if t.wants(doc["type"]))
        return NewEvent(doc["id"], doc["type"], doc["subject"], now, encode(doc), targets)

    def _commit(self, changes: dict[AlertKey, AlertState | None], events: list[NewEvent]) -> None:
        self.outbox.commit(changes, events)
        if events:
            self.events_committed += len(events)
            self.notify()

    # ------------------------------------------------------------------ reading

    def firing(self) -> list[tuple[str, str, str, bool]]:
        """(model, version, rule, firing) for every alert with a state or a verdict."""
        keys = set(self.states) | set(self.evaluations)
        return sorted((m, v, r, self.states.get((m, v, r), AlertState()).firing) for m, v, r in keys)

    def describe(self, model: str, version: str, now: float) -> list[dict]:
        """The rules watching this version, their state and latest verdict (drift JSON);
        `cooldown_until` is set while a breach cannot fire again yet."""
        out = []
        for rule in self.rules:
            if not rule.watches(model, version):
                continue
            key = (model, version, rule.name)
            state = self.states.get(key, AlertState())
            evaluation = self.evaluations.get(key)
            status = "firing" if state.firing else ("pending" if state.breaching else "ok")
            cooling = (state.last_fired_at is not None and not state.firing
                       and state.last_fired_at + rule.cooldown_s > now)
            out.append({
                "rule": rule.name, "when": rule.when.model_dump(exclude_none=True),
                "action": rule.action, "event_type": rule.event_type, "status": status,
                "for_windows": rule.for_windows, "resolve_windows": rule.resolve_windows,
                "cooldown_s": rule.cooldown_s, **state.to_dict(),
                "cooldown_until": (state.last_fired_at + rule.cooldown_s  # type: ignore[operator]
                                   if cooling else None),  # cooling: last_fired_at is set
                "latest": None if evaluation is None else
                {**evaluation.verdict.to_dict(), "at": evaluation.at},
            })
        return out
