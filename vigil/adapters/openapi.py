"""The OpenAPI 3.1 document of Vigil's HTTP routes, built from the routes an app declares.

Paths and methods come from the Starlette routes themselves (Mounts walked), the scope each needs
from the app's ScopeRule (the one its BearerGuard applies); what each route takes and answers
from vigil.core.http_api. A declared route without an entry there raises UndocumentedRoute, so
a route cannot be added without its description. The monitor's routes live in another app: they
come from http_api.MONITOR_ROUTES, which a unit test holds equal to the monitor's app.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from vigil.adapters.web import JSON, OPEN, ScopeRule
from vigil.core import http_api

_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


class UndocumentedRoute(LookupError):
    """A route that vigil.core.http_api does not describe (or describes without a route)."""


def declared(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(METHOD, path) of every route, Mounts walked; HEAD, which Starlette adds to every GET,
    left out."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, prefix + route.path
        elif isinstance(route, Mount):
            yield from declared(route.routes, prefix + route.path)


def _sample_path(path: str) -> str:
    """The path with each parameter filled, as a request would give it to a ScopeRule."""
    return _PARAM.sub("x", path)


def document(routes: Sequence[tuple[str, str, str | None]], version: str) -> dict[str, Any]:
    """The document of (METHOD, path, scope) routes; scope "" is open, None any valid token."""
    paths: dict[str, dict[str, Any]] = {}
    for method, path, scope in sorted(routes, key=lambda r: (r[1], r[0])):
        try:
            described = http_api.OPERATIONS[(method, path)]
        except KeyError:
            raise UndocumentedRoute(f"{method} {path} is not described in "
                                    "vigil.core.http_api.OPERATIONS") from None
        operation = dict(described)
        own = operation.pop("path_parameters", {})
        names = _PARAM.findall(path)
        operation["operationId"] = _operation_id(method, path)
        operation["parameters"] = [
            {"name": n, "in": "path", "required": True,
             "schema": own.get(n, http_api.PATH_PARAMETERS[n])}
            for n in names] + list(described.get("parameters", []))
        responses = dict(described["responses"])
        if scope == OPEN:
            operation["security"] = []
        else:
            operation["security"] = [{"bearer": [] if scope is None else [scope]}]
            operation["x-vigil-scope"] = scope
            responses.update({str(s): {"description": d, "content": {JSON: {
                "schema": {"$ref": "#/components/schemas/Error"}}}} for s, d in (
                    (401, "No token, or not a valid one (WWW-Authenticate: Bearer)."),
                    (403, "A valid token without the scope this route needs."))})
        operation["responses"] = responses
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Vigil",
            "version": version,
            "description": "Open Inference Protocol (KServe V2) with the binary tensor data "
                           "extension, Vigil's repository and admin routes, feedback, and the "
                           f"monitor (at {http_api.MONITOR_PREFIX}). Each route needs a bearer "
                           "token with the scope in its security requirement (x-vigil-scope); "
                           "routes with none are open. Errors are {\"error\": \"...\"}.",
        },
        "paths": paths,
        "components": {
            "schemas": http_api.SCHEMAS,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `vigil tokens create NAME --scopes ...`; scopes: "
                               + "; ".join(f"{k}: {v}" for k, v in http_api.SCOPES.items())}},
        },
    }


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", _PARAM.sub(r"by_\1", path)) if w]
    return "_".join([method.lower(), *words])


def app_routes(routes: Iterable[BaseRoute], scope_for: ScopeRule,
               prefix: str = "") -> list[tuple[str, str, str | None]]:
    """An app's routes as (METHOD, path, scope), the scope from its ScopeRule."""
    return [(m, p, scope_for(_sample_path(p[len(prefix):] or "/")))
            for m, p in declared(routes, prefix)]


def monitor_routes() -> list[tuple[str, str, str | None]]:
    return [(m, p, s) for (m, p), s in http_api.MONITOR_ROUTES.items()]


def with_document(routes: Sequence[BaseRoute], scope_for: ScopeRule,
                  version: str) -> list[BaseRoute]:
    """`routes` plus GET /v2/openapi.json answering the document of them all and of the
    monitor's routes (raises UndocumentedRoute for a route without a description)."""

    async def openapi(request: Request) -> Response:
        return Response(body, media_type=JSON)

    every = [*routes, Route(http_api.OPENAPI_PATH, openapi, methods=["GET"])]
    body = orjson.dumps(document(app_routes(every, scope_for) + monitor_routes(), version))
    return every
