"""The monitor's HTTP app without Ray: its error answers (registered once as the app's
exception handlers) and its status, driven in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from monitoring.monitor import ERROR_STATUS, Monitor, build_asgi_app
from monitoring.queries import BadQuery
from monitoring.service import NotReady, UnknownModel
from monitoring.settings import MonitorSettings


@pytest.fixture
def monitor(example_root: Path, tmp_path: Path) -> Iterator[Monitor]:
    m = Monitor({"model_repository": str(example_root), "auth": "none",
                 "outbox_path": str(tmp_path / "outbox.sqlite")})
    yield m
    m._worker.shutdown(wait=True)
    m._report_worker.shutdown(wait=True)


Get = Callable[[str], httpx.Response]


@pytest.fixture
def client(monitor: Monitor) -> Get:
    app = build_asgi_app(monitor)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get(path)

    return lambda path: asyncio.run(get(path))


def test_the_errors_a_route_raises_are_answered_once_for_all() -> None:
    assert ERROR_STATUS == {BadQuery: 400, UnknownModel: 404, NotReady: 409}


@pytest.mark.parametrize(("path", "status", "error"), [
    ("/v1/models/breast_cancer/drift?windows=0", 400, "windows must be a whole number"),
    ("/v1/models/breast_cancer/drift?nope=1", 400, "unknown query parameter(s) 'nope'"),
    ("/v1/models/nope/drift", 404, "unknown model 'nope'"),
    ("/v1/models/breast_cancer/report?version=9", 404, "unknown version '9'"),
    ("/v1/models/mlp/report", 409, "has no profile"),
    ("/v1/models/breast_cancer/rows", 409, "no closed window with sampled rows"),
    ("/v1/models/breast_cancer/rows?version=..", 400, "version must be a version label"),
    ("/v1/nothing", 404, "no route /v1/nothing"),
])
def test_errors_are_json_with_their_status(client: Get, path, status, error) -> None:
    """A bad query gets 400, an unknown model or version 404, a valid request that cannot be
    answered yet 409: each an {"error"} body from the app's handlers, not a route's own catch."""
    response = client(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert error in response.json()["error"]


def test_status_shows_webhook_urls_redacted(monitor: Monitor, client: Get) -> None:
    """/v1/status returns the live settings: a target URL's password and token stay hidden."""
    url = "https://robot:hunter22-pw@hooks.example/in?token=s3cr3t-t0ken"
    monitor.settings = MonitorSettings(webhooks=[{"name": "t", "url": url, "secret_env": "S"}])
    response = client("/v1/status")
    assert response.status_code == 200
    assert response.json()["settings"]["webhooks"][0]["url"] == \
        "https://***@hooks.example/in?token=***"
    assert "hunter22-pw" not in response.text and "s3cr3t-t0ken" not in response.text


def test_a_model_whose_files_cannot_be_read_starts_the_monitor_and_is_in_its_status(
        example_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    (root / "mlp" / "1" / "model.yaml").write_text(": not yaml : [")
    m = Monitor({"model_repository": str(root), "auth": "none",
                 "outbox_path": str(tmp_path / "outbox.sqlite")})  # raised before: no monitor
    try:
        app = build_asgi_app(m)

        async def get() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get("/v1/status")

        status = asyncio.run(get()).json()
        assert [v["model"] for v in status["versions"]] == ["breast_cancer"]
        assert str(root / "mlp" / "1" / "model.yaml") in status["unreadable"]["mlp"]
    finally:
        m._worker.shutdown(wait=True)
        m._report_worker.shutdown(wait=True)
