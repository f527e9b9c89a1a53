"""The web edge both Serve apps share: JSON and error responses, and the bearer-token guard.

Both apps answer errors as ``{"error": "..."}``. The guard is plain ASGI middleware in front of
an app's routes, so it runs in the replica itself: the replica ports that HAProxy leaves open on
every interface are covered as well as the front door.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from vigil.core.hosts import is_loopback
from vigil.core.tokens import Decision, TokenVerifier

logger = logging.getLogger("vigil.adapters.web")

JSON = "application/json"
ScopeRule = Callable[[str], str | None]  # path inside the app -> scope it needs; "" when open
OPEN = ""  # what a ScopeRule returns for a route anyone may call (health probes)
ACTOR_KEY = "vigil_actor"  # request.state entry naming who made the request


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status_code=status, media_type=JSON, headers=headers)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 as {"error"} bodies."""
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}
    return error_response(exc.status_code, message.get(exc.status_code, str(exc.detail)))


class AuthConfigError(RuntimeError):
    """The replica must not start with this auth configuration; the message says what to do."""


_FIX = ("create one with `vigil tokens create NAME --scopes infer`, point VIGIL_TOKENS_FILE or the "
        "app's tokens_file at it, or set `auth: none` in the app's args to serve openly")


def open_access_check(auth: str, verifier: TokenVerifier, http_host: Callable[[], str]) -> None:
    """Refuse to start a server without a tokens file (and without an explicit `auth: none`)
    unless it is sure to listen on loopback: `http_host()` names the host Serve binds, and any
    doubt (a host that is not loopback, or no answer) refuses. With `auth: none`, warn."""
    if auth == "none":
        logger.warning("auth: none -- every route is open to anyone who can reach this server")
        return
    if verifier.enabled:
        return
    try:
        host = http_host()
    except Exception as exc:  # noqa: BLE001 - whatever the reason, doubt refuses
        raise AuthConfigError(
            f"there is no tokens file ({verifier.path}) and where this server listens is unknown "
            f"({type(exc).__name__}: {exc}), so it may be reachable from other hosts: {_FIX}"
        ) from exc
    if not is_loopback(host):
        raise AuthConfigError(
            f"HTTP host {host!r} is not loopback and there is no tokens file ({verifier.path}): "
            f"{_FIX}"
        )


def serve_http_host() -> str:
    """The host Ray Serve's HTTP ingress binds (http_options.host), asked of Serve's controller.
    Raises when the controller cannot be asked or does not answer within 30 s."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    config: Any = ray.get(controller.get_http_config.remote(), timeout=30)
    return str(config.host)


def node_addresses() -> frozenset[str]:
    """This node's address as Ray knows it (HAProxy on this node connects from it); empty
    outside Ray, where loopback alone is local."""
    from ray.util import get_node_ip_address

    try:
        return frozenset({get_node_ip_address()})
    except Exception:  # noqa: BLE001 - not in a Ray process
        return frozenset()


class BearerGuard:
    """ASGI middleware: each HTTP request needs a token with the scope its path requires.

    Without a tokens file (and auth not 'none'), the server is open only to its own host: a
    request from another address is refused, so a replica port reachable from the network does
    not serve strangers. With `auth` 'none', nothing is checked. 401 answers carry
    `WWW-Authenticate: Bearer`; tokens are never logged or echoed."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: TokenVerifier,
        scope_for: ScopeRule,
        auth: str = "tokens",
        local_hosts: frozenset[str] = frozenset(),
        on_reject: Callable[[int, str | None], None] | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.scope_for = scope_for
        self.auth = auth
        self.local_hosts = local_hosts  # this node's own addresses (HAProxy connects from them)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.auth == "none":
            await self.app(scope, receive, send)
            return
        needed = self.scope_for(route_path(scope))
        if needed == OPEN:
            await self.app(scope, receive, send)
            return
        decision = decide(self.verifier, _header(scope, b"authorization"), needed,
                          lambda: self._local(scope))
        if decision.allowed:
            # Who asked, for the audit log: the token's name, else the local client's address.
            scope.setdefault("state", {})[ACTOR_KEY] = actor_name(decision, scope)
            await self.app(scope, receive, send)
            return
        if self.on_reject is not None:
            self.on_reject(decision.status, needed)
        headers = {}
        if decision.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="vigil"'
        elif decision.token_name is not None:  # a valid token without the scope (RFC 6750)
            headers["WWW-Authenticate"] = (
                f'Bearer realm="vigil", error="insufficient_scope", scope="{needed}"'
            )
        await error_response(decision.status, decision.message, headers)(scope, receive, send)

    def _local(self, scope: Scope) -> bool:
        client = scope.get("client")
        host = client[0] if client else None
        return host is not None and (is_loopback(host) or host in self.local_hosts)


def decide(verifier: TokenVerifier, authorization: str | None, needed: str | None,
           local: Callable[[], bool]) -> Decision:
    """Whether a request that needs scope `needed` may come in (HTTP and gRPC alike): by its
    token when there is a tokens file, else only from this server's own host (`local()`)."""
    if verifier.enabled:
        return verifier.check(authorization, needed)
    if local():
        return Decision(True)
    return Decision(
        False, 403, "this server has no tokens file and serves only its own host; "
        "ask its operator for a token",
    )


def route_path(scope: Scope) -> str:
    """The request's path as the app's routes see it: inside the app's prefix (root_path),
    stripped as Starlette strips it."""
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def actor_name(decision: Decision, scope: Scope) -> str:
    """The name changes are recorded under: the token's, or `local:<address>` for a caller the
    server lets in without a token (its own host)."""
    if decision.token_name is not None:
        return decision.token_name
    client = scope.get("client")
    return f"local:{client[0] if client else 'unknown'}"


def request_actor(scope: Scope) -> str:
    """The actor BearerGuard recorded for this request ('anonymous' when auth is off)."""
    return str(scope.get("state", {}).get(ACTOR_KEY, "anonymous"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None

