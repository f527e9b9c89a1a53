"""The bare reference: a raw ASGI app calling onnxruntime in-process, for uvicorn (no Ray).

Run: BENCH_MODEL_REPOSITORY=models uvicorn load_tests.reference_server:app --workers 2 \
         --loop uvloop --http httptools --no-access-log --port 8101
Routes: POST /v2/models/{name}/infer (V2 JSON or binary tensor extension), GET /v2/health/ready.
"""

from __future__ import annotations

import os

import orjson

from load_tests.onnx_models import BareModel, infer, load_repository
from serving.protocol import HEADER_LENGTH, InferenceError

_HEADER = HEADER_LENGTH.encode()
_models: dict[str, BareModel] = {}


def _load() -> None:
    if not _models:
        _models.update(load_repository(os.environ.get("BENCH_MODEL_REPOSITORY", "models")))


async def _respond(send, status: int, body: bytes, json_length: int | None = None) -> None:
    headers = [
        (
            b"content-type",
            b"application/json" if json_length is None else b"application/octet-stream",
        ),
        (b"content-length", str(len(body)).encode()),
    ]
    if json_length is not None:
        headers.append((_HEADER, str(json_length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _load()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    _load()
    parts = scope["path"].split("/")
    method = scope["method"]
    if method == "GET" and scope["path"] == "/v2/health/ready":
        await _respond(send, 200, b'{"ready":true}')
        return
    if method != "POST" or len(parts) != 5 or parts[1:3] != ["v2", "models"] or parts[4] != "infer":
        await _respond(send, 404, orjson.dumps({"error": f"no route {method} {scope['path']}"}))
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    header_length = None
    for key, value in scope["headers"]:
        if key == _HEADER:
            header_length = int(value)
    try:
        payload, json_length = infer(_models, parts[3], b"".join(chunks), header_length)
    except InferenceError as exc:
        await _respond(send, exc.status_code, orjson.dumps({"error": str(exc)}))
        return
    await _respond(send, 200, payload, json_length)
