"""An example webhook receiver: retrain breast_cancer when Vigil's monitor reports drift.

Run it next to `make serve` (the secret is the one the monitor's webhook target signs with)::

    VIGIL_WEBHOOK_SECRET=whsec_... VIGIL_TOKEN=... VIGIL_RECEIVER_TOKEN=... \\
        .venv/bin/python -m examples.retrain_receiver \\
        --port 9000 --models-dir models --monitor-url http://127.0.0.1:8000/monitor

HTTP:

    POST /events   a CloudEvents 1.0 event in structured JSON mode
                   (content-type application/cloudevents+json), signed as Standard Webhooks
                   (webhook-id, webhook-timestamp, webhook-signature)
    GET  /events   the stored events (the newest 10,000): id, type, subject, first and last
                   arrival, deliveries (arrivals of that id, duplicates included), retrained
                   (the job's outcome), and the event itself; only with
                   ``Authorization: Bearer $VIGIL_RECEIVER_TOKEN``
    GET  /healthz  200 while the receiver runs: running jobs and stored events, counted

POST /events answers

    401  no secret verifies the signature (missing headers, tampered body, other secret) or the
         timestamp is more than 5 minutes away from now (a replay)
    400  the body is not a CloudEvents 1.0 JSON event, or its id differs from webhook-id
    413  the body is over 1 MiB
    200  {"duplicate": true}: the id was seen before (the monitor delivers at least once);
         nothing else happens
    202  a vigil.drift.detected for breast_cancer/<version>: retraining runs in the background
    200  {"accepted": true}: any other event, recorded only

Who may do what. Writing an event takes the Standard Webhooks signature: VIGIL_WEBHOOK_SECRET
may hold several secrets separated by commas or spaces (during a rotation the receiver accepts
an event that any of them verifies). Reading what is stored (GET /events: the monitor's events
carry model names, figures and window sizes) takes a bearer token of its own,
VIGIL_RECEIVER_TOKEN, at least 16 characters: the receiver keeps its SHA-256 and compares in
constant time. The signing secret is not reused for reading, because a reader need not be
able to forge events. Without VIGIL_RECEIVER_TOKEN reading is off: every GET /events is a 401
with WWW-Authenticate, never an open read. VIGIL_TOKEN, when set, is the bearer token the
receiver sends to the monitor (another direction).

Retraining (examples.retraining; one job at a time):

1. GET {monitor-url}/v1/models/breast_cancer/rows?version=<version>: the sampled rows of the
   last closed window (the 30 feature columns and the model's outputs ``label``,
   ``probabilities_0``, ``probabilities_1``) and, aligned with them, ``labels``: the ground
   truth posted for each row's request through the feedback route
   (``POST /v2/models/breast_cancer/feedback``), null where none was (the monitor joins them by
   request id: sampled rows carry their request's id). Rows with missing or non-finite values
   are dropped.
2. Labels. With at least --min-labelled-rows (20) labelled rows, it trains on those rows and
   their true labels alone; the unlabelled rows are left out, so the served model's mistakes
   are not taught back to it. With fewer (no feedback pipeline, or labels not in yet), it falls
   back to pseudo-labels: every row, labelled with its true label where it has one and the
   served model's own prediction (its ``label`` column) elsewhere. That moves the scaler and the
   decision boundary towards the new input distribution, but can only confirm what the served
   model already believes, its mistakes included. The version's metadata (``labels``,
   ``window_labels``: ground_truth or pseudo, ``window_rows_labelled``) and the job's outcome
   (``labels``, ``labels_detail``) say which it was.
3. The training frame: the window's rows and the version's most recent reference rows
   (reference.parquet: the features and ``target``; each retraining appends its window), as
   many as keep the window rows at least --recent-share (0.9) of the frame, at least 100 (all
   of them if that tail lacks a class). Leaning on today's traffic makes the new version's
   reference what it will see, so drift settles once it serves, and keeps the frame from
   growing with every retraining. A StandardScaler + LogisticRegression is trained on it
   (float32) and converted to ONNX as vigil.tools.examples builds breast_cancer/1.
4. The model is published as the next whole-number version by vigil.tools.publishing, as
   `vigil models publish` does: signature read by onnxruntime, lineage, the drift profile of
   that training frame, production pinned first, the version moved into place by an exclusive
   create (all of it or none of it appears), and an audit entry by ``receiver:<event id>``.
   A number another publisher takes first is skipped for the next. The training frame is kept
   as the version's reference.parquet. Metadata says where it came from: trained_from_event,
   parent_version, window_rows, and what its window rows' labels are.
5. The outcome (new version and rows used, or the error) is logged and stored with the event.
   If the monitor cannot be reached or has no rows (404, 409), nothing is published.

The new version takes no traffic (publishing pins production first). With --rollout STEPS the
receiver closes the loop itself (examples.shipping): it runs the model gate and, if it passed,
starts a progressive rollout on --server-url (the monitor judges each step and promotes or rolls
back; $VIGIL_TOKEN then needs the admin scope too). Without it, gate and roll out by hand:

    vigil models validate breast_cancer N && vigil models rollout breast_cancer N

Forwarding instead of retraining here (--forward-to-github OWNER/REPO, token in $GITHUB_TOKEN):
each verified event becomes a GitHub `repository_dispatch` with the CloudEvent type as its
event type, which starts .github/workflows/retrain.yml (retrain, gate, rollout). An event GitHub
does not accept is answered 502 and not recorded, so the monitor's outbox retries it.

The parts: examples.receiver_events (signatures, CloudEvents, the event store, read access),
examples.retraining (the job), and here the Receiver (state and what it does with an event),
its thin Starlette routes, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from examples.receiver_events import (
    MODEL,
    READ_TOKEN_ENV,
    SECRET_ENV,
    EventStore,
    ReadAccess,
    Refusal,
    drift_version,
    load_secrets,
    parse_event,
    verify,
)
from examples import shipping
from examples.github_dispatch import GitHubDispatch
from examples.retraining import MIN_LABELLED_ROWS, RECENT_SHARE, TOKEN_ENV, Retrainer

logger = logging.getLogger("vigil.retrain_receiver")

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Reply:
    """What the receiver answers an accepted request: a JSON body and its status."""

    body: Any
    status: int = 200


class Receiver:
    """The receiver's state (secrets, event store, read access, retrainer or forwarder, running
    jobs) and what it does with an event. It knows no HTTP beyond its replies and refusals."""

    def __init__(self, verifiers: Sequence[Webhook], store: EventStore, reader: ReadAccess,
                 retrainer: Retrainer, forward: GitHubDispatch | None = None) -> None:
        self.verifiers, self.store, self.reader = tuple(verifiers), store, reader
        self.retrainer, self.forward = retrainer, forward
        self.jobs: set[asyncio.Task[Any]] = set()
        self._forwarding = asyncio.Lock()  # seen -> send -> record as one step: one dispatch

    @classmethod
    def from_environment(
        cls, *, models_dir: str | Path, monitor_url: str, state_path: str | Path,
        secrets: str | None = None, token: str | None = None, read_token: str | None = None,
        forward: GitHubDispatch | None = None, shipper: shipping.Shipping | None = None,
        shuffle_labels: bool = False, min_labelled_rows: int = MIN_LABELLED_ROWS,
        recent_share: float = RECENT_SHARE,
    ) -> Receiver:
        """`secrets`, `token` and `read_token` default to $VIGIL_WEBHOOK_SECRET, $VIGIL_TOKEN and
        $VIGIL_RECEIVER_TOKEN. ValueError names what is missing or malformed."""
        verifiers = load_secrets(os.environ.get(SECRET_ENV) if secrets is None else secrets)
        token = (os.environ.get(TOKEN_ENV) or None) if token is None else token
        if read_token is None:
            read_token = os.environ.get(READ_TOKEN_ENV) or None
        reader = ReadAccess(read_token)
        retrainer = Retrainer(Path(models_dir), monitor_url, token, shipper=shipper,
                              shuffle_labels=shuffle_labels, min_labelled_rows=min_labelled_rows,
                              recent_share=recent_share)
        return cls(verifiers, EventStore(state_path), reader, retrainer, forward)

    def verified_event(self, body: bytes, headers: Mapping[str, str], peer: str) -> dict[str, Any]:
        """The CloudEvent in `body` once a secret verifies its signature; Refusal 401 or 400."""
        why = verify(self.verifiers, body, headers)
        if why is not None:
            logger.warning("rejected an event from %s: %s", peer, why)
            raise Refusal(401, f"webhook signature rejected: {why}")
        return parse_event(body, headers.get("content-type"), headers["webhook-id"])

    async def receive(self, body: bytes, headers: Mapping[str, str], peer: str = "?") -> Reply:
        """POST /events: verify, then forward, or record and start retraining on drift."""
        event = self.verified_event(body, headers, peer)
        if self.forward is not None:
            async with self._forwarding:
                return await asyncio.to_thread(self.forward_once, self.forward, event, body)
        reply, parent = await asyncio.to_thread(self.record, event, body)
        if parent is not None:
            self.start_retraining(event["id"], parent)
        return reply

    def record(self, event: Mapping[str, Any], body: bytes) -> tuple[Reply, str | None]:
        """Store a new event, or count a duplicate; the reply, and the version to retrain from
        (None: nothing to retrain)."""
        parent = drift_version(event)
        queued = {"status": "queued", "parent_version": parent} if parent else None
        deliveries = self.store.record(event, body.decode(), queued)
        if deliveries > 1:
            logger.info("event %s (%s) again: duplicate #%d ignored",
                        event["id"], event["type"], deliveries)
            return Reply({"duplicate": True, "id": event["id"], "deliveries": deliveries}), None
        logger.info("event %s: %s for %s", event["id"], event["type"], event["subject"])
        if parent is None:
            return Reply({"accepted": True, "id": event["id"]}), None
        retraining = {"accepted": True, "id": event["id"], "retraining": f"{MODEL}/{parent}"}
        return Reply(retraining, 202), parent

    def start_retraining(self, event_id: str, parent: str) -> asyncio.Task[Any]:
        """The retraining job, on a worker thread; it stores its own outcome with the event."""
        job = asyncio.create_task(
            asyncio.to_thread(self.retrainer.run, event_id, parent, self.store)
        )
        self.jobs.add(job)
        job.add_done_callback(self._finished)
        return job

    def _finished(self, job: asyncio.Task[Any]) -> None:
        self.jobs.discard(job)
        if not job.cancelled() and job.exception() is not None:
            logger.error("a retraining job failed", exc_info=job.exception())

    def forward_once(self, forward: GitHubDispatch, event: Mapping[str, Any],
                     body: bytes) -> Reply:
        """Forward a new event to GitHub and record it; a duplicate is counted only. One that
        GitHub refuses is a Refusal 502 and not recorded, so the monitor's retry forwards it."""
        if self.store.seen(event["id"]):
            deliveries = self.store.record(event, body.decode())
            return Reply({"duplicate": True, "id": event["id"], "deliveries": deliveries})
        why = forward.send(event)
        if why is not None:
            logger.warning("event %s not forwarded: %s", event["id"], why)
            raise Refusal(502, f"forwarding to GitHub failed: {why}")
        self.store.record(event, body.decode(), {"status": "forwarded"})
        logger.info("event %s (%s) forwarded to %s", event["id"], event["type"], forward.url)
        return Reply({"accepted": True, "id": event["id"], "forwarded": True})

    def events(self, authorization: str | None) -> list[dict[str, Any]]:
        """GET /events: the stored events, to the holder of the read token only (Refusal 401)."""
        self.reader.check(authorization)
        return self.store.list()

    def health(self) -> dict[str, Any]:
        """GET /healthz: counts only, nothing stored."""
        return {"status": "ok", "retraining_jobs": len(self.jobs),
                "stored_events": self.store.count()}

    async def close(self) -> None:
        """Wait for the running jobs (a job's thread cannot be stopped: it finishes and records
        its outcome), then close the store."""
        if self.jobs:
            logger.info("waiting for %d retraining job(s) to finish", len(self.jobs))
            await asyncio.gather(*self.jobs, return_exceptions=True)
        self.store.close()


