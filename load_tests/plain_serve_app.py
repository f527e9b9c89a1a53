"""Plain Ray Serve, none of Vigil's features: one class deployment whose __call__ runs onnxruntime.

Deployed by load_tests.bench with a generated config (import_path
load_tests.plain_serve_app:build_app, args {model_repository: ...}) behind Ray's default proxy.
"""

from __future__ import annotations

from typing import Any

import orjson
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from load_tests.onnx_models import infer, load_repository
from serving.protocol import HEADER_LENGTH, InferenceError


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=256)
class PlainOnnx:
    def __init__(self, model_repository: str) -> None:
        self.models = load_repository(model_repository)

    async def __call__(self, request: Request) -> Response:
        parts = request.url.path.split("/")  # /v2/models/{name}/infer
        if len(parts) != 5 or parts[4] != "infer" or request.method != "POST":
            return Response(b'{"error":"no route"}', status_code=404, media_type="application/json")
        raw = request.headers.get(HEADER_LENGTH)
        try:
            payload, json_length = infer(
                self.models, parts[3], await request.body(), None if raw is None else int(raw)
            )
        except InferenceError as exc:
            return Response(
                orjson.dumps({"error": str(exc)}),
                status_code=exc.status_code,
                media_type="application/json",
            )
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )


def build_app(args: dict[str, Any]) -> Any:
    """args: model_repository (required), num_replicas (default 2)."""
    deployment = PlainOnnx.options(num_replicas=int(args.get("num_replicas", 2)))
    return deployment.bind(args["model_repository"])
