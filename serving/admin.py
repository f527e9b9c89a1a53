"""The admin routes (scope `admin`): Triton's model repository extension and Vigil's alias
changes, each applied to the repository with its audit line in one step, and answered once every
replica serves it.

The routes form one sub-application under /v2/repository whose errors are answered by exception
handlers registered once (`HANDLERS`): a refused change with its status, a bad body 400 (413
when larger than MAX_ADMIN_BODY), the alias board down or a change that could not be written 503
(saying whether the change was made), and anything else a JSON 500 (a bug).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from serving.model_set import ModelSet
from vigil.adapters.alias_board import BoardLink, BoardUnavailable, board_key
from vigil.adapters.boot import web_app
from vigil.adapters.web import error_response, json_response, request_actor
from vigil.core import audit, model_ops, rollout
from vigil.core.actions import AliasAction
from vigil.core.audit import HISTORY_LIMIT, MAX_HISTORY_LIMIT
from vigil.core.aliases import AliasError, AliasFileError
from vigil.core.model_ops import ChangeFailed, ChangeRequest
from vigil.core.repository import RepositoryError, valid_name
from vigil.core.repository_health import FaultKind, broken_aliases
from vigil.core.rollout import PlanRefused

logger = logging.getLogger("vigil.admin")
MAX_ADMIN_BODY = 64 * 1024
PREFIX = "/v2/repository"
_LIMIT = re.compile(r"[0-9]{1,7}")  # a history limit as a query gives it
_FIELDS = {"version", "weight", "sticky_header", "reason", "force", "parameters", "plan"}


class BadAdminRequest(Exception):
    """A request the admin routes cannot take (400)."""

    status = 400


class AdminBodyTooLarge(BadAdminRequest):
    """An admin body past MAX_ADMIN_BODY (413, as every body too large)."""

    status = 413


class Admin:
    """Admin handlers bound to one replica's models, the board and the apply timeout. `board`
    is a BoardLink, or a board actor handle (wrapped in one)."""

    def __init__(self, models: ModelSet, board: Any, apply_timeout_s: float) -> None:
        self.models = models
        self.key = board_key(models.root)
        self.board = board if isinstance(board, BoardLink) else BoardLink(self.key, board)
        self.apply_timeout_s = apply_timeout_s
        self._serial = asyncio.Lock()  # one change at a time per replica: ordered audit lines

    @staticmethod
    def failure(exc: Exception) -> tuple[int, str]:
        return failure(exc)

    def routes(self) -> list[BaseRoute]:
        return [Mount(PREFIX, app=self.app())]

    def app(self) -> Starlette:
        return web_app([
            Route("/index", self.index, methods=["POST"]),
            Route("/models/{model}/aliases", self.aliases, methods=["GET"]),
            Route("/models/{model}/history", self.history, methods=["GET"]),
            Route("/models/{model}/{action}", self.change, methods=["POST"]),
        ], [], handlers=HANDLERS)

    async def index(self, request: Request) -> Response:
        """Triton's repository index: every version, READY where this replica serves it, else
        UNAVAILABLE with the reason; `faults` says where the files differ from what is served
        (a version served from memory, a file that no longer matches), and a model whose entry
        cannot be read has a row of its own (version "")."""
        body = await _body(request)
        return json_response(self.index_rows(bool(body.get("ready", False))))

    def index_rows(self, ready_only: bool) -> list[dict[str, Any]]:
        """The index's rows (HTTP's and gRPC's RepositoryIndex)."""
        rows = []
        routes = self.models.router.models()
        published, faults = self.models.published, self.models.faults
        for name in sorted(set(published) | set(faults)):
            model = routes.get(name)
            wide = self.models.unavailable(name)
            if wide is not None and not published.get(name) and not ready_only:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE",
                             "reason": wide.describe(), "aliases": [],
                             "faults": [wide.describe()]})
            # A model unavailable for want of its aliases has none to show.
            aliases = (model.aliases if model is not None
                       and (model.versions or model.unavailable is None) else None)
            for version in published.get(name, []):
                loaded = model is not None and version in model.versions
                if ready_only and not loaded:
                    continue
                found = [f.describe() for f in faults.get(name, ())
                         if f.subject in (version, "") and f.kind is not FaultKind.BROKEN_ALIAS]
                rows.append({
                    "name": name,
                    "version": version,
                    "state": "READY" if loaded else "UNAVAILABLE",
                    "reason": "; ".join(found) if loaded else self._why_not(name, version),
                    "aliases": aliases.roles(version, published[name]) if aliases else [],
                    "faults": found,
                })
        return rows

    def _why_not(self, name: str, version: str) -> str:
        wide = self.models.unavailable(name)
        if wide is not None:
            return wide.describe()
        aliases = self.models.aliases(name)
        if aliases.unloaded:
            return "model unloaded"
        if version in aliases.retired:
            return "retired"
        failed = self.models.failed.get((name, version))
        if failed is not None:
            return failed
        if not aliases.roles(version, self.models.published.get(name, [])):
            # serving.model_set's loading policy: kept only while requested lately
            return "no alias points at it: unloaded while idle, loaded when a request names it"
        return "not loaded yet"

    async def aliases(self, request: Request) -> Response:
        """The aliases the model is served by, with each broken one (naming no version a
        request can go to) and the model's repository faults."""
        name = request.path_params["model"]
        wide = self.models.unavailable(name)
        if name not in self.models.published and wide is None:
            return error_response(404, f"model '{name}' is not in the repository")
        routes = self.models.router.models().get(name)
        if wide is not None and (routes is None or not routes.versions):
            raise AliasError(f"model '{name}' is unavailable: {wide.describe()}", 409)
        aliases = self.models.aliases(name)
        published = self.models.published.get(name, [])
        return json_response({
            "model": name,
            "aliases": aliases.to_dict(),
            "published": published,
            "serving": list(routes.versions) if routes else [],
            "failed": {v: why for (m, v), why in self.models.failed.items() if m == name},
            "broken": broken_aliases(aliases, published),
            "faults": self._faults(name),
        })

    def _faults(self, name: str) -> list[dict[str, Any]]:
        return [f.to_dict() | {"description": f.describe()}
                for f in self.models.faults.get(name, ())]

    async def history(self, request: Request) -> Response:
        """The model's newest `limit` audit entries (default HISTORY_LIMIT, at most
        MAX_HISTORY_LIMIT), oldest first; `more` says whether older ones exist."""
        name = _model_name(request)
        raw = request.query_params.get("limit", str(HISTORY_LIMIT))
        # ASCII digits, and few: str.isdigit takes "³", and int() refuses past 4,300 digits.
        if not _LIMIT.fullmatch(raw) or not 1 <= int(raw) <= MAX_HISTORY_LIMIT:
            raise BadAdminRequest(f"limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, "
                                  f"not {raw!r}")
        entries, more = await asyncio.to_thread(audit.tail, self.models.root, name, int(raw))
        return json_response({"model": name, "entries": entries, "limit": int(raw),
                              "more": more})

    async def change(self, request: Request) -> Response:
        name = _model_name(request)
        body = await _body(request)
        change_request = _change_request(request.path_params["action"], body,
                                         request_actor(request.scope), request.url.path)
        return json_response(await self.apply(name, change_request))

    def change_request(self, action: str, body: dict[str, Any], actor: str,
                       where: str) -> ChangeRequest:
        """A change as the body of POST {where} asks it (BadAdminRequest, or AliasError 404
        for an unknown action); for gRPC's RepositoryModelLoad and Unload."""
        unknown = set(body) - _FIELDS
        if unknown:
            raise BadAdminRequest(f"unknown parameters {sorted(unknown)}; known: "
                                  f"{sorted(_FIELDS)}")
        return _change_request(action, body, actor, where)

    async def apply(self, name: str, change_request: ChangeRequest) -> dict[str, Any]:
        """Make one change with its audit line, tell every replica, and say how it went."""
        async with self._serial:
            await self.board.ready()  # a board that cannot spread the change: nothing changes
            await self._check_loadable(name, change_request)
            change = await asyncio.to_thread(model_ops.run, self.models.root, name,
                                             change_request)
            try:
                spread = await self.spread()
            except BoardUnavailable as exc:
                raise BoardUnavailable(
                    f"the {change.action} of {name} was made and audited (generation "
                    f"{change.after.generation}), but the replicas could not be told: {exc}; "
                    "they read it when they reconnect to the board (within seconds)") from exc
        # What the replicas serve after it, where it differs from the files (served from
        # memory, a broken alias): a change that "changed nothing" must not hide that.
        return {**change.to_dict(), **spread, "faults": self._faults(name)}

    async def _check_loadable(self, name: str, request: ChangeRequest) -> None:
        """A version that cannot load here is refused before any alias moves."""
        if request.action not in (AliasAction.PROMOTE, AliasAction.CANARY, AliasAction.SHADOW,
                                  AliasAction.ROLLOUT):
            return
        published = await asyncio.to_thread(model_ops.published_versions, self.models.root, name)
        if request.version in published:
            try:
                await asyncio.to_thread(self.models.check_loadable, name, str(request.version))
            except RepositoryError as exc:
                raise AliasError(f"{name}/{request.version} cannot be served: {exc}", 409) from exc

    async def spread(self) -> dict[str, Any]:
        """Tell every replica and wait until all serve the change (or apply_timeout_s passes)."""
        started = time.perf_counter()
        generation = await self.board.bump()
        applied = await self.board.wait_applied(generation, self.apply_timeout_s)
        return {
            "converged": not applied["behind"],
            "replicas": applied["replicas"],
            "behind": applied["behind"],
            "applied_s": round(time.perf_counter() - started, 4),
        }


