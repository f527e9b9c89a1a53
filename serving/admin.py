"""The admin routes (scope `admin`): Triton's model repository extension and Vigil's alias
changes, each applied to the repository, audited, and answered once every replica serves it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.model_set import ModelSet
from vigil.core import audit, model_ops
from vigil.adapters.alias_board import board_key
from vigil.core.aliases import AliasError
from vigil.core.repository import RepositoryError, valid_name
from vigil.adapters.web import error_response, json_response, request_actor

MAX_ADMIN_BODY = 64 * 1024
# action in the URL -> (action when the body names a version, action when it names none)
_ALIAS_ROUTES = {
    "promote": ("promote", None),
    "rollback": (None, "rollback"),
    "canary": ("canary", "canary_cleared"),
    "shadow": ("shadow", "shadow_cleared"),
    "retire": ("retire", None),
    "load": (None, "load"),
    "unload": (None, "unload"),
}
_FIELDS = {"version", "weight", "sticky_header", "reason", "force", "parameters"}


class BadAdminRequest(Exception):
    """A body the admin routes cannot take (400)."""


class Admin:
    """Admin handlers bound to one replica's models, the board and the apply timeout."""

    def __init__(self, models: ModelSet, board: Any, apply_timeout_s: float) -> None:
        self.models = models
        self.board = board
        self.key = board_key(models.root)
        self.apply_timeout_s = apply_timeout_s
        self._serial = asyncio.Lock()  # one change at a time per replica: ordered audit lines

    def routes(self) -> list[Route]:
        return [
            Route("/v2/repository/index", self.index, methods=["POST"]),
            Route("/v2/repository/models/{model}/aliases", self.aliases, methods=["GET"]),
            Route("/v2/repository/models/{model}/history", self.history, methods=["GET"]),
            Route("/v2/repository/models/{model}/{action}", self.change, methods=["POST"]),
        ]

    async def index(self, request: Request) -> Response:
        """Triton's repository index: every published version, READY where this replica
        serves it, else UNAVAILABLE with the reason."""
        try:
            body = await _body(request)
        except BadAdminRequest as exc:
            return error_response(400, str(exc))
        ready_only = bool(body.get("ready", False))
        rows = []
        routes = self.models.router.models()
        for name, published in sorted(self.models.published.items()):
            model = routes.get(name)
            aliases = self.models.aliases(name)
            for version in published:
                loaded = model is not None and version in model.versions
                if ready_only and not loaded:
                    continue
                rows.append({
                    "name": name,
                    "version": version,
                    "state": "READY" if loaded else "UNAVAILABLE",
                    "reason": "" if loaded else self._why_not(name, version),
                    "aliases": aliases.roles(version, published),
                })
        return json_response(rows)

    def _why_not(self, name: str, version: str) -> str:
        aliases = self.models.aliases(name)
        if aliases.unloaded:
            return "model unloaded"
        if version in aliases.retired:
            return "retired"
        return self.models.failed.get((name, version), "not loaded yet")

    async def aliases(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.models.published:
            return error_response(404, f"model '{name}' is not in the repository")
        aliases = self.models.aliases(name)
        published = self.models.published[name]
        routes = self.models.router.models().get(name)
        return json_response({
            "model": name,
            "aliases": aliases.to_dict(),
            "published": published,
            "serving": list(routes.versions) if routes else [],
            "failed": {v: why for (m, v), why in self.models.failed.items() if m == name},
        })

    async def history(self, request: Request) -> Response:
        name = request.path_params["model"]
        if not valid_name(name):
            return error_response(400, f"invalid model name {name!r}")
        entries = await asyncio.to_thread(lambda: list(audit.entries(self.models.root, name)))
        return json_response({"model": name, "entries": entries})

    async def change(self, request: Request) -> Response:
        name, action = request.path_params["model"], request.path_params["action"]
        if action not in _ALIAS_ROUTES:
            return error_response(404, f"no route {request.url.path}")
        if not valid_name(name):
            return error_response(400, f"invalid model name {name!r}")
        try:
            body = await _body(request)
            with_version, without = _ALIAS_ROUTES[action]
            version = _opt_str(body, "version")
            chosen = with_version if version is not None else without
            if chosen is None:
                raise BadAdminRequest(f"{action} needs a 'version'" if with_version
                                      else f"{action} takes no 'version'")
            weight = body.get("weight")
            if weight is not None and (isinstance(weight, bool)
                                       or not isinstance(weight, int | float)):
                raise BadAdminRequest("'weight' must be a number")
            reason = _opt_str(body, "reason") or ""
            sticky = _opt_str(body, "sticky_header")
            force = body.get("force", False)
            if not isinstance(force, bool):
                raise BadAdminRequest("'force' must be true or false")
        except BadAdminRequest as exc:
            return error_response(400, str(exc))
        async with self._serial:
            try:
                published = await asyncio.to_thread(
                    model_ops.published_versions, self.models.root, name)
                if chosen in ("promote", "canary", "shadow") and version in published:
                    # A version that cannot load here is refused before any alias moves.
                    await asyncio.to_thread(self.models.check_loadable, name, str(version))
            except AliasError as exc:
                return error_response(exc.status, str(exc))
            except RepositoryError as exc:
                return error_response(409, f"{name}/{version} cannot be served: {exc}")
            try:
                change = await asyncio.to_thread(
                    model_ops.apply, self.models.root, name, chosen,
                    actor=request_actor(request.scope), reason=reason, version=version,
                    weight=None if weight is None else float(weight), sticky_header=sticky,
                    force=force,
                )
            except AliasError as exc:
                return error_response(exc.status, str(exc))
            spread = await self.spread()
        return json_response({**change.to_dict(), **spread})

    async def spread(self) -> dict[str, Any]:
        """Tell every replica and wait until all serve the change (or apply_timeout_s passes)."""
        started = time.perf_counter()
        generation = await self.board.bump.remote(self.key)
        applied = await self.board.wait_applied.remote(self.key, generation, self.apply_timeout_s)
        return {
            "converged": not applied["behind"],
            "replicas": applied["replicas"],
            "behind": applied["behind"],
            "applied_s": round(time.perf_counter() - started, 4),
        }


async def _body(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_ADMIN_BODY:
            raise BadAdminRequest(f"admin request bodies are at most {MAX_ADMIN_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadAdminRequest(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadAdminRequest("body must be a JSON object")
    unknown = set(doc) - _FIELDS - {"ready"}
    if unknown:
        raise BadAdminRequest(f"unknown fields {sorted(unknown)}; known: {sorted(_FIELDS)}")
    return doc


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and key == "version":
        return str(value)
    if not isinstance(value, str):
        raise BadAdminRequest(f"'{key}' must be a string")
    return value
