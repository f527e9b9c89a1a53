"""The bearer-token check of gRPC calls: the `authorization` metadata, with the scopes and the
loopback rule of HTTP's BearerGuard (vigil.adapters.web.decide), and the caller's name for the
audit log."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from vigil.adapters.web import OPEN, decide
from vigil.core.hosts import is_loopback
from vigil.core.tokens import Decision, TokenVerifier


@dataclass(frozen=True)
class Admission:
    """A call let in or refused: the decision, and who made the call (for the audit log)."""

    decision: Decision
    actor: str


class GrpcGuard:
    """Checks each call against the scope its RPC needs, in the replica itself, as BearerGuard
    checks HTTP requests: tokens when there is a tokens file, else this host only; `auth` 'none'
    lets everything in."""

    def __init__(self, verifier: TokenVerifier, auth: str, local_hosts: frozenset[str],
                 on_reject: Callable[[int, str | None], None] | None = None) -> None:
        self.verifier = verifier
        self.auth = auth
        self.local_hosts = local_hosts
        self.on_reject = on_reject

    def admit(self, metadata: Mapping[str, str], peer: str, needed: str | None) -> Admission:
        """`metadata` with lower-case keys (as gRPC sends them); `peer` as grpc gives it
        ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000')."""
        host = peer_host(peer)
        if self.auth == "none" or needed == OPEN:
            return Admission(Decision(True), "anonymous")
        decision = decide(self.verifier, metadata.get("authorization"), needed,
                          lambda: host is not None and (is_loopback(host)
                                                        or host in self.local_hosts))
        if not decision.allowed and self.on_reject is not None:
            self.on_reject(decision.status, needed)
        actor = decision.token_name or f"local:{host or 'unknown'}"
        return Admission(decision, actor)


def peer_host(peer: str) -> str | None:
    """The address of a grpc peer string; None for one that is not an IP address (unix:...)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None
