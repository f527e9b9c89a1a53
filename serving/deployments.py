"""The serving replica: a Ray Serve deployment that hosts every model and its V2 HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from serving.admin import Admin
from serving.agreement import agreement
from serving.fast_path import InferFastPath
from serving.feedback import FEEDBACK, REQUEST_ID_HEADER, is_feedback_path, post_labels
from serving.follower import AliasFollower
from serving.intake import Intake
from serving.metrics import UNKNOWN_MODEL, replica_metrics
from serving.model_set import ModelSet
from serving.served import ServedModel
from serving.monitor_link import MonitorLink
from serving.prediction_log import PredictionLog
from serving.protocol import (
    HEADER_LENGTH,
    SERVER_EXTENSIONS,
    InferenceError,
    ModelFault,
    NotLoaded,
    Reason,
)
from serving.router import Route as ModelRoute
from serving.sampling import SampleBuffer
from serving.settings import BatchSettings, ServerSettings
from vigil.adapters.boot import Door, web_app
from vigil.adapters.web import JSON, OPEN, error_response, json_response
from vigil.core.repository import RepositoryError

logger = logging.getLogger("vigil.server")

BINARY = "application/octet-stream"
SERVER_NAME = "vigil"
SERVER_VERSION = package_version("vigil")
CANCELLED = 499  # nginx's "client closed request": cancelled before Vigil could answer


def serving_scope(path: str) -> str | None:
    """The token scope a route of this app needs ('' when open; None: any valid token)."""
    if path in ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready"):
        return OPEN
    if path.startswith("/v2/models/"):
        return FEEDBACK if is_feedback_path(path) else "infer"
    if path.startswith("/v2/vigil/"):
        return "monitor"
    if path.startswith("/v2/repository"):
        return "admin"
    return None


@dataclass(slots=True)
class Outcome:
    """What one inference request came to, filled in as it goes and accounted once: the version
    that answers (held from routing to accounting, so that it is not closed under the request)
    and the shadow that gets a copy, the request's inputs and outputs for the monitor's sample,
    and its status with the reason."""

    started: float
    protocol: str
    served: ServedModel | None = None
    shadow: ServedModel | None = None
    inputs: dict | None = None
    results: dict | None = None
    request_id: str | None = None  # set when the answer is recorded for labels (feedback on)
    rows: int = 0
    status: int = 0  # 0 until the request ends: answered, refused or cancelled
    reason: Reason = Reason.OK

    def hold(self, route: ModelRoute[ServedModel]) -> None:
        self.served, self.shadow = route.target, route.shadow
        route.target.users += 1
        route.target.last_active = self.started
        if route.shadow is not None:
            route.shadow.users += 1

    def end(self, status: int, reason: Reason) -> None:
        self.status, self.reason = status, reason

    def let_go(self) -> None:
        """Release the holds: the versions may be closed once nothing else holds them."""
        if self.served is not None:
            self.served.users -= 1
        if self.shadow is not None:
            self.shadow.users -= 1
            self.shadow = None


class ModelServer:
    """Loads the repository's models at start (the replica is ready once they are loaded) and
    answers the Open Inference Protocol. Batching knobs arrive through user_config."""

    monitor_link: MonitorLink | None = None  # sends the sampled rows (Ray); None: they stay

    def __init__(self, settings: dict[str, Any]) -> None:
        self._setup(ServerSettings(**settings))
        # Aliases: read from the repository now, followed live after (every replica the same).
        self.follower = AliasFollower(self.models, _replica_id())
        self._check_models()
        self.follower.start()
        self.admin = Admin(self.models, self.follower.board, self.settings.alias_apply_timeout_s)
        if self.samples is not None:
            self.monitor_link = MonitorLink(self.settings.sampling, self.samples, self.metrics,
                                            self.predictions)
        logger.info("serving %s", [f"{n}/{v}" for n, v, _ in self.models.router])

    def _setup(self, settings: ServerSettings) -> None:
        """Everything but Ray's parts (the alias board, the monitor link): what the handlers
        use."""
        self.settings = settings
        self.door = Door.open(settings)  # refuses to start open beyond its own host
        if not settings.model_repository.is_dir():
            raise RepositoryError(f"model repository {settings.model_repository} does not exist")
        self.batching = settings.batching
        self._in_flight = 0  # inference requests this replica is handling now
        self.models = ModelSet(settings.model_repository, settings.models, settings.runtime,
                               self.batching, settings.loading)
        self.metrics = replica_metrics()
        # Large bodies are decoded here, two at a time: off the event loop, and bounded.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-decode")
        self.intake = Intake(settings, self._decoder)
        sampling = settings.sampling
        self.samples: SampleBuffer | None = None
        if sampling.enabled:
            self.samples = SampleBuffer(
                sampling.sample_rate, sampling.buffer_rows, sampling.buffer_requests,
                sampling.max_rows_per_request,
            )
        # What labels join to travels with the samples: no sampling, no feedback.
        self.predictions: PredictionLog | None = None
        if sampling.enabled and settings.feedback.enabled:
            self.predictions = PredictionLog(settings.feedback.buffer_requests)

    def _check_models(self) -> None:
        missing = set(self.settings.models or ()) - set(self.models.published)
        if missing:
            raise RepositoryError(
                f"models not found in {self.settings.model_repository}: {sorted(missing)}")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching knobs live; called by Serve on deploy without restarting."""
        self.batching = BatchSettings.model_validate(user_config or {})
        self.models.reconfigure(self.batching)
        logger.info("batching now %s", self.batching.model_dump())

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_asgi_app(self)

    def __del__(self) -> None:
        """Serve calls this as the replica shuts down: stop the flush loop and the threads."""
        for part, stop in (("monitor_link", "stop"), ("follower", "stop"), ("models", "close")):
            held = getattr(self, part, None)
            if held is not None:
                getattr(held, stop)()
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
        """Scope infer: what a V2 client needs of a version (production's without one), and
        no more (vigil.core.repository.version_metadata)."""
        params = request.path_params
        return json_response(self.models.metadata(params["model"], params.get("version")))

    async def version_record(self, request: Request) -> Response:
        """Scope admin: a version's whole record, its lineage and metadata included, from
        model.yaml as it is now (the model gate adds its verdict after publishing)."""
        params = request.path_params
        return json_response(await asyncio.to_thread(
            self.models.record, params["model"], params["version"]))

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        version = request.path_params.get("version")
        router = self.models.router
        served = router.resolve(name, version).target if version else router.production(name)
        return json_response({"name": name, "version": served.model.version, "ready": True})

    async def batching_state(self, request: Request) -> Response:
        """Vigil extension: the live batching knobs, each version's declaration and execution
        providers, and which replica answered (with the accelerators Ray gave it)."""
        context = _replica_context()
        return json_response(
            {
                "replica": context.replica_id.unique_id if context else None,
                "accelerators": _accelerators() if context else {},
                "batching": self.batching.model_dump(),
                "loading": self.settings.loading.model_dump(),
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
        """POST .../infer. Every request is accounted once, in `finally`: answered, refused, or
        cancelled (the client went away or Ray's request_timeout_s ran out: 499, with its
        latency)."""
        raw_header_length = request.headers.get(HEADER_LENGTH)
        outcome = Outcome(time.perf_counter(), "json" if raw_header_length is None else "binary")
        self._in_flight += 1
        try:
            return await self._answer(request, raw_header_length, outcome)
        except asyncio.CancelledError:
            outcome.end(CANCELLED, Reason.CANCELLED)
            raise
        finally:
            self._in_flight -= 1
            self._account(outcome)
            outcome.let_go()

    async def _answer(self, request: Request, raw_header_length: str | None,
                      outcome: Outcome) -> Response:
        """The response, whatever happens; the inference fast path answers errors here itself
        (the app's exception handlers serve the routes Starlette dispatches)."""
        try:
            payload, headers = await self._run(request, raw_header_length, outcome)
        except InferenceError as exc:
            if isinstance(exc, ModelFault):
                logger.warning("%s: %r", exc, exc.__cause__)
            outcome.end(exc.status_code, exc.reason)
            return error_response(exc.status_code, str(exc))
        except Exception:
            logger.exception("infer %s failed", request.path_params["model"])
            outcome.end(500, Reason.INTERNAL)
            return error_response(500, "internal error while running the model; see server log")
        outcome.end(200, Reason.OK)
        # The shadow gets a copy once the answer is sent: it never delays the client.
        background = None
        if outcome.shadow is not None:
            background = BackgroundTask(self._shadow, outcome.shadow, outcome)
        binary = headers is not None and HEADER_LENGTH in headers
        return Response(payload, media_type=BINARY if binary else JSON,
                        headers=headers, background=background)

    async def _run(self, request: Request, raw_header_length: str | None,
                   outcome: Outcome) -> tuple[bytes, dict[str, str] | None]:
        """Route, read, run and encode one request: the body and, for binary outputs, the
        header that gives the JSON part's length."""
        name, version = request.path_params["model"], request.path_params.get("version")
        try:
            route = self.models.router.resolve(name, version, request.headers.get)
        except NotLoaded:  # a published version not loaded here (LoadingSettings): load it
            assert version is not None
            await asyncio.to_thread(self.models.load_version, name, version)
            route = self.models.router.resolve(name, version, request.headers.get)
        outcome.hold(route)
        model = route.target.model
        header_length = codecs.parse_header_length(raw_header_length)
        received = await self.intake.receive(request.stream(), request.headers.get(
            "content-length"), header_length, model)
        parsed, outcome.inputs, outcome.rows = received.parsed, received.inputs, received.rows
        if parsed.outputs is None:
            wanted = [(n, parsed.binary_output_default) for n in model.output_names]
        else:
            wanted = [(o.name, o.binary) for o in parsed.outputs]
        outcome.results = results = await route.target.batcher.submit(
            outcome.inputs, outcome.rows, alone=self._in_flight == 1)
        request_id = parsed.id
        echoed = request.headers.get(REQUEST_ID_HEADER)  # Ray Serve's own (or the client's)
        if self.predictions is not None:  # every answer can be labelled: it gets an id
            request_id = outcome.request_id = request_id or echoed or str(uuid.uuid4())
        payload, json_length = codecs.encode_response(
            model.name, model.version, request_id,
            [(n, model.outputs[n].datatype, results[n], binary) for n, binary in wanted],
        )
        headers = None if json_length is None else {HEADER_LENGTH: str(json_length)}
        if outcome.request_id is not None and parsed.id is None and echoed is None:
            # Ray Serve answers X-Request-Id itself when it is in front (it is the id chosen)
            headers = {**(headers or {}), REQUEST_ID_HEADER: outcome.request_id}
        return payload, headers

    async def _shadow(self, shadow: ServedModel, answered: Outcome) -> None:
        """Run an answered request's inputs on the shadow version and account for it like any
        version's request (latency, status, sampled rows), plus how often it agrees with the
        answer. The client's request was accepted: a shadow that cannot take its inputs (its
        signature differs) is the deployment's fault, 502 shadow_refused, never a 4xx."""
        if shadow.model.session is None or answered.inputs is None or answered.results is None:
            return  # released since the request was routed
        outcome = Outcome(time.perf_counter(), answered.protocol, served=shadow,
                          inputs=answered.inputs)
        shadow.users += 1
        compared = None
        try:
            conformed, outcome.rows = shadow.model.validate(answered.inputs)
            outcome.results = await shadow.batcher.submit(conformed, outcome.rows)
            compared = agreement(answered.results, outcome.results)
            outcome.end(200, Reason.OK)
        except InferenceError as exc:
            if exc.status_code < 500:  # inputs its production version took: the shadow's fault
                outcome.end(502, Reason.SHADOW_REFUSED)
            else:
                outcome.end(exc.status_code, exc.reason)
        except Exception:
            logger.exception("shadow %s failed", shadow.label)
            outcome.end(500, Reason.INTERNAL)
        finally:
            self._account(outcome, compared)
            outcome.let_go()

    async def feedback(self, request: Request) -> Response:
        """POST /v2/models/{model}/feedback: labels for the monitor's join store
        (serving.feedback)."""
        link, log = self.monitor_link, self.predictions
        doc, status = await post_labels(
            request.path_params["model"], request.query_params.multi_items(), request.stream(),
            published=self.models.published, max_bytes=self.settings.max_json_body_bytes,
            unsent=None if log is None else log.drain,
            monitor=lambda: None if link is None else link.monitor_handle())
        return json_response(doc, status=status)

    def _account(self, outcome: Outcome, agreed: tuple[int, int] | None = None) -> None:
        """Metrics and the monitor's sample for every request, answered or cancelled."""
        elapsed = time.perf_counter() - outcome.started
        served, status = outcome.served, outcome.status
        if served is None:
            self.metrics.request_done(UNKNOWN_MODEL, "", outcome.protocol, status,
                                      outcome.reason, elapsed)
            return
        name, version = served.model.name, served.model.version
        self.metrics.request_done(name, version, outcome.protocol, status, outcome.reason,
                                  elapsed)
        if self.samples is None:
            return
        if status == 200 and served.has_profile:
            self.samples.record(name, version, elapsed, status, outcome.inputs,
                                outcome.results, agreement=agreed)
            if (self.predictions is not None and outcome.request_id is not None
                    and outcome.results is not None):
                self.predictions.record(name, version, outcome.request_id, time.time(),
                                        outcome.results)
        else:  # a shadow without a profile still reports how often it agrees
            self.samples.record(name, version, elapsed, status, agreement=agreed)
        if self.monitor_link is not None:
            self.monitor_link.start()


def _replica_context() -> Any:
    """Serve's context of this replica; None outside one."""
    try:
        return serve.get_replica_context()
    except Exception:  # noqa: BLE001 - Serve raises outside a replica
        return None


def _replica_id() -> str:
    context = _replica_context()
    return context.replica_id.to_full_id_str() if context else f"local-{os.getpid()}"


def _accelerators() -> dict[str, list[str]]:
    """The accelerator ids Ray assigned to this replica, by kind ({"GPU": ["0"]})."""
    return {k: v for k, v in ray.get_runtime_context().get_accelerator_ids().items() if v}


async def inference_error(request: Request, exc: Exception) -> Response:
    """An InferenceError raised in a route Starlette dispatches: its status and message."""
    assert isinstance(exc, InferenceError)
    return error_response(exc.status_code, str(exc))


def build_asgi_app(server: ModelServer) -> Starlette:
    """Plain Starlette routes (no per-request schema work) bound to one ModelServer, behind the
    bearer-token guard; InferenceError answered once, by the app's handler."""
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
        Route("/v2/models/{model}/feedback", s.feedback, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", s.model_metadata, methods=["GET"]),
        Route("/v2/models/{model}/versions/{version}/ready", s.model_ready, methods=["GET"]),
        Route("/v2/repository/models/{model}/versions/{version}", s.version_record,
              methods=["GET"]),
        *s.admin.routes(),
    ]
    guard = s.door.guard(serving_scope, on_reject=s.metrics.auth_rejected)
    return web_app(routes, [guard, Middleware(InferFastPath, handler=s.infer)],
                   handlers={InferenceError: inference_error})


ModelServerDeployment = serve.deployment(name="ModelServer")(serve.ingress()(ModelServer))
