"""Who a request comes from, and the per-client cap on inference requests in flight on a replica,
so that one client cannot hold every slot."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ANONYMOUS = "anonymous"
LOCAL_PREFIX = "local:"  # an actor the token guard let in without a token (its own host)


class ClientCap:
    """Counts each client's inference requests in flight and refuses one past `limit`. A
    client is its bearer token's name when it sent one; otherwise its address: the peer's, or
    the last X-Forwarded-For entry when the peer is a trusted proxy."""

    def __init__(self, limit: int, trusted_proxies: Iterable[str] = ()) -> None:
        self.limit = limit
        self.trusted = frozenset(trusted_proxies)
        self._in_flight: dict[str, int] = {}

    def identify(self, scope: Any, actor: str) -> str:
        """The client of an HTTP request (its ASGI scope) whose token guard recorded `actor` (a
        token's name, 'local:<address>' or 'anonymous')."""
        client = scope.get("client")
        return self.name(actor, client[0] if client else "unknown",
                         lambda: _forwarded_header(scope))

    def name(self, actor: str, peer: str, forwarded: Callable[[], str | None]) -> str:
        """The client of a request from `peer` (an address) that `actor` made; `forwarded`
        gives its X-Forwarded-For header, read only when the peer is a trusted proxy."""
        if actor != ANONYMOUS and not actor.startswith(LOCAL_PREFIX):
            return "token:" + actor
        if peer in self.trusted:
            header = forwarded()
            last = header.rsplit(",", 1)[-1].strip() if header else ""
            if last:  # the address the nearest proxy saw; earlier entries are the client's claims
                return "addr:" + last
        return "addr:" + peer

    def admit(self, client: str) -> bool:
        """Count one more request of `client` in flight; False (nothing counted) at the cap."""
        held = self._in_flight.get(client, 0)
        if held >= self.limit:
            return False
        self._in_flight[client] = held + 1
        return True

    def leave(self, client: str) -> None:
        """One request of `client` admitted before has ended."""
        held = self._in_flight[client] - 1
        if held:
            self._in_flight[client] = held
        else:
            del self._in_flight[client]

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)


def _forwarded_header(scope: Any) -> str | None:
    """The last X-Forwarded-For header of an ASGI scope (the nearest proxy's)."""
    found = None
    for key, value in scope["headers"]:
        if key.lower() == b"x-forwarded-for":
            found = value
    return None if found is None else found.decode("latin-1")
