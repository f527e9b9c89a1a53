"""The serving replica: a Ray Serve deployment that hosts every model and its V2 HTTP routes."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from ray import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving import codecs, repository
from serving.batching import RowBatcher
from serving.metrics import UNKNOWN_MODEL, replica_metrics
from serving.monitor_link import MonitorLink
from serving.protocol import (
    HEADER_LENGTH,
    SERVER_EXTENSIONS,
    BadRequest,
    InferenceError,
    PayloadTooLarge,
)
from serving.router import ModelRouter
from serving.runtime import OnnxModel
from serving.sampling import SampleBuffer
from serving.settings import BatchSettings, ServerSettings

logger = logging.getLogger("vigil.server")

JSON = "application/json"
BINARY = "application/octet-stream"
SERVER_NAME = "vigil"
SERVER_VERSION = "0.1.0"


# Written beside a version by `vigil profile build` (monitoring.profile.PROFILE_JSON).
PROFILE_FILE = "profile.json"


class ServedModel:
    """A loaded model version with its batcher."""

    def __init__(self, model: OnnxModel, batching: BatchSettings, has_profile: bool) -> None:
        self.model = model
        # Rows are sampled only where the monitor has a reference to compare them with; every
        # version still reports latency and status.
        self.has_profile = has_profile
        self.batcher = RowBatcher(
            model.run,
            batching,
            observer=replica_metrics().for_model(model.name, model.version),
            thread_name=f"vigil-{model.name}-{model.version}",
        )


class ModelServer:
    """Loads the repository's models at start (the replica is ready once they are loaded) and
    answers the Open Inference Protocol. Batching knobs arrive through user_config."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServerSettings(**settings)
        found = repository.scan(self.settings.model_repository, self.settings.models)
        batching = self.settings.batching
        self.router: ModelRouter[ServedModel] = ModelRouter(
            {
                name: {
                    v.manifest.version: ServedModel(
                        OnnxModel(v, self.settings.runtime),
                        batching,
                        has_profile=(v.path / PROFILE_FILE).exists(),
                    )
                    for v in versions
                }
                for name, versions in found.items()
            }
        )
        self.batching = batching
        self.metrics = replica_metrics()
        sampling = self.settings.sampling
        self.samples: SampleBuffer | None = None
        self.monitor_link: MonitorLink | None = None
        if sampling.enabled:
            self.samples = SampleBuffer(
                sampling.sample_rate, sampling.buffer_rows, sampling.buffer_requests
            )
            self.monitor_link = MonitorLink(sampling, self.samples, self.metrics)
        logger.info("serving %s", [f"{n}/{v}" for n, v, _ in self.router])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching knobs live; called by Serve on deploy without restarting."""
        self.batching = BatchSettings.model_validate(user_config or {})
        for _, _, served in self.router:
            served.batcher.reconfigure(self.batching)
        logger.info("batching now %s", self.batching.model_dump())

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_asgi_app(self)

    # ------------------------------------------------------------------ handlers

    async def server_metadata(self, request: Request) -> Response:
        return _json(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(SERVER_EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return _json({"live": True})

    async def ready(self, request: Request) -> Response:
        return _json({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        try:
            served = self.router.resolve(name, version)
        except InferenceError as exc:
            return _error(exc)
        meta = served.model.metadata()
        meta["versions"] = [version] if version else self.router.versions(name)
        return _json(meta)

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            served = self.router.resolve(name, request.path_params.get("version"))
        except InferenceError as exc:
            return _error(exc)
        return _json({"name": name, "version": served.model.version, "ready": True})

    async def batching_state(self, request: Request) -> Response:
        """Vigil extension: the live batching knobs and which replica answered."""
        context = serve.get_replica_context()
        return _json(
            {
                "replica": context.replica_id.unique_id if context else None,
                "batching": self.batching.model_dump(),
            }
        )

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["model"]
        header_length = request.headers.get(HEADER_LENGTH)
        protocol = "json" if header_length is None else "binary"
        model_label, version_label = UNKNOWN_MODEL, ""
        headers = None
        try:
            served = self.router.resolve(name, request.path_params.get("version"))
            model = served.model
            model_label, version_label = model.name, model.version
            body = await _read_body(request, self.settings.max_body_bytes)
            decoded = codecs.decode_request(body, _parse_header_length(header_length))
            inputs, rows = model.validate(decoded.inputs)
            if decoded.outputs is None:
                wanted = [(n, decoded.binary_output_default) for n in model.output_names]
            else:
                model.select_outputs([o.name for o in decoded.outputs])
                wanted = [(o.name, o.binary) for o in decoded.outputs]
            results = await served.batcher.submit(inputs, rows)
            payload, json_length = codecs.encode_response(
                model.name,
                model.version,
                decoded.id,
                [(n, model.outputs[n].datatype, results[n], binary) for n, binary in wanted],
            )
            status = 200
            if json_length is None:
                media_type = JSON
            else:
                media_type = BINARY
                headers = {HEADER_LENGTH: str(json_length)}
        except InferenceError as exc:
            status, payload, media_type = exc.status_code, codecs.encode_error(str(exc)), JSON
        except Exception:
            logger.exception("infer %s failed", name)
            status, media_type = 500, JSON
            payload = codecs.encode_error("internal error while running the model; see server log")
        elapsed = time.perf_counter() - started
        self.metrics.request_done(model_label, version_label, protocol, status, elapsed)
        if self.samples is not None and model_label is not UNKNOWN_MODEL:
            self.samples.record(
                model_label, version_label, elapsed, status,
                *((inputs, results) if status == 200 and served.has_profile else ()),
            )
            self.monitor_link.start()
        return Response(payload, status_code=status, media_type=media_type, headers=headers)


def _parse_header_length(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length {raw!r} is not an integer") from None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON)


def _error(exc: InferenceError) -> Response:
    return Response(codecs.encode_error(str(exc)), status_code=exc.status_code, media_type=JSON)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed here"}
    return Response(
        codecs.encode_error(message.get(exc.status_code, str(exc.detail))),
        status_code=exc.status_code,
        media_type=JSON,
    )


def build_asgi_app(server: ModelServer) -> Starlette:
    """Plain Starlette routes (no per-request schema work) bound to one ModelServer."""
    s = server
    routes = [
        Route("/v2", s.server_metadata, methods=["GET"]),
        Route("/v2/health/live", s.live, methods=["GET"]),
        Route("/v2/health/ready", s.ready, methods=["GET"]),
        Route("/v2/vigil/batching", s.batching_state, methods=["GET"]),
        Route("/v2/models/{model}", s.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", s.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/infer", s.infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", s.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", s.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/infer", s.infer, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


ModelServerDeployment = serve.deployment(name="ModelServer")(serve.ingress()(ModelServer))
