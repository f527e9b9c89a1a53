"""The alias actions, named once: each change of a model's aliases with what it takes (a version,
a weight, a reason), the admin route it is sent to, and whether it sends live traffic to a
version (and so needs the model gate's verdict).

Every door uses this table: vigil.core.model_ops applies the action, vigil.core.audit accepts
its name, serving.admin maps the route and body onto it, and the CLI's client
(vigil.tools.model_client) builds the route and body from it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VersionUse(enum.Enum):
    """What an action does with a version named in its request."""

    REQUIRED = "required"  # the version the change is about (promote 2)
    GUARD = "guard"  # optional: the change applies only while that version holds the alias
    NONE = "none"  # takes no version


@dataclass(frozen=True)
class ActionSpec:
    route: str | None  # POST /v2/repository/models/{model}/{route}; None: the monitor's own
    version: VersionUse
    weight: bool  # takes a canary weight (and a sticky header)
    live_traffic: bool  # sends live traffic to the version: needs a passed gate verdict
    reason: bool  # the request carries a reason for the audit log
    plan: bool = False  # takes a rollout plan (vigil.core.rollout)


class AliasAction(enum.StrEnum):
    """A change of a model's aliases; its value is the name the audit log records."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CANARY = "canary"
    CANARY_CLEARED = "canary_cleared"
    SHADOW = "shadow"
    SHADOW_CLEARED = "shadow_cleared"
    RETIRE = "retire"
    LOAD = "load"
    UNLOAD = "unload"
    # A progressive rollout: started, paused, resumed and aborted by an operator; its steps
    # (a judged window recorded, a step advanced, halted, promoted, rolled back) by the monitor.
    ROLLOUT = "rollout"
    ROLLOUT_PAUSED = "rollout_paused"
    ROLLOUT_RESUMED = "rollout_resumed"
    ROLLOUT_ABORTED = "rollout_aborted"
    ROLLOUT_HELD = "rollout_held"
    ROLLOUT_ADVANCED = "rollout_advanced"
    ROLLOUT_HALTED = "rollout_halted"
    ROLLOUT_PROMOTED = "rollout_promoted"
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back"

    @property
    def spec(self) -> ActionSpec:
        return _SPECS[self]

    @classmethod
    def for_route(cls, route: str, has_version: bool) -> AliasAction:
        """The action an admin route means: the route's action that requires a version when the
        body names one, else the one that does not. Raises KeyError for an unknown route and
        ValueError (with the reason) for a version the route cannot take or lacks."""
        actions = [a for a in cls if a.spec.route == route]
        if not actions:
            raise KeyError(route)
        needs = [a for a in actions if a.spec.version is VersionUse.REQUIRED]
        guards = [a for a in actions if a.spec.version is VersionUse.GUARD]
        rest = [a for a in actions if a.spec.version is not VersionUse.REQUIRED]
        chosen = (needs or guards) if has_version else rest
        if not chosen:
            raise ValueError(f"{route} needs a 'version'" if needs else f"{route} takes no 'version'")
        return chosen[0]


_R, _G, _N = VersionUse.REQUIRED, VersionUse.GUARD, VersionUse.NONE
_SPECS: dict[AliasAction, ActionSpec] = {
    AliasAction.PROMOTE: ActionSpec("promote", _R, weight=False, live_traffic=True, reason=True),
    AliasAction.ROLLBACK: ActionSpec("rollback", _N, weight=False, live_traffic=False, reason=True),
    AliasAction.CANARY: ActionSpec("canary", _R, weight=True, live_traffic=True, reason=True),
    AliasAction.CANARY_CLEARED: ActionSpec("canary", _G, weight=False, live_traffic=False,
                                           reason=True),
    AliasAction.SHADOW: ActionSpec("shadow", _R, weight=False, live_traffic=False, reason=True),
    AliasAction.SHADOW_CLEARED: ActionSpec("shadow", _N, weight=False, live_traffic=False,
                                           reason=True),
    AliasAction.RETIRE: ActionSpec("retire", _R, weight=False, live_traffic=False, reason=True),
    AliasAction.LOAD: ActionSpec("load", _N, weight=False, live_traffic=False, reason=False),
    AliasAction.UNLOAD: ActionSpec("unload", _N, weight=False, live_traffic=False, reason=False),
    AliasAction.ROLLOUT: ActionSpec("rollout", _R, weight=False, live_traffic=True, reason=True,
                                    plan=True),
    AliasAction.ROLLOUT_PAUSED: ActionSpec("rollout-pause", _G, weight=False, live_traffic=False,
                                           reason=True),
    AliasAction.ROLLOUT_RESUMED: ActionSpec("rollout-resume", _G, weight=False,
                                            live_traffic=False, reason=True),
    AliasAction.ROLLOUT_ABORTED: ActionSpec("rollout-abort", _G, weight=False,
                                            live_traffic=False, reason=True),
    **{action: ActionSpec(None, _R, weight=False, live_traffic=False, reason=True)
       for action in (AliasAction.ROLLOUT_HELD, AliasAction.ROLLOUT_ADVANCED,
                      AliasAction.ROLLOUT_HALTED, AliasAction.ROLLOUT_PROMOTED,
                      AliasAction.ROLLOUT_ROLLED_BACK)},
}
# Manual changes that end a running rollout (the audit entry says so).
ENDS_ROLLOUT = frozenset({AliasAction.PROMOTE, AliasAction.ROLLBACK, AliasAction.CANARY,
                          AliasAction.CANARY_CLEARED})
# What else the audit log records besides alias changes.
OTHER_AUDITED = ("publish", "validate")
AUDITED = frozenset({*(a.value for a in AliasAction), *OTHER_AUDITED})
ROUTES = frozenset(spec.route for spec in _SPECS.values() if spec.route is not None)
