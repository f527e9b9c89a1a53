"""How a Serve application boots: its args checked where the application is built, and its door:
the tokens file, the refusal to start open beyond its own host, the bearer-token guard and the
Starlette app with its error handlers registered once."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from vigil.adapters.grpc_door import GrpcGuard
from vigil.adapters.web import (
    BearerGuard,
    ScopeRule,
    http_error,
    node_addresses,
    open_access_check,
    serve_http_host,
)
from vigil.core.settings import AppSettings
from vigil.core.tokens import TokenVerifier

S = TypeVar("S", bound=AppSettings)
ExceptionHandler = Callable[..., Any]


def bound_args(settings_type: type[S], args: Mapping[str, Any] | None) -> dict[str, Any]:
    """An application's `args` validated (unknown keys rejected) with a relative
    model_repository resolved here, in the process that builds the app: what its deployment is
    bound with."""
    return settings_type(**dict(args or {})).resolved().model_dump(mode="json")


@dataclass(frozen=True)
class Door:
    """Who may come in: the tokens file in force and the auth mode."""

    verifier: TokenVerifier
    auth: str

    @classmethod
    def open(cls, settings: AppSettings,
             http_host: Callable[[], str] = serve_http_host) -> Door:
        """The door of a replica with these settings; raises AuthConfigError (the replica must
        not start) when it would be open beyond its own host, or when that cannot be known."""
        verifier = TokenVerifier(settings.tokens_path())
        open_access_check(settings.auth, verifier, http_host)
        return cls(verifier, settings.auth)

    def guard(self, scope_for: ScopeRule,
              on_reject: Callable[[int, str | None], None] | None = None) -> Middleware:
        """The bearer-token middleware, which runs in the replica itself."""
        return Middleware(BearerGuard, verifier=self.verifier, scope_for=scope_for,
                          auth=self.auth, local_hosts=node_addresses(), on_reject=on_reject)

    def grpc_guard(self, on_reject: Callable[[int, str | None], None] | None = None
                   ) -> GrpcGuard:
        """The same check for gRPC calls, which Starlette's middleware never sees."""
        return GrpcGuard(self.verifier, self.auth, node_addresses(), on_reject)


def web_app(routes: Sequence[BaseRoute], middleware: Sequence[Middleware],
            handlers: Mapping[Any, ExceptionHandler] | None = None) -> Starlette:
    """A Starlette app whose errors all answer {"error"}: Starlette's own 404 and 405, and the
    application's exceptions through `handlers` (exception class -> handler), registered once
    here rather than caught in each route."""
    return Starlette(routes=list(routes), middleware=list(middleware),
                     exception_handlers={HTTPException: http_error, **(handlers or {})})
