"""Automatic canary rollback: which version is each model's canary, and clearing it when a
rollback rule fires for it.

The canary is read from the repository's aliases (vigil.core.aliases), at most once per
``ALIASES_TTL_S`` per model while windows close, and once more, fresh, right before a rollback,
so a canary an operator cleared or replaced meanwhile is never the one cleared. The change goes
through vigil.core.model_ops like every other (aliases and audit log), with the monitor as its actor;
then ``on_rollback(model)`` tells the serving replicas (the Monitor deployment passes a callback
that bumps the alias board; this module knows no Ray). Runs on the monitor's window thread.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitoring.alert_settings import AlertRule
from monitoring.rules import Crossed, Verdict
from monitoring.window import ClosedWindow
from vigil.core import model_ops
from vigil.core.aliases import AliasError, read_aliases

logger = logging.getLogger("vigil.alerts")
ALIASES_TTL_S = 1.0  # longest time a model's canary is taken from the cache
ACTOR = "vigil-monitor"
MAX_REASON_CHARS = 2000  # what vigil.core.model_ops accepts
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


class CanaryGuard:
    """The canaries of one repository's models, and their rollback."""

    def __init__(self, repository: Path, on_rollback: Callable[[str], None] | None = None,
                 ttl_s: float = ALIASES_TTL_S) -> None:
        self.repository = Path(repository)
        self.on_rollback = on_rollback if on_rollback is not None else (lambda model: None)
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
                  window: ClosedWindow | None, now: float) -> RolledBack | None:
        """Clear the canary `version` of `model` because `rule` fired on it; None when it did
        not happen (the canary is gone or another version now, or the change failed: logged)."""
        if self._read(model, now) != version:
            logger.info("rule %s fired for %s/%s, no longer the canary: nothing to roll back",
                        rule.name, model, version)
            return None
        reason = rollback_reason(rule, model, version, verdict, window)
        details = rollback_details(rule, verdict, window)
        try:
            change = model_ops.apply(
                self.repository, model, "canary_cleared", actor=f"{ACTOR} (rule {rule.name})",
                reason=reason, version=version, details=details,
            )
        except AliasError as exc:  # cleared or replaced between the read and the change
            logger.warning("rule %s fired for canary %s/%s, not rolled back: %s",
                           rule.name, model, version, exc)
            self._read(model, now)
            return None
        except Exception:  # noqa: BLE001 - the window thread goes on; the next breach retries
            logger.exception("rule %s fired for canary %s/%s: the rollback failed",
                             rule.name, model, version)
            return None
        after = change.after
        self._cache[model] = (now, after.canary.version if after.canary else None)
        try:
            production = after.production_of(model_ops.published_versions(self.repository, model))
        except AliasError:
            production = after.production
        logger.warning("canary %s/%s rolled back: %s", model, version, reason)
        try:
            self.on_rollback(model)
        except Exception:  # noqa: BLE001 - replicas also re-read the aliases on their own
            logger.exception("telling the replicas that %s's canary was cleared failed", model)
        return RolledBack(model, version, production, after.generation, reason, details)


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
        "window": None,
    }
    if window is not None:
        doc["window"] = {
            "index": window.index, "opened_at": window.opened_at, "closed_at": window.closed_at,
            "rows": window.rows, "requests": window.requests,
            "error_ratio": window.latency.error_ratio, "latency_p99_s": window.latency.p99,
            "shadow_agreement": window.shadow_agreement,
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