def _model_name(request: Request) -> str:
    name = request.path_params["model"]
    if not valid_name(name):
        raise BadAdminRequest(f"invalid model name {name!r}")
    return str(name)


def _change_request(route: str, body: dict[str, Any], actor: str, path: str) -> ChangeRequest:
    """The body of POST .../{route} as a change request (404 for an unknown route)."""
    version = _opt_str(body, "version")
    try:
        action = AliasAction.for_route(route, version is not None)
    except KeyError:
        raise AliasError(f"no route {path}", 404) from None
    except ValueError as exc:
        raise BadAdminRequest(str(exc)) from None
    weight = body.get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
        raise BadAdminRequest("'weight' must be a number")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadAdminRequest("'force' must be true or false")
    plan = None
    if action.spec.plan:
        try:
            plan = rollout.plan_from_dict(body.get("plan", {}))
        except PlanRefused as exc:
            raise BadAdminRequest(str(exc)) from None
    elif "plan" in body:
        raise BadAdminRequest(f"{action} takes no 'plan'")
    return ChangeRequest(action, actor, reason=_opt_str(body, "reason") or "", version=version,
                         weight=None if weight is None else float(weight),
                         sticky_header=_opt_str(body, "sticky_header"), force=force, plan=plan)


async def _body(request: Request) -> dict[str, Any]:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_ADMIN_BODY:
            raise AdminBodyTooLarge(f"admin request bodies are at most {MAX_ADMIN_BODY} bytes")
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


