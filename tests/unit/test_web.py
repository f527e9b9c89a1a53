"""The web edge both apps share: the bearer-token guard on a real Starlette app (in process, over
httpx's ASGI transport, with the peer address chosen), the open-access start rule, and the
serving app's route scopes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from serving.deployments import serving_scope
from vigil.core.hosts import is_loopback
from vigil.core.tokens import TokenVerifier, create_token
from vigil.adapters.web import (
    OPEN,
    AuthConfigError,
    BearerGuard,
    error_body,
    http_error,

    open_access_check,
)


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def _app(verifier: TokenVerifier, auth: str = "tokens", rejected: list | None = None) -> Starlette:
    routes = [Route(p, _ok) for p in ("/v2", "/v2/health/live", "/v2/models/m/infer",
                                      "/v2/vigil/batching", "/v2/repository/index")]
    guard = Middleware(
        BearerGuard, verifier=verifier, scope_for=serving_scope, auth=auth,
        local_hosts=frozenset({"10.1.2.3"}),
        on_reject=(lambda code, scope: rejected.append((code, scope))) if rejected is not None
        else None,
    )
    return Starlette(routes=routes, middleware=[guard],
                     exception_handlers={HTTPException: http_error})


def _get(app: Starlette, path: str, peer: str = "127.0.0.1", token: str | None = None,
         root_path: str = "") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000), root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return await client.get(root_path + path, headers=headers)

    return asyncio.run(go())


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[TokenVerifier, dict[str, str]]:
    path = tmp_path / "tokens.yaml"
    issued = {s: create_token(path, f"only-{s}", frozenset({s})) for s in ("infer", "monitor")}
    return TokenVerifier(path), issued


def test_with_tokens_each_route_needs_its_scope(tokens) -> None:
    verifier, issued = tokens
    rejected: list = []
    app = _app(verifier, rejected=rejected)
    assert _get(app, "/v2/models/m/infer", token=issued["infer"]).text == "ok"
    no_token = _get(app, "/v2/models/m/infer")
    assert no_token.status_code == 401 and no_token.headers["www-authenticate"] == 'Bearer realm="vigil"'
    assert no_token.content == error_body(
        "this route needs a bearer token (Authorization: Bearer ...)"
    )
    wrong_scope = _get(app, "/v2/vigil/batching", token=issued["infer"])
    assert wrong_scope.status_code == 403
    assert wrong_scope.headers["www-authenticate"] == (
        'Bearer realm="vigil", error="insufficient_scope", scope="monitor"'
    )
    assert _get(app, "/v2/vigil/batching", token=issued["monitor"]).status_code == 200
    assert _get(app, "/v2/repository/index", token=issued["monitor"]).status_code == 403
    assert _get(app, "/v2/health/live").status_code == 200 and _get(app, "/v2").status_code == 200
    assert _get(app, "/nowhere").status_code == 401  # unknown routes: any valid token first
    assert _get(app, "/nowhere", token=issued["monitor"]).status_code == 404
    assert rejected == [(401, "infer"), (403, "monitor"), (403, "admin"), (401, None)]


def test_the_route_is_judged_inside_the_apps_prefix(tokens) -> None:
    verifier, issued = tokens
    app = _app(verifier)
    # Under a route prefix (the monitor's /monitor), scope["path"] carries the prefix too.
    assert _get(app, "/v2/health/live", root_path="/monitor").status_code == 200
    assert _get(app, "/v2/models/m/infer", root_path="/monitor").status_code == 401


def test_without_a_tokens_file_only_this_host_is_served(tmp_path: Path) -> None:
    app = _app(TokenVerifier(tmp_path / "absent.yaml"))
    for local in ("127.0.0.1", "127.8.9.1", "::1", "10.1.2.3"):  # loopback, or this node's own IP
        assert _get(app, "/v2/models/m/infer", peer=local).status_code == 200, local
    remote = _get(app, "/v2/models/m/infer", peer="192.0.2.7")
    assert remote.status_code == 403
    assert "no tokens file and serves only its own host" in remote.json()["error"]
    assert "www-authenticate" not in remote.headers
    assert _get(app, "/v2/health/live", peer="192.0.2.7").status_code == 200  # probes


def test_auth_none_opens_everything_even_with_a_tokens_file(tokens) -> None:
    verifier, _ = tokens
    app = _app(verifier, auth="none")
    assert _get(app, "/v2/models/m/infer", peer="192.0.2.7").status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("127.1.2.3", True), ("0.0.0.0", False), ("10.0.0.5", False), ("::", False),
     ("example.com", False)],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def _unanswered() -> str:
    raise TimeoutError("Serve's controller did not answer within 30 s")


@pytest.mark.parametrize("host", [_unanswered, lambda: "None", lambda: "", lambda: "my-host"])
def test_doubt_about_where_the_server_listens_refuses_to_start(tmp_path: Path, host) -> None:
    """No tokens file and no certain loopback host: the server does not start (it once started
    open when Serve's controller timed out, as if on loopback)."""
    with pytest.raises(AuthConfigError, match="tokens create") as info:
        open_access_check("tokens", TokenVerifier(tmp_path / "tokens.yaml"), host)
    if host is _unanswered:
        assert "where this server listens is unknown (TimeoutError" in str(info.value)


def test_no_tokens_file_grants_nothing_to_a_token_check(tmp_path: Path) -> None:
    """The verifier itself never grants a route when no tokens file is in force: who may come
    in without a token is the guard's explicit choice (its own host only)."""
    verifier = TokenVerifier(tmp_path / "absent.yaml")
    decision = verifier.check("Bearer vigil_anything", "admin")
    assert not decision.allowed and decision.status == 401


def test_an_open_server_refuses_to_start_off_loopback(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, "vigil.adapters.web")
    absent = TokenVerifier(tmp_path / "tokens.yaml")
    open_access_check("tokens", absent, lambda: "127.0.0.1")  # a laptop: fine
    with pytest.raises(AuthConfigError) as info:
        open_access_check("tokens", absent, lambda: "0.0.0.0")
    assert "HTTP host '0.0.0.0' is not loopback and there is no tokens file" in str(info.value)
    assert "auth: none" in str(info.value)
    create_token(tmp_path / "tokens.yaml", "ci", frozenset({"infer"}))
    verifier = TokenVerifier(tmp_path / "tokens.yaml")
    open_access_check("tokens", verifier, lambda: "0.0.0.0")  # tokens: fine
    open_access_check("tokens", verifier, _unanswered)  # with tokens, the host is not asked
    open_access_check("none", absent, _unanswered)  # explicit opt-out: starts, and says so
    assert any("auth: none" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


@pytest.mark.parametrize(
    ("path", "scope"),
    [("/v2", OPEN), ("/v2/", OPEN), ("/v2/health/live", OPEN), ("/v2/health/ready", OPEN),
     ("/v2/models/m", "infer"), ("/v2/models/m/versions/1/infer", "infer"),
     ("/v2/models/m/feedback", "feedback"), ("/v2/models/feedback", "infer"),
     ("/v2/models/feedback/feedback", "feedback"), ("/v2/models/m/versions/feedback", "infer"),
     ("/v2/vigil/batching", "monitor"), ("/v2/repository/index", "admin"),
     ("/v2/health/livez", None), ("/v2/models", None), ("/other", None)],
)
def test_serving_routes_and_their_scopes(path: str, scope: str | None) -> None:
    assert serving_scope(path) == scope
