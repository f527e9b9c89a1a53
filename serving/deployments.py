"""The serving replica: a Ray Serve deployment that hosts every model and its V2 HTTP routes."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import ray
from ray import serve
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from serving import codecs, grpc_threads
from serving.admin import Admin
from serving.agreement import agreement
from serving.autoscale import WORKING_REQUESTS
from serving.clients import ClientCap
from serving.fast_path import InferFastPath
from serving.feedback import FEEDBACK, REQUEST_ID_HEADER, is_feedback_path, post_labels
from serving.follower import AliasFollower
from serving.grpc_service import GrpcInference
from serving.intake import Intake, Received, declared_length
from serving.metrics import UNKNOWN_MODEL, replica_metrics
from serving.model_set import ModelSet
from serving.outcome import Outcome
from serving.served import ServedModel
from serving.monitor_link import MonitorLink
from serving.prediction_log import PredictionLog
from serving.protocol import (
    HEADER_LENGTH,
    SERVER_EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    BodyTimeout,
    InferenceError,
    ModelFault,
    NotLoaded,
    Reason,
)
from serving.router import Route as ModelRoute
from serving.sampling import SampleBuffer
from serving.settings import BatchSettings, ServerSettings
from vigil.adapters.boot import Door, web_app
from vigil.adapters.openapi import with_document
from vigil.adapters.web import JSON, OPEN, error_response, json_response, request_actor
from vigil.core.http_api import OPENAPI_PATH
from vigil.core.repository import RepositoryError

logger = logging.getLogger("vigil.server")

BINARY = "application/octet-stream"
T = TypeVar("T")
CANCELLED = 499  # nginx's "client closed request": cancelled before Vigil could answer


def serving_scope(path: str) -> str | None:
    """The token scope a route of this app needs ('' when open; None: any valid token)."""
    if path in ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready", OPENAPI_PATH):
        return OPEN
    if path.startswith("/v2/models/"):
        return FEEDBACK if is_feedback_path(path) else "infer"
    if path.startswith("/v2/vigil/"):
        return "monitor"
    if path.startswith("/v2/repository"):
        return "admin"
    return None


class ModelServer(GrpcInference):
    """Loads the repository's models at start (the replica is ready once they are loaded) and
    answers the Open Inference Protocol, over HTTP and over gRPC (the RPC methods of
    GrpcInference, through one core). Batching knobs arrive through user_config."""

    monitor_link: MonitorLink | None = None  # sends the sampled rows (Ray); None: they stay

    def __init__(self, settings: dict[str, Any]) -> None:
        grpc_threads.install(self)  # before Ray starts this replica's servers
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
        self.metrics = replica_metrics()
        self.grpc_guard = self.door.grpc_guard(self.metrics.auth_rejected)
        if not settings.model_repository.is_dir():
            raise RepositoryError(f"model repository {settings.model_repository} does not exist")
        self.batching = settings.batching
        self._in_flight = 0  # inference requests this replica is handling now
        self._background: set[asyncio.Task] = set()  # gRPC's follow-up runs, held until done
        self.models = ModelSet(settings.model_repository, settings.models, settings.runtime,
                               self.batching, settings.loading)
        # Large bodies are decoded here, two at a time: off the event loop, and bounded.
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vigil-decode")
        self.intake = Intake(settings, self._decoder)
        door = settings.front_door
        self.clients = ClientCap(door.max_in_flight_per_client, door.trusted_proxies)
        sampling = settings.sampling
        self.samples: SampleBuffer | None = None
        self._compare_share = sampling.canary_agreement_share if sampling.enabled else 0.0
        self._compare_draw = random.random
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
        # known(), not published: a model whose files cannot be read is reported unavailable
        # (index, metadata, metric, log) while the others serve; it fails no deploy.
        missing = set(self.settings.models or ()) - self.models.known()
        if missing:
            raise RepositoryError(
                f"models not found in {self.settings.model_repository}: {sorted(missing)}")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply new batching knobs live; called by Serve on deploy without restarting."""
        self.batching = BatchSettings.model_validate(user_config or {})
        self.models.reconfigure(self.batching)
        logger.info("batching now %s", self.batching.model_dump())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom autoscaling metrics: the inference requests this replica is
        working on, leaving out those whose body is still arriving (a slow or stalled client is
        no work, and must not scale the deployment up; serving.autoscale reads this)."""
        return {WORKING_REQUESTS: float(self._in_flight - self.intake.deadlines.receiving)}

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
        latency). A client already at its cap of requests in flight is refused first: 429."""
        raw_header_length = request.headers.get(HEADER_LENGTH)
        outcome = Outcome(time.perf_counter(), "json" if raw_header_length is None else "binary")
        client = self.clients.identify(request.scope, request_actor(request.scope))
        if not self.clients.admit(client):
            return self._refuse_client(outcome)
        try:
            return await self._accounted(outcome,
                                         self._answer(request, raw_header_length, outcome))
        finally:
            self.clients.leave(client)

    async def _accounted(self, outcome: Outcome, answer: Awaitable[T]) -> T:
        """Await an inference request's answer (HTTP's or gRPC's), counted in flight, and
        account for it once, whatever it came to."""
        self._in_flight += 1
        try:
            return await answer
        except asyncio.CancelledError:
            outcome.end(CANCELLED, Reason.CANCELLED)
            raise
        finally:
            self._in_flight -= 1
            self._account(outcome)
            outcome.let_go()

    def _refuse_client(self, outcome: Outcome) -> Response:
        return error_response(429, self._client_refused(outcome), {"Retry-After": "1"})

    def _client_refused(self, outcome: Outcome) -> str:
        """Account a request refused at its client's cap (HTTP's or gRPC's); why, to say."""
        self.metrics.refused("client_cap")
        outcome.end(429, Reason.CLIENT)
        self._account(outcome)
        return (f"this client already has {self.clients.limit} inference requests in flight on "
                "this replica (front_door.max_in_flight_per_client); retry when one has been "
                "answered")

    async def _answer(self, request: Request, raw_header_length: str | None,
                      outcome: Outcome) -> Response:
        """The response, whatever happens; the inference fast path answers errors here itself
        (the app's exception handlers serve the routes Starlette dispatches)."""
        try:
            payload, headers = await self._run(request, raw_header_length, outcome)
        except ClientDisconnect:  # the client left while sending its body
            self.metrics.refused("client_left")
            outcome.end(CANCELLED, Reason.CANCELLED)
            return error_response(CANCELLED, "the client closed the request before its body "
                                  "arrived")
        except Exception as exc:  # noqa: BLE001 - every failure is answered, a bug as 500
            return error_response(*self._failed(exc, outcome, request.path_params["model"]))
        outcome.end(200, Reason.OK)
        background = None
        follow_ups = self._follow_ups(outcome)
        if follow_ups:
            background = BackgroundTasks()
            for work, args in follow_ups:
                background.add_task(work, *args)
        binary = headers is not None and HEADER_LENGTH in headers
        return Response(payload, media_type=BINARY if binary else JSON,
                        headers=headers, background=background)

    def _follow_ups(self, outcome: Outcome) -> list[tuple[Callable[..., Awaitable[None]],
                                                          tuple]]:
        """What runs once an answered request's answer is sent (HTTP's and gRPC's): a copy for
        the shadow, and production answering a share of the canary's requests to compare;
        neither delays the client."""
        out: list[tuple[Callable[..., Awaitable[None]], tuple]] = []
        if outcome.shadow is not None:
            out.append((self._shadow, (outcome.shadow, outcome)))
        production = outcome.production
        if production is not None and self._compare_draw() < self._compare_share:
            out.append((self._compare, (production, outcome)))
        return out

    def _failed(self, exc: Exception, outcome: Outcome, model: str) -> tuple[int, str]:
        """The status and message a failed inference request is answered with (HTTP's, or
        mapped to a gRPC code), ended on its outcome; a model's fault logged, a bug with its
        traceback."""
        if isinstance(exc, InferenceError):
            if isinstance(exc, BodyTimeout):
                self.metrics.refused("body_timeout")
            elif isinstance(exc, ModelFault):
                logger.warning("%s: %r", exc, exc.__cause__)
            outcome.end(exc.status_code, exc.reason)
            return exc.status_code, str(exc)
        logger.exception("infer %s failed", model, exc_info=exc)
        outcome.end(500, Reason.INTERNAL)
        return 500, "internal error while running the model; see server log"

    async def _route(self, name: str, version: str | None, header: Callable[[str], str | None],
                     outcome: Outcome) -> ModelRoute[ServedModel]:
        """The version that answers (canary and sticky key by `header`), held on `outcome`."""
        try:
            route = self.models.router.resolve(name, version, header)
        except NotLoaded:  # a published version not loaded here (LoadingSettings): load it
            assert version is not None
            await asyncio.to_thread(self.models.load_version, name, version)
            route = self.models.router.resolve(name, version, header)
        outcome.hold(route)
        return route

    async def _execute(self, served: ServedModel, received: Received,
                       outcome: Outcome) -> tuple[list[tuple[str, bool]], dict[str, Any]]:
        """Run a received request on its version (batched as it declares): the outputs wanted,
        (name, binary), and the results."""
        parsed, outcome.inputs, outcome.rows = received.parsed, received.inputs, received.rows
        if parsed.outputs is None:
            wanted = [(n, parsed.binary_output_default) for n in served.model.output_names]
        else:
            wanted = [(o.name, o.binary) for o in parsed.outputs]
        outcome.results = results = await served.batcher.submit(
            outcome.inputs, outcome.rows, alone=self._in_flight == 1)
        return wanted, results

    async def _run(self, request: Request, raw_header_length: str | None,
                   outcome: Outcome) -> tuple[bytes, dict[str, str] | None]:
        """Route, read, run and encode one request: the body and, for binary outputs, the
        header that gives the JSON part's length."""
        name, version = request.path_params["model"], request.path_params.get("version")
        route = await self._route(name, version, request.headers.get, outcome)
        model = route.target.model
        header_length = codecs.parse_header_length(raw_header_length)
        received = await self.intake.receive(
            request.stream(), declared_length(request.headers.get("content-length")),
            header_length, model)
        wanted, results = await self._execute(route.target, received, outcome)
        parsed = received.parsed
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

    async def _compare(self, production: ServedModel, answered: Outcome) -> None:
        """Production answers the inputs a canary answered, off the response path: how many rows
        agree is counted for the canary's window (the rollout's agreement check), not as a
        request of either version."""
        served = answered.served
        if (production.model.session is None or served is None or self.samples is None
                or answered.inputs is None or answered.results is None):
            return  # released since the request was routed
        production.users += 1
        try:
            conformed, rows = production.model.validate(answered.inputs)
            results = await production.batcher.submit(conformed, rows)
            self.samples.agreed(served.model.name, served.model.version,
                                agreement(results, answered.results))
        except InferenceError as exc:  # inputs production refuses: nothing to compare
            logger.debug("comparing %s with %s: %s", served.label, production.label, exc)
        except Exception:
            logger.exception("comparing %s with production %s failed", served.label,
                             production.label)
        finally:
            production.users -= 1

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
                                outcome.results, agreement=agreed,
                                request_id=outcome.request_id)
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
    bearer-token guard, with their OpenAPI document; InferenceError answered once, by the app's
    handler."""
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
    # GET /v2/openapi.json (open, as /v2 is): the document of every route, the monitor's too.
    return web_app(with_document(routes, serving_scope, SERVER_VERSION),
                   [guard, Middleware(InferFastPath, handler=s.infer)],
                   handlers={InferenceError: inference_error})


ModelServerDeployment = serve.deployment(name="ModelServer")(serve.ingress()(ModelServer))
