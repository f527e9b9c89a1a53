"""The serving replica: a Ray Serve deployment that hosts every model and its V2 HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version as package_version
from typing import Any

import ray
from ray import serve
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving import codecs
from serving.metrics import UNKNOWN_MODEL, replica_metrics
from serving.monitor_link import MonitorLink
from serving.protocol import (
    HEADER_LENGTH,
    SERVER_EXTENSIONS,
    BadRequest,
    InferenceError,
    ParsedRequest,
    PayloadTooLarge,
)
from serving.admin import Admin
from serving.agreement import agreement
from serving.follower import AliasFollower
from serving.model_set import ModelSet, ServedModel
from serving.runtime import OnnxModel
from serving.sampling import SampleBuffer
from serving.settings import BatchSettings, ServerSettings
from vigil.core.repository import RepositoryError, read_manifest
from vigil.adapters.boot import Door, web_app
from vigil.adapters.web import JSON, OPEN, error_body, error_response, json_response, route_path

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


class ModelServer:
    """Loads the repository's models at start (the replica is ready once they are loaded) and
    answers the Open Inference Protocol. Batching knobs arrive through user_config."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = ServerSettings(**settings)
        self.door = Door.open(self.settings)  # refuses to start open beyond its own host
        if not self.settings.model_repository.is_dir():
            raise RepositoryError(f"model repository {self.settings.model_repository} does not exist")
        self.batching = self.settings.batching
        self._in_flight = 0  # inference requests this replica is handling now
        self.models = ModelSet(self.settings.model_repository, self.settings.models,
                               self.settings.runtime, self.batching)
        # Aliases: read from the repository now, followed live after (every replica the same).
        context = serve.get_replica_context()
        replica = context.replica_id.to_full_id_str() if context else f"local-{os.getpid()}"
        self.follower = AliasFollower(self.models, replica)
        missing = set(self.settings.models or ()) - set(self.models.published)
        if missing:
            raise RepositoryError(
                f"models not found in {self.settings.model_repository}: {sorted(missing)}")
        self.follower.start()
        self.admin = Admin(self.models, self.follower.board, self.settings.alias_apply_timeout_s)
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
        logger.info("serving %s", [f"{n}/{v}" for n, v, _ in self.models.router])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching knobs live; called by Serve on deploy without restarting."""
        self.batching = BatchSettings.model_validate(user_config or {})
        self.models.reconfigure(self.batching)
        logger.info("batching now %s", self.batching.model_dump())

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_asgi_app(self)

    def __del__(self) -> None:
        """Serve calls this as the replica shuts down: stop the flush loop and the threads."""
        link = getattr(self, "monitor_link", None)
        if link is not None:
            link.stop()
        follower = getattr(self, "follower", None)
        if follower is not None:
            follower.stop()
        models = getattr(self, "models", None)
        if models is not None:
            models.close()
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
            router = self.models.router
            served = router.resolve(name, version).target if version else router.production(name)
        except InferenceError as exc:
            return error_response(exc.status_code, str(exc))
        meta = served.model.metadata()
        meta["versions"] = [version] if version else router.versions(name)
        # Lineage grows after load (the model gate's verdict): read model.yaml as it is now.
        try:
            manifest = await asyncio.to_thread(read_manifest, served.version.path)
        except RepositoryError:
            manifest = served.model.manifest
        routes = router.routes(name)
        meta["parameters"] = {
            "sha256": manifest.sha256,
            "created": manifest.created,
            "max_batch_rows": manifest.max_batch_rows,
            "aliases": routes.aliases.roles(served.model.version, routes.published),
            "lineage": manifest.lineage,
            "metadata": manifest.metadata,
        }
        return json_response(meta)

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        try:
            router = self.models.router
            served = router.resolve(name, version).target if version else router.production(name)
        except InferenceError as exc:
            return error_response(exc.status_code, str(exc))
        return json_response({"name": name, "version": served.model.version, "ready": True})

    async def batching_state(self, request: Request) -> Response:
        """Vigil extension: the live batching knobs, each version's declaration and execution
        providers, and which replica answered (with the accelerators Ray gave it)."""
        context = serve.get_replica_context()
        return json_response(
            {
                "replica": context.replica_id.unique_id if context else None,
                "accelerators": _accelerators() if context else {},
                "batching": self.batching.model_dump(),
                "models": {
                    f"{n}/{v}": {"declared_max_batch_rows": s.model.max_batch_rows,
                                 "max_batch_rows": s.batcher.max_rows,
                                 "queued_rows": s.batcher.queued_rows,
                                 "providers": s.model.providers}
                    for n, v, s in self.models.router
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
        self._in_flight += 1
        served: ServedModel | None = None
        shadow: ServedModel | None = None
        inputs = results = None
        rows = 0
        try:
            try:
                route = self.models.router.resolve(
                    name, request.path_params.get("version"), request.headers.get
                )
                served, shadow = route.target, route.shadow
                model = served.model
                model_label, version_label = model.name, model.version
                header_length = codecs.parse_header_length(raw_header_length)
                parsed, inputs, rows = await self._receive(request, model, header_length)
                if parsed.outputs is None:
                    wanted = [(n, parsed.binary_output_default) for n in model.output_names]
                else:
                    wanted = [(o.name, o.binary) for o in parsed.outputs]
                results = await served.batcher.submit(inputs, rows,
                                                      alone=self._in_flight == 1)
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
                shadow = None
                status, payload, media_type, headers = exc.status_code, error_body(str(exc)), JSON, None
            except Exception:
                logger.exception("infer %s failed", name)
                status, media_type, headers = 500, JSON, None
                payload = error_body("internal error while running the model; see server log")
            # The shadow gets a copy once the answer is sent: it never delays the client.
            background = None
            if shadow is not None and status == 200 and inputs is not None and results is not None:
                background = BackgroundTask(self._shadow, shadow, inputs, rows, results, protocol)
            return Response(payload, status_code=status, media_type=media_type, headers=headers,
                            background=background)
        finally:
            self._in_flight -= 1
            self._account(served, model_label, version_label, protocol, status,
                          time.perf_counter() - started, inputs, results)

    async def _shadow(self, shadow: ServedModel, inputs: dict, rows: int, answered: dict,
                      protocol: str) -> None:
        """Run a request's inputs on the shadow version and account for it like any version's
        request (latency, status, sampled rows), plus how often it agrees with production."""
        started = time.perf_counter()
        status, results, compared = 500, None, None
        try:
            conformed, rows = shadow.model.validate(inputs)
            results = await shadow.batcher.submit(conformed, rows)
            compared = agreement(answered, results)
            status = 200
        except InferenceError as exc:
            status = exc.status_code
        except Exception:
            logger.exception("shadow %s/%s failed", shadow.model.name, shadow.model.version)
        self._account(shadow, shadow.model.name, shadow.model.version, protocol, status,
                      time.perf_counter() - started, inputs, results, compared)

    async def _receive(
        self, request: Request, model: OnnxModel, header_length: int | None
    ) -> tuple[ParsedRequest, dict, int]:
        """Read, judge and decode the body, refusing it as early and as cheaply as it can be:
        from Content-Length by the size limits (413) before anything is read, then from its JSON
        header by the model's signature (400) before any tensor data is read on; a body over
        LARGE_BODY_BYTES is decoded on a worker thread."""
        s = self.settings
        declared = _content_length(request)
        if header_length is None:  # all JSON: parsing it is decoding it
            hint = "; send large tensors as binary data"
            body = await _read(request, s.max_json_body_bytes, declared, "JSON body", hint)
            return await self._decode_maybe_off_loop(len(body), self._decode_json, model, body)
        if header_length > s.max_json_body_bytes:
            raise PayloadTooLarge(
                f"JSON header of {header_length} bytes exceeds the limit of "
                f"{s.max_json_body_bytes} (max_json_body_bytes)"
            )
        if declared is None:  # chunked: no length to judge the header by until the end
            body = await _read(request, s.max_body_bytes, None, "request body")
            header, binary = codecs.split_body(body, header_length)
            parsed, rows = self._judge(model, header, len(binary))
        else:
            if header_length > declared:
                raise BadRequest(
                    f"Inference-Header-Content-Length {header_length} is outside the body of "
                    f"{declared} bytes"
                )
            if declared > s.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body of {declared} bytes exceeds the limit of {s.max_body_bytes}"
                )
            parsed, rows, body = await self._read_judging(
                request, model, header_length, declared
            )
            binary = memoryview(body)[header_length:]
        return await self._decode_maybe_off_loop(
            len(body), self._decode_binary, model, parsed, rows, binary
        )

    async def _read_judging(
        self, request: Request, model: OnnxModel, header_length: int, declared: int
    ) -> tuple[ParsedRequest, int, bytearray]:
        """The body of Content-Length `declared`, its header judged as soon as it has arrived:
        a request the model cannot take is refused without reading the rest (the server
        discards it)."""
        body = bytearray()
        judged: tuple[ParsedRequest, int] | None = None
        async for chunk in request.stream():
            body += chunk
            if len(body) > declared:
                raise BadRequest(f"request body is longer than its Content-Length {declared}")
            if judged is None and len(body) >= header_length:
                judged = self._judge(model, bytes(body[:header_length]), declared - header_length)
        if len(body) != declared or judged is None:
            raise BadRequest(f"request body ended after {len(body)} of {declared} bytes")
        return *judged, body

    def _judge(
        self, model: OnnxModel, header: bytes | bytearray, binary_length: int
    ) -> tuple[ParsedRequest, int]:
        """The JSON header parsed, and what it declares checked against the signature; with
        the request's row count."""
        parsed = codecs.parse_header(header, binary_length)
        rows = model.check_declared((d.name, d.datatype, d.shape) for d in parsed.inputs)
        if parsed.outputs is not None:
            model.select_outputs([o.name for o in parsed.outputs])
        return parsed, rows

    def _decode_json(self, model: OnnxModel, body: bytearray) -> tuple[ParsedRequest, dict, int]:
        parsed, rows = self._judge(model, body, 0)
        return self._decode_binary(model, parsed, rows, b"")

    def _decode_binary(
        self, model: OnnxModel, parsed: ParsedRequest, rows: int, binary: memoryview | bytes
    ) -> tuple[ParsedRequest, dict, int]:
        # decode_inputs builds each array with exactly the name, datatype and shape the header
        # declared, which _judge has checked: conform them without checking them again.
        raw = codecs.decode_inputs(parsed, binary, self.settings.max_bytes_elements)
        return parsed, model.conform(raw), rows

    async def _decode_maybe_off_loop(self, size: int, decode: Any, *args: Any) -> Any:
        if size <= LARGE_BODY_BYTES:
            return decode(*args)
        return await asyncio.get_running_loop().run_in_executor(self._decoder, decode, *args)

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
        agreed: tuple[int, int] | None = None,
    ) -> None:
        """Metrics and the monitor's sample for every request, answered or cancelled."""
        self.metrics.request_done(model, version, protocol, status, elapsed)
        if self.samples is None or served is None:
            return
        if status == 200 and served.has_profile:
            self.samples.record(model, version, elapsed, status, inputs, results, agreement=agreed)
        else:  # a shadow without a profile still reports how often it agrees
            self.samples.record(model, version, elapsed, status, agreement=agreed)
        assert self.monitor_link is not None
        self.monitor_link.start()


