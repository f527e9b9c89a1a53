"""The serving replica: a Ray Serve deployment that hosts every model and its V2 HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version
from typing import Any

from ray import serve
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving import codecs
from serving.batching import RowBatcher
from serving.metrics import UNKNOWN_MODEL, replica_metrics
from serving.monitor_link import MonitorLink
from serving.protocol import (
    HEADER_LENGTH,
    SERVER_EXTENSIONS,
    InferenceError,
    ParsedRequest,
    PayloadTooLarge,
)
from serving.router import ModelRouter
from serving.runtime import OnnxModel
from serving.sampling import SampleBuffer
from serving.settings import BatchSettings, ServerSettings
from vigil import repository
from vigil.tokens import TokenVerifier
from vigil.web import (
    JSON,
    OPEN,
    BearerGuard,
    error_body,
    error_response,
    http_error,
    json_response,
    node_addresses,
    open_access_check,
    serve_http_host,
    tokens_path,
)

logger = logging.getLogger("vigil.server")

BINARY = "application/octet-stream"
SERVER_NAME = "vigil"
SERVER_VERSION = package_version("vigil")
# Bodies larger than this are decoded on a worker thread, so that the event loop keeps serving
# the replica's other requests meanwhile.
LARGE_BODY_BYTES = 1024 * 1024
CANCELLED = 499  # nginx's "client closed request": cancelled before Vigil could answer


def serving_scope(path: str) -> str | None:
    """The token scope a route of this app needs ('' when open; None: any valid token)."""
    if path in ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready"):
        return OPEN
    if path.startswith("/v2/models/"):
        return "infer"
    if path.startswith("/v2/vigil/"):
        return "monitor"
    if path.startswith("/v2/repository"):
        return "admin"
    return None


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
            declared_max_rows=model.max_batch_rows,
            observer=replica_metrics().for_model(model.name, model.version),
            thread_name=f"vigil-{model.name}-{model.version}",
        )


class ModelServer:
    """Loads the repository's models at start (the replica is ready once they are loaded) and
    answers the Open Inference Protocol. Batching knobs arrive through user_config."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServerSettings(**settings)
        self.tokens = TokenVerifier(
            tokens_path(self.settings.tokens_file, self.settings.model_repository)
        )
        open_access_check(self.settings.auth, self.tokens, serve_http_host())
        found = repository.scan(self.settings.model_repository, self.settings.models)
        batching = self.settings.batching
        self.router: ModelRouter[ServedModel] = ModelRouter(
            {
                name: {
                    v.manifest.version: ServedModel(
                        OnnxModel(v, self.settings.runtime), batching, has_profile=v.has_profile
                    )
                    for v in versions
                }
                for name, versions in found.items()
            }
        )
        self.batching = batching
        self.metrics = replica_metrics()
        # Large bodies are decoded here, two at a time: off the event loop, and bounded.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-decode")
        sampling = self.settings.sampling
        self.samples: SampleBuffer | None = None
        self.monitor_link: MonitorLink | None = None
        if sampling.enabled:
            self.samples = SampleBuffer(
                sampling.sample_rate, sampling.buffer_rows, sampling.buffer_requests,
                sampling.max_rows_per_request,
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

    def __del__(self) -> None:
        """Serve calls this as the replica shuts down: stop the flush loop and the threads."""
        link = getattr(self, "monitor_link", None)
        if link is not None:
            link.stop()
        for _, _, served in getattr(self, "router", ()):
            served.batcher.close()
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ handlers

    async def server_metadata(self, request: Request) -> Response:
        return json_response(
            {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(SERVER_EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return json_response({"live": True})

    async def ready(self, request: Request) -> Response:
        return json_response({"ready": True})

    async def model_metadata(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        try:
            served = self.router.resolve(name, version)
        except InferenceError as exc:
            return error_response(exc.status_code, str(exc))
        meta = served.model.metadata()
        meta["versions"] = [version] if version else self.router.versions(name)
        return json_response(meta)

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        try:
            served = self.router.resolve(name, request.path_params.get("version"))
        except InferenceError as exc:
            return error_response(exc.status_code, str(exc))
        return json_response({"name": name, "version": served.model.version, "ready": True})

    async def batching_state(self, request: Request) -> Response:
        """Vigil extension: the live batching knobs, each version's declaration, and which
        replica answered."""
        context = serve.get_replica_context()
        return json_response(
            {
                "replica": context.replica_id.unique_id if context else None,
                "batching": self.batching.model_dump(),
                "models": {
                    f"{n}/{v}": {"declared_max_batch_rows": s.model.max_batch_rows,
                                 "max_batch_rows": s.batcher.max_rows,
                                 "queued_rows": s.batcher.queued_rows}
                    for n, v, s in self.router
                },
            }
        )

    async def infer(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["model"]
        raw_header_length = request.headers.get(HEADER_LENGTH)
        protocol = "json" if raw_header_length is None else "binary"
        model_label, version_label = UNKNOWN_MODEL, ""
        # Until an answer is ready the request counts as cancelled: if the client goes away or
        # Ray's request_timeout_s runs out, Ray cancels this task and the finally below still
        # records it, with its own status and its latency.
        status = CANCELLED
        served: ServedModel | None = None
        inputs = results = None
        try:
            try:
                served = self.router.resolve(name, request.path_params.get("version"))
                model = served.model
                model_label, version_label = model.name, model.version
                header_length = codecs.parse_header_length(raw_header_length)
                body = await self._read_body(request, header_length)
                if len(body) > LARGE_BODY_BYTES:
                    loop = asyncio.get_running_loop()
                    parsed, inputs, rows = await loop.run_in_executor(
                        self._decoder, self._decode, model, body, header_length
                    )
                else:
                    parsed, inputs, rows = self._decode(model, body, header_length)
                if parsed.outputs is None:
                    wanted = [(n, parsed.binary_output_default) for n in model.output_names]
                else:
                    wanted = [(o.name, o.binary) for o in parsed.outputs]
                results = await served.batcher.submit(inputs, rows)
                payload, json_length = codecs.encode_response(
                    model.name,
                    model.version,
                    parsed.id,
                    [(n, model.outputs[n].datatype, results[n], binary) for n, binary in wanted],
                )
                headers = None if json_length is None else {HEADER_LENGTH: str(json_length)}
                media_type = JSON if json_length is None else BINARY
                status = 200
            except InferenceError as exc:
                status, payload, media_type, headers = exc.status_code, error_body(str(exc)), JSON, None
            except Exception:
                logger.exception("infer %s failed", name)
                status, media_type, headers = 500, JSON, None
                payload = error_body("internal error while running the model; see server log")
            return Response(payload, status_code=status, media_type=media_type, headers=headers)
        finally:
            self._account(served, model_label, version_label, protocol, status,
                          time.perf_counter() - started, inputs, results)

    def _decode(
        self, model: OnnxModel, body: bytes, header_length: int | None
    ) -> tuple[ParsedRequest, dict, int]:
        """Parse the header, check what it declares against the signature, and only then
        decode the tensor data and convert it as the model takes it."""
        parsed = codecs.parse_request(body, header_length)
        model.check_declared((d.name, d.datatype, d.shape) for d in parsed.inputs)
        if parsed.outputs is not None:
            model.select_outputs([o.name for o in parsed.outputs])
        raw = codecs.decode_inputs(parsed, self.settings.max_bytes_elements)
        inputs, rows = model.validate(raw)
        return parsed, inputs, rows

    async def _read_body(self, request: Request, header_length: int | None) -> bytes:
        """The body, refused (413) as soon as it is known to exceed its limit: a whole JSON body
        or a binary request's JSON header by max_json_body_bytes, the rest by max_body_bytes."""
        s = self.settings
        if header_length is not None and header_length > s.max_json_body_bytes:
            raise PayloadTooLarge(
                f"JSON header of {header_length} bytes exceeds the limit of "
                f"{s.max_json_body_bytes} (max_json_body_bytes)"
            )
        limit, what = (
            (s.max_json_body_bytes, "JSON body")
            if header_length is None
            else (s.max_body_bytes, "request body")
        )
        hint = "; send large tensors as binary data" if header_length is None else ""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"{what} of {declared} bytes exceeds the limit of {limit}{hint}")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes{hint}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _account(
        self,
        served: ServedModel | None,
        model: str,
        version: str,
        protocol: str,
        status: int,
        elapsed: float,
        inputs: dict | None,
        results: dict | None,
    ) -> None:
        """Metrics and the monitor's sample for every request, answered or cancelled."""
        self.metrics.request_done(model, version, protocol, status, elapsed)
        if self.samples is None or served is None:
            return
        if status == 200 and served.has_profile:
            self.samples.record(model, version, elapsed, status, inputs, results)
        else:
            self.samples.record(model, version, elapsed, status)
        assert self.monitor_link is not None
        self.monitor_link.start()


def build_asgi_app(server: ModelServer) -> Starlette:
    """Plain Starlette routes (no per-request schema work) bound to one ModelServer, behind the
    bearer-token guard."""
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
    guard = Middleware(
        BearerGuard,
        verifier=s.tokens,
        scope_for=serving_scope,
        auth=s.settings.auth,
        local_hosts=node_addresses(),
        on_reject=s.metrics.auth_rejected,
    )
    return Starlette(
        routes=routes, middleware=[guard], exception_handlers={HTTPException: http_error}
    )



ModelServerDeployment = serve.deployment(name="ModelServer")(serve.ingress()(ModelServer))
