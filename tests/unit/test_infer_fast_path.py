"""The inference fast path: which paths it takes (exactly those Starlette's inference routes
match), what reaches the handler, and that everything else still goes through the router."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from serving.fast_path import InferFastPath, infer_path_params
from vigil.adapters.web import route_path

INFER_ROUTES = ("/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/m/infer", {"model": "m"}),
        ("/v2/models/breast_cancer/versions/12/infer", {"model": "breast_cancer", "version": "12"}),
        ("/v2/models/a b/infer", {"model": "a b"}),  # scope paths arrive percent-decoded
        ("/v2/models//infer", None),
        ("/v2/models/m/versions//infer", None),
        ("/v2/models/m/infer/", None),
        ("/v2/models/m/ready", None),
        ("/v2/models/m/versions/1", None),
        ("/v2/models/m/x/1/infer", None),
        ("/v3/models/m/infer", None),
        ("v2/models/m/infer", None),
        ("/v2/model/m/infer", None),
        ("/v2/models/m/versions/1/infer/more", None),
        ("/v2/repository/models/m/load", None),
        ("/", None),
        ("", None),
    ],
)
def test_paths_taken_are_those_the_routes_match(path: str, expected: dict | None) -> None:
    assert infer_path_params(path) == expected
    # The same answer Starlette's own routes give (the fast path must never widen them).
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    matched = [dict(r.matches(scope)[1].get("path_params", {}))
               for r in (Route(p, lambda r: None, methods=["POST"]) for p in INFER_ROUTES)
               if r.matches(scope)[0].name == "FULL"]
    assert (matched[0] if matched else None) == expected


def test_root_path_is_stripped_as_starlette_does() -> None:
    inside = {"path": "/prefix/v2/models/m/infer", "root_path": "/prefix"}
    outside = {"path": "/v2/models/m/infer", "root_path": "/prefix"}
    assert infer_path_params(route_path(inside)) == {"model": "m"}
    assert infer_path_params(route_path(outside)) == {"model": "m"}


async def _handler(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"via": "handler", "params": request.path_params, "bytes": len(body)})


async def _routed(request: Request) -> PlainTextResponse:
    return PlainTextResponse("router")


def _call(method: str, path: str, body: bytes = b"") -> httpx.Response:
    app = Starlette(
        routes=[Route("/v2/models/{model}/infer", _routed, methods=["POST"]),
                Route("/v2/models/{model}/ready", _routed, methods=["GET"])],
        middleware=[Middleware(InferFastPath, handler=_handler)],
    )

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
            return await client.request(method, path, content=body)

    return asyncio.run(go())


def test_inference_posts_reach_the_handler_with_params_and_body() -> None:
    answer = _call("POST", "/v2/models/m/versions/3/infer", b"x" * 1000)
    assert answer.json() == {"via": "handler", "params": {"model": "m", "version": "3"},
                             "bytes": 1000}


def test_everything_else_goes_through_the_router() -> None:
    assert _call("GET", "/v2/models/m/ready").text == "router"
    assert _call("GET", "/v2/models/m/infer").status_code == 405  # the router's answer
    assert _call("POST", "/v2/models/m/infer/").status_code in (307, 404)  # Starlette's redirect
    assert _call("POST", "/v2/elsewhere").status_code == 404