def _accelerators() -> dict[str, list[str]]:
    """The accelerator ids Ray assigned to this replica, by kind ({"GPU": ["0"]})."""
    return {k: v for k, v in ray.get_runtime_context().get_accelerator_ids().items() if v}


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


async def _read(
    request: Request, limit: int, declared: int | None, what: str, hint: str = ""
) -> bytearray:
    """A whole body of at most `limit` bytes: 413 from Content-Length before reading, or as soon
    as the bytes read pass the limit."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"{what} of {declared} bytes exceeds the limit of {limit}{hint}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes{hint}")
    return body


def build_asgi_app(server: ModelServer) -> Starlette:
    """Plain Starlette routes (no per-request schema work) bound to one ModelServer, behind the
    bearer-token guard."""
    s = server
    # Inference first: Ray names each request's route by scanning this list in order.
    routes = [
        Route("/v2/models/{model}/infer", s.infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}/infer", s.infer, methods=["POST"]),
        Route("/v2", s.server_metadata, methods=["GET"]),
        Route("/v2/health/live", s.live, methods=["GET"]),
        Route("/v2/health/ready", s.ready, methods=["GET"]),
        Route("/v2/vigil/batching", s.batching_state, methods=["GET"]),
        Route("/v2/models/{model}", s.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/ready", s.model_ready, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}", s.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", s.model_ready, methods=["GET"]),
        *s.admin.routes(),
    ]
    guard = s.door.guard(serving_scope, on_reject=s.metrics.auth_rejected)
    return web_app(routes, [guard, Middleware(InferFastPath, handler=s.infer)])


class InferFastPath:
    """ASGI middleware inside the token guard: POST .../infer goes straight to the handler,
    skipping Starlette's route scan and per-route wrappers (about a sixth of Vigil's own time per
    request for a small model, README "Speed"); the handler answers every error itself. Any
    other request, or a path that only looks like an inference route, goes on to the router."""

    def __init__(self, app: Any, handler: Any) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        params = (infer_path_params(route_path(scope))
                  if scope["type"] == "http" and scope["method"] == "POST" else None)
        if params is None:
            await self.app(scope, receive, send)
            return
        scope["path_params"] = params
        response = await self.handler(Request(scope, receive))
        await response(scope, receive, send)


def infer_path_params(path: str) -> dict[str, str] | None:
    """{'model': ..., ['version': ...]} for /v2/models/{model}[/versions/{version}]/infer (a
    route_path), matched as Starlette's routes match it (no segment empty); None for any other
    path."""
    parts = path.split("/")
    if len(parts) == 5 and parts[4] == "infer":
        params = {"model": parts[3]}
    elif len(parts) == 7 and parts[6] == "infer" and parts[4] == "versions" and parts[5]:
        params = {"model": parts[3], "version": parts[5]}
    else:
        return None
    if parts[0] or parts[1] != "v2" or parts[2] != "models" or not parts[3]:
        return None
    return params



ModelServerDeployment = serve.deployment(name="ModelServer")(serve.ingress()(ModelServer))
