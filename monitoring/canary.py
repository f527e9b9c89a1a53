"""Automatic canary rollback: which version is each model's canary, and clearing it when a
rollback rule fires for it.

The canary is read from the repository's aliases (vigil.core.aliases), at most once per
``ALIASES_TTL_S`` per model while windows close, and once more, fresh, right before a rollback,
so a canary an operator cleared or replaced meanwhile is never the one cleared. The change, and
the event that announces it, are written by monitoring.changes like every decision of the
monitor's, with the monitor as its actor (a canary under a progressive rollout is rolled back by
its rollout instead: monitoring.alerts). Runs on the monitor's window thread.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from monitoring.alert_settings import AlertRule
from monitoring.changes import Announcement, ChangeWriter
from monitoring.rules import Crossed, Verdict
from monitoring.window import ClosedWindow
from vigil.core import model_ops
from vigil.core.actions import AliasAction
from vigil.core.aliases import AliasError, read_aliases

logger = logging.getLogger("vigil.alerts")
ALIASES_TTL_S = 1.0  # longest time a model's canary is taken from the cache
ACTOR = "vigil-monitor"
MAX_REASON_CHARS = model_ops.MAX_REASON_CHARS
MAX_FIGURES = 5  # crossed statistics a reason names


@dataclass(frozen=True)
class RolledBack:
    """One automatic rollback that happened: the canary cleared, and why."""

    model: str
    version: str  # the canary that was cleared
    production: str | None  # the version that takes all the traffic now
    generation: int  # the aliases' generation after the change
    reason: str  # one sentence, as in the audit log
    details: dict[str, Any]  # the figures, as in the audit log
    event_id: str  # of the event that announces it (in the audit entry's details too)
    released: bool = True  # False: its event waits held (settled later)


# The announcing event of a rollback about to be written (called under the model's lock).
Announce = Callable[[RolledBack], Announcement]


class CanaryGuard:
    """The canaries of one repository's models, and their rollback."""

    def __init__(self, changes: ChangeWriter, ttl_s: float = ALIASES_TTL_S) -> None:
        self.changes = changes
        self.repository = changes.repository
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, str | None]] = {}  # model -> (read at, canary)

    def canary(self, model: str, now: float) -> str | None:
        """The model's canary version (None: none), read at most once per ttl_s."""
        cached = self._cache.get(model)
        if cached is not None and 0.0 <= now - cached[0] < self.ttl_s:
            return cached[1]
        return self._read(model, now)

    def _read(self, model: str, now: float) -> str | None:
        try:
            state = read_aliases(self.repository, model)
            version = state.canary.version if state.canary is not None else None
        except (AliasError, OSError) as exc:
            logger.error("cannot read the aliases of %s (no canary judged): %s", model, exc)
            version = None
        self._cache[model] = (now, version)
        return version

    def roll_back(self, rule: AlertRule, model: str, version: str, verdict: Verdict,
                  window: ClosedWindow | None, now: float,
                  announce: Announce | None = None) -> RolledBack | None:
        """Clear the canary `version` of `model` because `rule` fired on it; None when it did
        not happen (the canary is gone or another version now, or the change failed: logged).
        `announce` gives the event written with the change (monitoring.changes)."""
        if self._read(model, now) != version:
            logger.info("rule %s fired for %s/%s, no longer the canary: nothing to roll back",
                        rule.name, model, version)
            return None
        reason = rollback_reason(rule, model, version, verdict, window)
        event_id = str(uuid.uuid4())
        details = {**rollback_details(rule, verdict, window), "event_id": event_id}
        done: list[RolledBack] = []

        def announcements(change: model_ops.Change) -> list[Announcement]:
            rolled = RolledBack(model, version, change.after.production_of(published),
                                change.after.generation, reason, details, event_id)
            done.append(rolled)
            return [] if announce is None else [announce(rolled)]

        try:
            published = model_ops.published_versions(self.repository, model)
            written = self.changes.write(
                model, AliasAction.CANARY_CLEARED, actor=f"{ACTOR} (rule {rule.name})",
                reason=reason, version=version, details=details, announce=announcements)
        except AliasError as exc:  # cleared or replaced between the read and the change
            logger.warning("rule %s fired for canary %s/%s, not rolled back: %s",
                           rule.name, model, version, exc)
            self._read(model, now)
            return None
        except Exception:  # noqa: BLE001 - the window thread goes on; the next breach retries
            logger.exception("rule %s fired for canary %s/%s: the rollback failed",
                             rule.name, model, version)
            return None
        self._cache[model] = (now, None)
        logger.warning("canary %s/%s rolled back: %s", model, version, reason)
        return dataclasses.replace(done[0], released=written.released)


def rollback_reason(rule: AlertRule, model: str, version: str, verdict: Verdict,
                    window: ClosedWindow | None) -> str:
    """One sentence: which rule and condition, the observed figures against the thresholds, in
    which window."""
    figures = "; ".join(_figure(c) for c in verdict.crossed[:MAX_FIGURES]) or verdict.detail
    if len(verdict.crossed) > MAX_FIGURES:
        figures += f"; {len(verdict.crossed) - MAX_FIGURES} more"
    where = (f"window {window.index} ({window.requests} requests, {window.rows} sampled rows)"
             if window is not None else "the latest verdict")
    run = f", {rule.for_windows} breaching windows in a row" if rule.for_windows > 1 else ""
    sentence = (f"rule {rule.name} ({rule.when.kind} {_threshold(rule)}) fired for canary "
                f"{model}/{version}: {figures} in {where}{run}; canary cleared automatically")
    if len(sentence) > MAX_REASON_CHARS:
        sentence = sentence[: MAX_REASON_CHARS - 3] + "..."
    return sentence


def rollback_details(rule: AlertRule, verdict: Verdict,
                     window: ClosedWindow | None) -> dict[str, Any]:
    """The figures behind a rollback (audit log details, event data)."""
    doc: dict[str, Any] = {
        "rule": rule.name,
        "condition": rule.when.model_dump(exclude_none=True),
        "verdict": verdict.detail,
        "crossed": [dataclasses.asdict(c) for c in verdict.crossed],
        "window": None if window is None else window.summary(),
    }
    return doc


def _figure(c: Crossed) -> str:
    of = f" of {c.column}" if c.column else ""
    method = f" ({c.method})" if c.method else ""
    return f"{c.statistic}{of} {c.value:.4g}{method} against threshold {c.threshold:.4g}"


def _threshold(rule: AlertRule) -> str:
    value = rule.when.value
    if isinstance(value, bool):
        return "true"
    if isinstance(value, list):
        return ", ".join(value)
    return f"{value:g}"