# --- HTTP ----------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The body; Refusal 413 when it is over `limit` bytes (read no further than that)."""
    too_large = Refusal(413, f"the body is over {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class ReceiverRoutes:
    """The Starlette side of a Receiver: each route reads the request, asks the receiver and
    answers its reply as JSON. Refusals become {"error": ...} in one handler (`refused`)."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post_events(self, request: Request) -> JSONResponse:
        body = await read_body(request, MAX_BODY_BYTES)
        peer = request.client.host if request.client else "?"
        reply = await self.receiver.receive(body, dict(request.headers), peer)
        return JSONResponse(reply.body, status_code=reply.status)

    async def get_events(self, request: Request) -> JSONResponse:
        authorization = request.headers.get("authorization")
        return JSONResponse(await asyncio.to_thread(self.receiver.events, authorization))

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(self.receiver.health))

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.receiver.close()


async def refused(request: Request, exc: Exception) -> JSONResponse:
    """Every Refusal, answered once: {"error": message} with its status and headers."""
    assert isinstance(exc, Refusal)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


def receiver_app(receiver: Receiver) -> Starlette:
    routes = ReceiverRoutes(receiver)
    app = Starlette(
        routes=[
            Route("/events", routes.post_events, methods=["POST"]),
            Route("/events", routes.get_events, methods=["GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
        ],
        lifespan=routes.lifespan,
        exception_handlers={Refusal: refused},
    )
    app.state.receiver = receiver
    return app


def build_app(**settings: Any) -> Starlette:
    """The receiver's app; `settings` as Receiver.from_environment takes them. With `forward`,
    events go to GitHub's repository_dispatch instead of a local retraining."""
    return receiver_app(Receiver.from_environment(**settings))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.retrain_receiver",
        description="Receive Vigil's signed webhooks; retrain breast_cancer on drift. "
        f"Secrets come from ${SECRET_ENV} (comma-separated during a rotation), the token that "
        f"reads GET /events from ${READ_TOKEN_ENV}, the monitor's bearer token from ${TOKEN_ENV}.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=int, default=9000)
    add("--models-dir", type=Path, default=Path("models"),
        help="the model repository that `make serve` serves (default: models)")
    add("--monitor-url", default="http://127.0.0.1:8000/monitor",
        help="the monitor's base URL (default: http://127.0.0.1:8000/monitor)")
    add("--state", type=Path, default=Path("receiver-state.sqlite"),
        help="SQLite file of received events (default: receiver-state.sqlite)")
    add("--forward-to-github", default=None, metavar="OWNER/REPO",
        help="forward each event to GitHub's repository_dispatch (token in $GITHUB_TOKEN) "
        "instead of retraining here: .github/workflows/retrain.yml takes it from there")
    add("--github-api-url", default="https://api.github.com", help=argparse.SUPPRESS)
    add("--min-labelled-rows", type=int, default=MIN_LABELLED_ROWS, metavar="N",
        help="train on the window's labelled rows and their true labels alone when it has at "
        f"least N of them; else on pseudo-labels (default: {MIN_LABELLED_ROWS})")
    add("--recent-share", type=float, default=RECENT_SHARE, metavar="F",
        help="the least share of the training rows that comes from the drifted window; the "
        "parent version's most recent reference rows make the rest (at least 100 of them) "
        f"(default: {RECENT_SHARE})")
    shipping.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.models_dir / MODEL).is_dir():
        parser.error(f"{args.models_dir / MODEL} does not exist (run `make models` first)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        forward = None
        if args.forward_to_github:
            forward = GitHubDispatch(args.forward_to_github, os.environ.get("GITHUB_TOKEN", ""),
                                     args.github_api_url)
        app = build_app(models_dir=args.models_dir, monitor_url=args.monitor_url,
                        state_path=args.state, forward=forward,
                        shipper=shipping.from_args(args),
                        shuffle_labels=args.train_on_shuffled_labels,
                        min_labelled_rows=args.min_labelled_rows,
                        recent_share=args.recent_share)
    except ValueError as exc:
        parser.error(str(exc))
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
