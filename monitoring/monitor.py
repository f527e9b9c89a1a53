"""The Monitor deployment: sample intake by handle, metrics, drift JSON and HTML reports by HTTP.

The only monitoring module that knows Ray. One replica (its windows are its state). Every read
and write of the state runs on one worker thread, in arrival order, so a window evaluation
(~20 ms) never blocks the event loop and needs no lock. Evidently reports run on a second worker
thread, so a report's seconds of CPU never hold up sample intake; both threads run at SCHED_IDLE
priority (`_yield_cpu_to_serving`).

HTTP, under the application's route prefix (``/monitor``):

    GET /metrics                              Prometheus exposition (monitoring.collector)
    GET /v1/status                            replica, settings, monitored versions
    GET /v1/models/{m}/drift[?version=V][&windows=N]   latest window in full + last N summaries
    GET /v1/models/{m}/report[?version=V]     Evidently DataDriftPreset HTML of the last closed
                                              window with rows against the reference data
    GET /v1/models/{m}/rows[?version=V][&labelled=all|only]   that window's sampled rows as
                                              JSON columns, with each row's request id and
                                              ground-truth label where the join store has one
                                              (what a retraining job adds to its data)

Query parameters are checked by monitoring.queries. A report is built once per window
(monitoring.report_cache: concurrent requests share one build, builds run one at a time, at most
``report_cache_bytes`` kept) from at most ``report_max_rows`` rows of each side (the reference
data of the last ``MAX_REFERENCES`` versions reported on is kept), and kept gzip-compressed
(Evidently's page is ~5.8 MB, 3.5 MB of it its JavaScript bundle; gzip makes it ~1.5 MB): sent
as is to clients that accept gzip, decompressed for the others. The response header ``X-Vigil-Window`` names the window it describes.

Errors are ``{"error": ...}``: 400 bad query, 404 unknown model/version/route, 409 no profile,
reference or closed window with rows yet, 500 a bug (logged).

State follows the versions served: after closing due windows the ticker asks the service to
release versions no longer served (monitoring.service.sweep), then drops their reports and
reference data here.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from ray import serve
from ray.serve.exceptions import RayServeException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from monitoring.alerts import AlertEngine
from monitoring.collector import MonitorCollector
from monitoring.collector_labels import LabelCollector
from monitoring.collector_ops import AlertCollector, Held, RolloutCollector, StateCollector
from monitoring.label_join import LabelJoin
from monitoring.label_store import LabelStore
from monitoring.outbox import Outbox, Retention
from monitoring.queries import (
    BadQuery,
    accepts_gzip,
    parse_drift_query,
    parse_report_query,
    parse_rows_query,
)
from monitoring.report import drift_report_html, evenly_spaced, load_reference, reference_path
from monitoring.report_cache import Recent, ReportCache
from monitoring.rollouts import RolloutDriver
from monitoring.service import MonitorService, NotReady, ReportSource, UnknownModel
from monitoring.settings import MonitorAppSettings, MonitorSettings
from monitoring.webhooks import ActiveTarget, Deliverer, DeliveryStats
from vigil.adapters.alias_board import board, board_key
from vigil.adapters.boot import Door, web_app
from vigil.adapters.web import error_response, json_response

MAX_TICK_SLEEP_S = 60.0  # the longest the ticker sleeps, whatever the windows say
MAX_REFERENCES = 4  # reference data sets kept for reports (each report_max_rows rows at most)
logger = logging.getLogger("vigil.monitor")


def _yield_cpu_to_serving() -> None:
    """Run the monitor's statistics only on CPU time that inference leaves idle (Linux
    SCHED_IDLE for this thread). On a busy node samples then wait, and replicas drop and count
    the flushes the monitor is too busy to take, instead of inference slowing down."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted
        logger.info("monitor worker keeps normal CPU priority: %s", exc)


