"""A serving replica's ASGI app in this very process, without Ray's parts: for per-request cost
measurements (load_tests.bench_infer_cost) and in-process tests of the request path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from serving.admin import Admin
from serving.deployments import ModelServer, build_asgi_app
from serving.settings import ServerSettings
from vigil.core.tokens import create_token


class InProcessServer(ModelServer):
    """ModelServer without Ray's parts: the repository is read once at start (no alias board to
    follow: call `models.refresh()` to read it again), admin changes are not spread to other
    replicas (there are none), and sampled rows stay in `samples` (no monitor link)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._setup(ServerSettings(**settings))
        self.models.refresh()
        self._check_models()
        self.admin = Admin(self.models, None, self.settings.alias_apply_timeout_s)


def tokens_for(models_dir: Path, **scopes: str) -> dict[str, str]:
    """A token per name with its scopes ("infer,admin"), in the tokens file beside models_dir."""
    path = models_dir.parent / "tokens.yaml"
    return {name: create_token(path, name, frozenset(s.split(","))) for name, s in scopes.items()}


def server_app(models_dir: Path, **settings: Any) -> tuple[InProcessServer, Starlette]:
    """A server of `models_dir` (the tokens file beside it) and its ASGI app."""
    server = InProcessServer({"model_repository": str(models_dir),
                              "tokens_file": str(models_dir.parent / "tokens.yaml"), **settings})
    return server, build_asgi_app(server)


def run_client(app: Starlette, go: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run `go(client)` on a fresh event loop with an httpx client bound to `app` (no sockets)."""

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
            return await go(client)

    return asyncio.run(main())
