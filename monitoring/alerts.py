"""The alert engine: applies the rules to closed windows and silences, keeps every alert's state,
and commits firings and resolutions as events to the outbox.

Runs on the monitor's window thread (it is not thread-safe). Only a change that matters survives
a restart: firing or not, since when, the last firing (for the cooldown) and event; the counts of
consecutive windows start again after a restart, as the windows themselves do. So a restart
neither fires an alert again nor forgets one that fires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from monitoring.alert_settings import AlertRule, WebhookTarget
from monitoring.events import alert_event, encode
from monitoring.outbox import AlertKey, NewEvent, Outbox
from monitoring.rules import AlertState, Transition, Verdict, advance, judge, judge_silence
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
                 notify: Callable[[], None] | None = None) -> None:
        self.outbox = outbox
        self.public_url = public_url
        self.notify = notify or (lambda: None)  # called after events were committed
        self.rules: list[AlertRule] = []
        self.targets: list[WebhookTarget] = []
        self.states: dict[AlertKey, AlertState] = outbox.load_alerts()
        self.evaluations: dict[AlertKey, Evaluation] = {}
        self.started_at = now
        self.last_request: dict[tuple[str, str], float] = {}
        self.events_committed = 0
        self._previous: list[AlertRule] = []  # the rules before the latest configure

    def configure(self, rules: list[AlertRule], targets: list[WebhookTarget],
                  versions: Iterable[tuple[str, str]], now: float) -> None:
        """New rules and targets. A firing alert whose rule is gone (or no longer watches its
        version) resolves, so that receivers close what they opened."""
        self.rules, self.targets = list(rules), list(targets)
        watched = {(m, v, r.name) for m, v in versions for r in rules if r.watches(m, v)}
        gone = [k for k in self.states if k not in watched]
        changes: dict[AlertKey, AlertState | None] = {}
        events = []
        for key in gone:
            state = self.states.pop(key)
            self.evaluations.pop(key, None)
            changes[key] = None
            old_rule = next((r for r in self._previous if r.name == key[2]), None)
            if state.firing and old_rule is not None:
                verdict = Verdict(False, "the rule was removed or no longer watches this version")
                events.append(self._event(old_rule, key, "resolve", verdict, state, None, now,
                                          reason="rule_removed"))
            elif state.firing:
                logger.warning("alert %s of %s/%s was firing; its rule is gone (resolved "
                               "silently: the rule is unknown since the monitor restarted)",
                               key[2], key[0], key[1])
        self._previous = list(rules)
        if changes or events:
            self._commit(changes, events)

    def request_seen(self, model: str, version: str, now: float) -> None:
        self.last_request[(model, version)] = now

    def on_window(self, model: str, version: str, window: ClosedWindow, now: float) -> None:
        """Judge every rule watching this version on its newly closed window."""
        rules = [r for r in self.rules if r.when.family != "traffic" and r.watches(model, version)]
        self._apply(model, version, [(r, judge(r, window)) for r in rules], window, now)

    def tick(self, versions: Iterable[tuple[str, str]], now: float) -> None:
        """Judge the silence rules (no request for N seconds) of every version."""
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
            after, transition = advance(rule, self.states.get(key, AlertState()), verdict, now)
            if transition is not None:
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
                "event_type": rule.when.event_type, "status": status,
                "for_windows": rule.for_windows, "resolve_windows": rule.resolve_windows,
                "cooldown_s": rule.cooldown_s, **state.to_dict(),
                "cooldown_until": (state.last_fired_at + rule.cooldown_s  # type: ignore[operator]
                                   if cooling else None),  # cooling: last_fired_at is set
                "latest": None if evaluation is None else
                {**evaluation.verdict.to_dict(), "at": evaluation.at},
            })
        return out