class Monitor:
    """Windows and evaluates the sample batches replicas send (``ingest``), per model version,
    against each version's reference profile. Window and drift settings are the user_config."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args = MonitorAppSettings(**args)
        self.door = Door.open(self.args)  # refuses to start open beyond its own host
        self.settings = MonitorSettings()
        self._loop: asyncio.AbstractEventLoop | None = None
        outbox = self.outbox = Outbox(self.args.outbox_file())
        logger.info("alert state and webhook outbox: %s", outbox.path)
        self.rollouts = RolloutDriver(
            self.args.model_repository, outbox, self.args.public_url, self._targets_for,
            on_change=self._aliases_changed, settings=self.settings.rollouts,
            notify=self._wake_delivery,
            quality=lambda *window: self.labels.rollout_quality(*window))  # labels, made below
        self.alerts = AlertEngine(outbox, self.args.public_url, time.time(),
                                  notify=self._wake_delivery,
                                  repository=self.args.model_repository,
                                  on_rollback=self._aliases_changed, rollouts=self.rollouts)
        self.service = MonitorService(self.args, self.settings, time.time(), alerts=self.alerts,
                                      rollouts=self.rollouts)
        feedback = self.args.feedback
        self.labels = LabelJoin(LabelStore(self.args.labels_file(), feedback.ttl_s,
                                           feedback.max_pending), self.service, feedback.settle_s)
        logger.info("served predictions and their labels: %s", self.labels.store.path)
        self.delivery_stats = DeliveryStats()
        self.deliverer = Deliverer(outbox, self.delivery_stats, retention=Retention(
            self.args.outbox_retention_s, self.args.outbox_max_events))
        self._delivery: asyncio.Task | None = None
        self._worker = ThreadPoolExecutor(
            1, thread_name_prefix="vigil-monitor", initializer=_yield_cpu_to_serving
        )
        self._report_worker = ThreadPoolExecutor(
            1, thread_name_prefix="vigil-report", initializer=_yield_cpu_to_serving
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(MonitorCollector(self.service.snapshots))
        self.registry.register(AlertCollector(
            self.alerts.firing, self.delivery_stats, lambda: list(self.deliverer.targets)
        ))
        self.registry.register(StateCollector(self._held))
        self.registry.register(RolloutCollector(self.rollouts.running,
                                                lambda: list(self.rollouts.checks_total.items())))
        self.registry.register(LabelCollector(
            self.labels.store, lambda: self.labels.latest(time.time()),
            lambda: [(*key, doc) for key, (_, doc) in self.labels.last_settled.items()],
            estimated=self.labels.latest_estimated))
        # Reference data of the versions reported on lately (on the report thread only).
        self._references: Recent[tuple[str, str], dict] = Recent(MAX_REFERENCES)
        self._reports = ReportCache(self.args.report_cache_bytes)  # on the event loop only
        self._report_size = self._reports.size()  # copied on the loop for each scrape
        self._ticker: asyncio.Task | None = None
        self._tick_wake = asyncio.Event()
        self._start_ticker()

    def _start_ticker(self) -> None:
        """The periodic tasks: closing time windows without traffic, and webhook delivery
        (started on the replica's event loop; re-started by any later call should they stop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._loop = loop
        if self._ticker is None or self._ticker.done():
            self._ticker = loop.create_task(self._tick_forever())
        if self._delivery is None or self._delivery.done():
            self._delivery = loop.create_task(self.deliverer.run())

    def _wake_delivery(self) -> None:
        """Events were committed (on the window thread): deliver now, not at the next poll."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.deliverer.wake)

    def _targets_for(self, event_type: str) -> tuple[str, ...]:
        """The webhook targets that want events of this type (the rules' targets)."""
        return tuple(t.name for t in self.alerts.targets if t.wants(event_type))

    def _aliases_changed(self, model: str) -> None:
        """The monitor changed `model`'s aliases (a rollout's decision or a rollback rule's, on
        the window thread, monitoring.changes): wake the serving
        replicas of this repository through the alias board, fire and forget. A failure is
        logged (the replicas then serve the old aliases until the next change reaches them)."""
        key = board_key(self.args.model_repository)

        def done(future: Any) -> None:
            if (exc := future.exception()) is not None:
                logger.error("the alias board did not take the news of %s's rollback: %s",
                             model, exc)

        board().bump.remote(key).future().add_done_callback(done)

    async def _tick_forever(self) -> None:
        """Close time windows when they are due. Without silence rules it sleeps until the
        earliest window's deadline (an idle monitor wakes once per window, not every tick_s);
        a reconfigure, which may shorten windows, wakes it."""
        while True:
            try:
                await asyncio.wait_for(self._tick_wake.wait(), self._tick_delay())
            except TimeoutError:
                pass
            self._tick_wake.clear()
            try:
                await self._on_worker(self.service.tick, time.time())
                await self._on_worker(self._judge_settled, time.time())
                await self._on_worker(self.labels.store.evict, time.time())
                await self._release(await self._on_worker(self.service.sweep, time.time()))
            except Exception:
                logger.exception("closing time windows or releasing versions failed")

    def _judge_settled(self, now: float) -> None:
        """Windows whose labels settled, or whose estimate is due: their quality to the label
        and estimated rules (worker thread)."""
        for model, version, window, quality in self.labels.settle(now):
            self.alerts.on_settled(model, version, window, quality, now)
        wanted = any(r.when.family == "estimated" for r in self.alerts.rules)
        for model, version, window, estimated in self.labels.estimate_due(now, wanted):
            self.alerts.on_estimated(model, version, window, estimated, now)

    async def _release(self, versions: list[tuple[str, str]]) -> None:
        """Forget the reports and reference data of versions the service released."""
        if versions:
            for version in versions:
                self._reports.drop(version)
            await self._on_report_worker(self._references.drop, versions)

    def _tick_delay(self) -> float:
        if self.service.needs_ticks():
            return self.args.tick_s
        deadline = self.service.next_deadline()
        if deadline is None:
            return MAX_TICK_SLEEP_S
        return min(max(deadline - time.time(), self.args.tick_s), MAX_TICK_SLEEP_S)

    def _held(self) -> Held:
        """What the monitor holds (read at scrape time, on the worker thread)."""
        return Held(versions=len(self.service.versions), released=self.service.released,
                    reports=self._report_size.reports, report_bytes=self._report_size.bytes,
                    outbox=self.delivery_stats.snapshot().outbox,
                    outbox_write_failures=self.outbox.write_failures())

    async def _on_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """New window and drift settings, live; a setting that misfits a profile is refused."""
        settings = MonitorSettings.model_validate(user_config or {})
        # Secrets come from the replica's environment; a target without one is refused.
        targets = {t.name: ActiveTarget(t, tuple(t.secrets(os.environ))) for t in settings.webhooks}
        await self._on_worker(self.service.reconfigure, settings, time.time())
        self.settings = settings
        self.deliverer.configure(targets)
        self._tick_wake.set()  # windows or rules may have changed: recompute the next tick
        self._start_ticker()
        logger.info("monitor settings now %s", settings.model_dump(exclude_defaults=True))

    async def ingest(self, batches: list[dict]) -> None:
        """Sample batches from serving replicas (see monitoring.service for their shape)."""
        self._start_ticker()
        await self._on_worker(self.service.ingest, batches, time.time())

    async def record_predictions(self, messages: list[Any]) -> None:
        """Answered requests from serving replicas, for the join store (monitoring.label_join)."""
        await self._on_worker(self.labels.record, messages, time.time())

    async def feedback(self, model: str, labels: list[tuple[str, Any]],
                       overwrite: bool) -> list[dict[str, str]]:
        """Labels from a replica's feedback route: each one's outcome, in order."""
        return await self._on_worker(self.labels.label, model, labels, overwrite, time.time())

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_asgi_app(self)

    # ------------------------------------------------------------------ HTTP

    async def metrics(self, request: Request) -> Response:
        self._report_size = self._reports.size()  # read on the loop, its owner; scraped on the worker
        body = await self._on_worker(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> Response:
        replica = _replica_id()

        def read() -> dict:
            return {
                "replica": replica,
                "settings": self.settings.model_dump(mode="json"),
                "args": self.args.model_dump(mode="json"),
                "versions": [
                    {"model": s.model, "version": s.version, "profile": s.profile_status,
                     "windows_evaluated": s.window.closed, "open_rows": s.window.rows}
                    for s in self.service.versions.values()
                ],
                # Models skipped at start because their files could not be read, with why
                # (until their samples find them mended).
                "unreadable": {m: why for m, why in self.service.unreadable.items()
                               if m not in self.service.models},
            }

        return json_response(await self._on_worker(read))

    async def drift(self, request: Request) -> Response:
        model = request.path_params["model"]
        query = parse_drift_query(request.query_params.multi_items())
        doc = await self._on_worker(self.service.drift_doc, model, query.version, query.windows)
        doc = await self._on_worker(self.labels.add_to, doc, time.time())
        return json_response(doc)

    async def _closed_window(self, request: Request) -> ReportSource:
        """The last closed window with rows that a report or rows request names (BadQuery,
        UnknownModel, NotReady: answered by the app's handlers)."""
        query = parse_report_query(request.query_params.multi_items())
        return await self._on_worker(
            self.service.report_source, request.path_params["model"], query.version, time.time(),
        )

    async def report(self, request: Request) -> Response:
        source = await self._closed_window(request)
        slot, index = (source.state.model, source.state.version), source.window.index
        try:
            body = await self._reports.get(
                slot, index, lambda: self._on_report_worker(self._build_report, source)
            )
        except NotReady:  # the reference data is missing: the app's handler answers 409
            raise
        except Exception:
            logger.exception("report for %s/%s failed", *slot)
            return error_response(500, "internal error while building the report; see the monitor log")
        headers = {"X-Vigil-Window": str(index), "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("accept-encoding")):
            return HTMLResponse(body, headers={**headers, "Content-Encoding": "gzip"})
        return HTMLResponse(await asyncio.to_thread(gzip.decompress, body), headers=headers)

    async def rows(self, request: Request) -> Response:
        """The sampled rows of the last closed window with rows, by profiled column, with their
        request ids and labels (monitoring.label_join.LabelJoin.rows_doc)."""
        query = parse_rows_query(request.query_params.multi_items())
        source = await self._on_worker(self.service.report_source, request.path_params["model"],
                                       query.version, time.time())
        doc = await self._on_worker(self.labels.rows_doc, source, query.labelled_only)
        headers = {"X-Vigil-Window": str(source.window.index)}
        return await asyncio.to_thread(json_response, doc, headers=headers)

    async def _on_report_worker(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._report_worker, fn, *args)

    def _build_report(self, source: ReportSource) -> bytes:
        """The gzip-compressed HTML report of one closed window (on the report thread)."""
        state, limit = source.state, self.args.report_max_rows
        key = (state.model, state.version)
        reference = self._references.get(key)
        if reference is None:
            # state.profile is not None: report_source() raised NotReady otherwise
            path = reference_path(state.profile, state.path)  # type: ignore[arg-type]
            if path is None or not path.exists():
                raise NotReady(f"the reference data of {key[0]}/{key[1]} is not available "
                               f"({path}); the report needs it")
            reference = load_reference(path, state.profile.names, limit)  # type: ignore[union-attr]
            self._references.put(key, reference)
        result = source.window.result
        drift_share = result.drift.drift_share if result else self.settings.drift_share
        started = time.perf_counter()
        html = drift_report_html(
            state.profile, reference,  # type: ignore[arg-type]  # not None, as above
            evenly_spaced(source.rows, limit), drift_share=drift_share,
        )
        body = gzip.compress(html.encode(), compresslevel=6)
        logger.info("report of %s/%s window %d: %d bytes of HTML, %d gzip-compressed, %.1f s",
                    key[0], key[1], source.window.index, len(html), len(body),
                    time.perf_counter() - started)
        return body


def _replica_id() -> str | None:
    """This Serve replica's id; None outside one (the app driven without Ray, in tests)."""
    try:
        context = serve.get_replica_context()
    except RayServeException:
        return None
    return context.replica_id.unique_id if context else None


def monitor_scope(path: str) -> str:
    """The token scope a route of the monitor needs: scraping needs `metrics` (which `monitor`
    also grants), everything else here reads sampled data or its statistics: `monitor`."""
    return "metrics" if path == "/metrics" else "monitor"


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        return error_response(status, str(exc))

    return handle


# What a request that cannot be answered gets, registered once for every route.
ERROR_STATUS: dict[type[Exception], int] = {BadQuery: 400, UnknownModel: 404, NotReady: 409}


def build_asgi_app(monitor: Monitor) -> Starlette:
    """Routes relative to the application's route prefix, bound to one Monitor."""
    m = monitor
    routes = [
        Route("/metrics", m.metrics, methods=["GET"]),
        Route("/v1/status", m.status, methods=["GET"]),
        Route("/v1/models/{model}/drift", m.drift, methods=["GET"]),
        Route("/v1/models/{model}/report", m.report, methods=["GET"]),
        Route("/v1/models/{model}/rows", m.rows, methods=["GET"]),
    ]
    handlers = {kind: _answer(status) for kind, status in ERROR_STATUS.items()}
    return web_app(routes, [m.door.guard(monitor_scope)], handlers)



MonitorDeployment = serve.deployment(name="Monitor")(serve.ingress()(Monitor))
