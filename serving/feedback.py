"""The feedback route's request and answer: ground-truth labels for served requests, by id.

`POST /v2/models/{model}/feedback[?overwrite=true]` (scope `feedback`) takes one
`{"id": ..., "label": ...}` or a list of them. The body is checked whole first (400, nothing
recorded); the labels then go to the monitor's join store (monitoring.label_store), which says
per id `joined`, `unknown_id`, `duplicate` or `invalid`. The answer lists them in order: 200,
or 409 when any label was refused as a second label for its id (the others are kept).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

import orjson

from serving.protocol import BadRequest, NotFound, NotReady, PayloadTooLarge
from vigil.core.prediction_messages import MAX_ID_LENGTH, PredictionMessage

logger = logging.getLogger("vigil.feedback")

FEEDBACK = "feedback"  # the token scope of the route
MAX_LABELS = 10_000  # most labels one request may carry
REQUEST_ID_HEADER = "X-Request-Id"


def is_feedback_path(path: str) -> bool:
    """Whether a route path is /v2/models/{model}/feedback (a model may be named 'feedback')."""
    parts = path.split("/")
    return (len(parts) == 5 and parts[4] == FEEDBACK and not parts[0] and parts[1] == "v2"
            and parts[2] == "models" and bool(parts[3]))


def parse_overwrite(query: list[tuple[str, str]]) -> bool:
    """`overwrite=true|false` (default false); any other parameter or value is a BadRequest."""
    overwrite = False
    for key, value in query:
        if key != "overwrite":
            raise BadRequest(f"unknown query parameter {key!r}; the feedback route takes "
                             "overwrite=true|false")
        if value not in ("true", "false"):
            raise BadRequest(f"overwrite={value!r}: expected true or false")
        overwrite = value == "true"
    return overwrite


async def read_body(stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, refused (413) once it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"feedback body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_labels(body: bytes) -> list[tuple[str, Any]]:
    """(id, label) pairs of a feedback body, in order; BadRequest says what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"feedback body is not JSON: {exc}") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadRequest("no labels: send {\"id\": ..., \"label\": ...} or a list of them")
    if len(items) > MAX_LABELS:
        raise PayloadTooLarge(f"{len(items)} labels in one request; at most {MAX_LABELS}")
    pairs = []
    for i, item in enumerate(items):
        where = f"label {i}" if isinstance(doc, list) else "the body"
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            raise BadRequest(f"{where}: expected an object with exactly the keys id and label")
        request_id = item["id"]
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
            raise BadRequest(f"{where}: id must be the inference request's id, a string of 1 to "
                             f"{MAX_ID_LENGTH} characters")
        pairs.append((request_id, item["label"]))
    return pairs


def feedback_answer(model: str, outcomes: list[dict[str, str]]) -> tuple[dict, int]:
    """The response document and status for the store's outcomes."""
    counts = Counter(o["outcome"] for o in outcomes)
    doc: dict[str, Any] = {"model": model, "counts": dict(sorted(counts.items())),
                           "labels": outcomes}
    if counts["duplicate"]:
        doc["error"] = (f"{counts['duplicate']} of {len(outcomes)} labels are second labels for "
                        "their id and were refused (the others were kept); send "
                        "?overwrite=true to replace a label")
        return doc, 409
    return doc, 200


async def post_labels(model: str, query: list[tuple[str, str]], body: AsyncIterator[bytes], *,
                      published: Collection[str], max_bytes: int,
                      unsent: Callable[[], list[PredictionMessage]] | None,
                      monitor: Callable[[], Any]) -> tuple[dict, int]:
    """The route's answer (document, status): the request checked whole (BadRequest, NotFound,
    PayloadTooLarge), then this replica's unsent records and the labels to the monitor's handle
    (NotReady when feedback is off, `unsent` None, or the monitor cannot take them)."""
    overwrite = parse_overwrite(query)
    if model not in published:
        raise NotFound(f"model '{model}' is not served here; known models: {sorted(published)}")
    labels = parse_labels(await read_body(body, max_bytes))
    if unsent is None:
        raise NotReady("feedback is off on this server (it needs sampling.enabled and "
                       "feedback.enabled)")
    handle = monitor()
    if handle is None:
        raise NotReady("the monitor is not reachable; send the labels again later")
    try:
        records = [r for r in unsent() if r.requests]
        if records:  # a label for an answer this replica just gave finds it
            await handle.record_predictions.remote(records)
        outcomes = await handle.feedback.remote(model, labels, overwrite)
    except Exception as exc:  # noqa: BLE001 - whatever failed, nothing was answered
        logger.warning("the monitor did not take %d labels for %s: %s", len(labels), model, exc)
        raise NotReady("the monitor did not take the labels; send them again") from None
    return feedback_answer(model, outcomes)
