"""vigil.tools.server_client against real HTTP servers on 127.0.0.1: what each kind of answer,
or of no answer, becomes."""

from __future__ import annotations

import gzip
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.local_http import serving
from tests.unit.cli_support import nowhere
from vigil.tools.server_client import NoServer, ServerClient, ServerError


async def _echo(request: Request) -> Response:
    return JSONResponse({"method": request.method, "body": (await request.body()).decode(),
                         "authorization": request.headers.get("authorization")})


async def _html(request: Request) -> Response:
    return Response("this is not json", media_type="text/html")


async def _refusal(request: Request) -> Response:
    return JSONResponse({"error": "model 'm' has no version '7'"}, 404)


async def _empty(request: Request) -> Response:
    return Response(b"", 502)


async def _moved(request: Request) -> Response:
    return Response(b"", 307, headers={"location": "https://vigil.example/v2/echo"})


async def _gzipped(request: Request) -> Response:
    return Response(gzip.compress(b"<html>report</html>"), media_type="text/html",
                    headers={"content-encoding": "gzip"})


APP = Starlette(routes=[
    Route("/echo", _echo, methods=["GET", "POST"]), Route("/html", _html),
    Route("/refusal", _refusal), Route("/empty", _empty), Route("/moved", _moved),
    Route("/gzipped", _gzipped),
])


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serving(APP) as found:
        yield found


@contextmanager
def _listener(answer: bytes | None) -> Iterator[str]:
    """A server that accepts one connection, reads the request, then sends `answer` and hangs
    up (None: sends nothing and keeps the connection open until the block ends)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)
                return
            stop.wait(10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)
        server.close()


def test_json_bodies_and_the_token(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON body goes as JSON; VIGIL_TOKEN goes as a bearer token, and only when set."""
    monkeypatch.setenv("VIGIL_TOKEN", "t0k")
    answer = ServerClient(url + "/", 5).json("POST", "/echo", {"version": "2"})
    assert answer == {"method": "POST", "body": '{"version":"2"}', "authorization": "Bearer t0k"}
    monkeypatch.setenv("VIGIL_TOKEN", "")
    assert ServerClient(url, 5).json("GET", "/echo")["authorization"] is None


def test_a_gzip_answer_is_decompressed(url: str) -> None:
    body = ServerClient(url, 5).send("GET", "/gzipped", headers={"Accept-Encoding": "gzip"})
    assert body == b"<html>report</html>"


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/html", 502, "GET {url}/html answered with something other than JSON: b'this is not json'"),
    ("/refusal", 404, "GET {url}/refusal answered 404: model 'm' has no version '7'"),
    ("/empty", 502, "GET {url}/empty answered 502: (no body)"),
    ("/moved", 307, "GET {url}/moved answered 307: moved to https://vigil.example/v2/echo; use "
                    "that URL"),
])
def test_answers_that_are_not_a_json_success(url: str, path: str, status: int, message: str
                                             ) -> None:
    """A 2xx that is not JSON is a 502; an {"error"} body is shown as its message; an empty
    one says so; a redirect is never followed (the token would go where no one said)."""
    with pytest.raises(ServerError) as caught:
        ServerClient(url, 5).json("GET", path)
    assert (caught.value.status, str(caught.value)) == (status, message.format(url=url))


def test_connection_refused_is_no_server() -> None:
    where = nowhere()
    with pytest.raises(NoServer) as caught:
        ServerClient(where, 5).json("GET", "/echo")
    assert str(caught.value) == f"no server at {where}"


def test_no_answer_in_time_is_a_504_naming_the_flag() -> None:
    with _listener(None) as where, pytest.raises(ServerError) as caught:
        ServerClient(where, 0.3).json("GET", "/echo")
    assert caught.value.status == 504
    assert str(caught.value) == f"GET {where}/echo: no answer within 0.3 s (--timeout)"


def test_a_connection_dropped_mid_answer_is_a_503() -> None:
    half = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial"
    with _listener(half) as where, pytest.raises(ServerError) as caught:
        ServerClient(where, 5).json("GET", "/echo")
    assert caught.value.status == 503
    assert str(caught.value).startswith(f"GET {where}/echo: ")
