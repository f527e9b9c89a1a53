"""What the CLI tests share: running `vigil` in-process, a model repository with validated
versions, and a stand-in for the server's admin API over real HTTP."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from load_tests.procs import free_port
from tests.graphs import double_graph
from vigil.core import model_ops, rollout
from vigil.core.actions import AliasAction
from vigil.core.aliases import AliasError
from vigil.core.repository import publish
from vigil.core.tensors import TensorSpec
from vigil.tools.cli import main
from vigil.tools.model_client import LocalModels, ModelsError

SPEC = (TensorSpec("x", "FP32", (-1, -1)),)
OUT = (TensorSpec("y", "FP32", (-1, -1)),)

# Another host, reached through a stand-in HTTP proxy on 127.0.0.1 (HTTP_PROXY), and what the
# commands say when a token would go there in clear.
ELSEWHERE = "http://vigil.example:8000"
REFUSAL = ("vigil: the bearer token in VIGIL_TOKEN would go in clear (plain http) to "
           "vigil.example, which is not this host: use an https:// URL, or give --insecure to "
           "send it anyway on a network you trust\n")
WARNING = ("vigil: warning: the bearer token in VIGIL_TOKEN would go in clear (plain http) to "
           "vigil.example, which is not this host (--insecure): anyone on the path can read "
           "and reuse it\n")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`vigil ARGV...`: its exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def nowhere() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def validated_repo(root: Path) -> Path:
    """Model `m` with versions 1, 2 and 3, each recorded as having passed the model gate, with
    no gate policy in force (none configured, no held-out set): 2 against production 1, 3
    against 2 (as validated after 2 was promoted). Production stays on 1 (publishing pins it)."""
    data = double_graph().SerializeToString()
    sha = hashlib.sha256(data).hexdigest()
    against = {"1": None, "2": "1", "3": "2"}
    for version in ("1", "2", "3"):
        passed = {"passed": True, "sha256": sha, "policy": None, "against": against[version]}
        publish(root, "m", version, data, SPEC, OUT,
                lineage={"published_by": "ci", "source_file": f"m{version}.onnx",
                         "validation": passed})
    return root


class StandInAdminServer:
    """A STAND-IN for Vigil's admin API (the real one runs on Ray Serve and has its own
    integration tests): the documented routes and answers, over the repository through
    vigil.core.model_ops, with bearer tokens `admin-token` (admin), `infer-token` (infer) and
    `both-token`. Records each request; `converged` False makes changes report replicas behind."""

    TOKENS = {"admin-token": {"admin"}, "infer-token": {"infer"},
              "both-token": {"admin", "infer"}}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.converged = True
        self.requests: list[tuple[str, str, Any]] = []
        prefix = "/v2/repository/models/{model}"
        self.app = Starlette(routes=[
            Route("/v2/repository/index", self.index, methods=["POST"]),
            Route(f"{prefix}/aliases", self.aliases, methods=["GET"]),
            Route(f"{prefix}/history", self.history, methods=["GET"]),
            Route(f"{prefix}/{{action}}", self.change, methods=["POST"]),
            Route(f"{prefix}/versions/{{version}}", self.version, methods=["GET"]),
        ])

    async def _guard(self, request: Request, scope: str) -> Response | None:
        body = await request.body()
        self.requests.append((request.method, request.url.path,
                              json.loads(body) if body else None))
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ")
        if token not in self.TOKENS:
            return JSONResponse({"error": "missing or unknown bearer token"}, 401)
        if scope not in self.TOKENS[token]:
            return JSONResponse({"error": f"token {token!r} lacks the {scope!r} scope this "
                                          "route needs"}, 403)
        return None

    def _local(self, request: Request) -> LocalModels:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return LocalModels(self.root, token)

    async def index(self, request: Request) -> Response:
        if (refused := await self._guard(request, "admin")) is not None:
            return refused
        rows = self._local(request).index()
        return JSONResponse([{**r, "state": "READY"} for r in rows])

    async def aliases(self, request: Request) -> Response:
        if (refused := await self._guard(request, "admin")) is not None:
            return refused
        return self._answer(lambda: self._local(request).aliases(request.path_params["model"]))

    async def history(self, request: Request) -> Response:
        if (refused := await self._guard(request, "admin")) is not None:
            return refused
        model = request.path_params["model"]
        limit = int(request.query_params.get("limit", "100"))

        def answer() -> dict[str, Any]:
            entries, more = self._local(request).history(model, limit)
            return {"model": model, "entries": entries, "limit": limit, "more": more}

        return self._answer(answer)

    async def version(self, request: Request) -> Response:
        if (refused := await self._guard(request, "admin")) is not None:
            return refused
        p = request.path_params
        return self._answer(lambda: self._local(request).version(p["model"], p["version"]))

    async def change(self, request: Request) -> Response:
        if (refused := await self._guard(request, "admin")) is not None:
            return refused
        body = self.requests[-1][2] or {}
        route = request.path_params["action"]
        token = request.headers["authorization"].removeprefix("Bearer ")

        def apply() -> dict[str, Any]:
            action = AliasAction.for_route(route, body.get("version") is not None)
            plan = rollout.plan_from_dict(body["plan"]) if action.spec.plan else None
            done = model_ops.apply(
                self.root, request.path_params["model"], action, actor=token,
                reason=body.get("reason", ""), version=body.get("version"),
                weight=body.get("weight"), sticky_header=body.get("sticky_header"),
                force=body.get("force", False), plan=plan,
            ).to_dict()
            generation = done["generation"]
            replicas = {"r1": generation, "r2": generation if self.converged else generation - 1}
            return {**done, "converged": self.converged, "replicas": replicas,
                    "behind": [] if self.converged else ["r2"], "applied_s": 0.05}

        return self._answer(apply)

    @staticmethod
    def _answer(make: Any) -> Response:
        try:
            return JSONResponse(make())
        except AliasError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        except ModelsError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
