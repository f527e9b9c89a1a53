"""What one inference request came to (HTTP or gRPC): the versions it holds while it runs, its
inputs and outputs for the monitor's sample, and its status with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from serving.protocol import Reason
from serving.router import Route as ModelRoute
from serving.served import ServedModel


@dataclass(slots=True)
class Outcome:
    """What one inference request came to, filled in as it goes and accounted once: the version
    that answers (held from routing to accounting, so that it is not closed under the request)
    and the shadow that gets a copy, the request's inputs and outputs for the monitor's sample,
    and its status with the reason."""

    started: float
    protocol: str
    served: ServedModel | None = None
    shadow: ServedModel | None = None
    production: ServedModel | None = None  # when the canary answered (not held)
    inputs: dict | None = None
    results: dict | None = None
    request_id: str | None = None  # set when the answer is recorded for labels (feedback on)
    rows: int = 0
    status: int = 0  # 0 until the request ends: answered, refused or cancelled
    reason: Reason = Reason.OK

    def hold(self, route: ModelRoute[ServedModel]) -> None:
        self.served, self.shadow, self.production = route.target, route.shadow, route.production
        route.target.users += 1
        route.target.last_active = self.started
        if route.shadow is not None:
            route.shadow.users += 1

    def end(self, status: int, reason: Reason) -> None:
        self.status, self.reason = status, reason

    def let_go(self) -> None:
        """Release the holds: the versions may be closed once nothing else holds them."""
        if self.served is not None:
            self.served.users -= 1
        if self.shadow is not None:
            self.shadow.users -= 1
            self.shadow = None