# ------------------------------------------------------------------ the answers to errors


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AliasError)
    if isinstance(exc, AliasFileError):  # the repository, not the request: the operator's log
        logger.warning("%s %s refused: %s", request.method, request.url.path, exc)
    return error_response(exc.status, str(exc))


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadAdminRequest)
    return error_response(exc.status, str(exc))


async def _unavailable(request: Request, exc: Exception) -> Response:
    """The board or the repository failed: 503, naming what, and whether the change was made."""
    return error_response(503, str(exc), headers={"Retry-After": "2"})


async def _bug(request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error (a bug): {type(exc).__name__}: {exc}")


def failure(exc: Exception) -> tuple[int, str]:
    """The status and message HANDLERS answer `exc` with, for callers without Starlette
    (gRPC's repository extension)."""
    if isinstance(exc, AliasError):
        return exc.status, str(exc)
    if isinstance(exc, BadAdminRequest):
        return exc.status, str(exc)
    if isinstance(exc, BoardUnavailable | ChangeFailed):
        return 503, str(exc)
    return 500, f"internal error (a bug): {type(exc).__name__}: {exc}"


HANDLERS = {
    AliasError: _refused,
    BadAdminRequest: _bad_request,
    BoardUnavailable: _unavailable,
    ChangeFailed: _unavailable,
    Exception: _bug,
}
