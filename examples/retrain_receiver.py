"""An example webhook receiver: retrain breast_cancer when Vigil's monitor reports drift.

Run it next to `make serve` (the secret is the one the monitor's webhook target signs with)::

    VIGIL_WEBHOOK_SECRET=whsec_... VIGIL_TOKEN=... .venv/bin/python -m examples.retrain_receiver \\
        --port 9000 --models-dir models --monitor-url http://127.0.0.1:8000/monitor

HTTP:

    POST /events   a CloudEvents 1.0 event in structured JSON mode
                   (content-type application/cloudevents+json), signed as Standard Webhooks
                   (webhook-id, webhook-timestamp, webhook-signature)
    GET  /events   every accepted event: id, type, subject, first and last arrival, deliveries
                   (arrivals of that id, duplicates included), retrained (the job's outcome),
                   and the event itself
    GET  /healthz  200 while the receiver runs

POST /events answers

    401  no secret verifies the signature (missing headers, tampered body, other secret) or the
         timestamp is more than 5 minutes away from now (a replay)
    400  the body is not a CloudEvents 1.0 JSON event, or its id differs from webhook-id
    413  the body is over 1 MiB
    200  {"duplicate": true}: the id was seen before (the monitor delivers at least once);
         nothing else happens
    202  a vigil.drift.detected for breast_cancer/<version>: retraining runs in the background
    200  {"accepted": true}: any other event, recorded only

VIGIL_WEBHOOK_SECRET may hold several secrets separated by commas or spaces: during a rotation
the receiver accepts an event that any of them verifies. VIGIL_TOKEN, when set, is sent as the
bearer token to the monitor.

Retraining (one job at a time, so two drift events never publish the same version):

1. GET {monitor-url}/v1/models/breast_cancer/rows?version=<version>: the sampled rows of the
   last closed window (the 30 feature columns and the model's outputs ``label``,
   ``probabilities_0``, ``probabilities_1``). Rows with missing or non-finite values are dropped.
2. Pseudo-labels. Live rows come without ground truth, so each one is labelled with the served
   model's own prediction (its ``label`` column). Training on them moves the scaler and the
   decision boundary towards the new input distribution, but it can only confirm what the
   served model already believes, its mistakes included: a real pipeline joins the rows with
   true outcomes (or human labels) before retraining. This example shows the plumbing.
3. The rows are appended to the version's reference data (reference.parquet: the features and
   ``target``), a StandardScaler + LogisticRegression is trained on it (float32) and converted
   to ONNX as vigil.tools.examples builds breast_cancer/1.
4. The model is published as the next integer version, with that training frame as its
   reference.parquet and its drift profile. The version is assembled in a hidden staging folder
   and renamed into place, so a scan of the repository sees all of it or none of it.
   Metadata says where it came from: trained_from_event, parent_version, window_rows.
5. The outcome (new version and rows used, or the error) is logged and stored with the event.
   If the monitor cannot be reached or has no rows (404, 409), nothing is published.

The new version takes no traffic (publishing pins production first): gate it and start a canary,

    vigil models validate breast_cancer N && vigil models canary breast_cancer N --weight 0.1

Forwarding instead of retraining here (--forward-to-github OWNER/REPO, token in $GITHUB_TOKEN):
each verified event becomes a GitHub `repository_dispatch` with the CloudEvent type as its
event type, which starts .github/workflows/retrain.yml (retrain, gate, canary). An event GitHub
does not accept is answered 502 and not recorded, so the monitor's outbox retries it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from secrets import token_hex
from typing import Any

import httpx
import numpy as np
from standardwebhooks.webhooks import (
    EmptyWebhookSecretError,
    Webhook,
    WebhookVerificationError,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from vigil.tools.examples import (
    BREAST_CANCER_INPUTS,
    BREAST_CANCER_MAX_BATCH_ROWS,
    BREAST_CANCER_OUTPUTS,
    ML_OPSET,
    OPSET,
    REFERENCE_FILE,
    _serialize,
)
from vigil.core.files import atomic_write
from vigil.tools.profiles import profile_version
from vigil.core.repository import MANIFEST_FILE, pin_production, publish, read_manifest, valid_name

logger = logging.getLogger("vigil.retrain_receiver")

MODEL = "breast_cancer"
DRIFT_EVENT = "vigil.drift.detected"
CLOUDEVENTS_JSON = "application/cloudevents+json"
SECRET_ENV = "VIGIL_WEBHOOK_SECRET"
TOKEN_ENV = "VIGIL_TOKEN"
TARGET = "target"  # the label column of reference.parquet
PREDICTED = "label"  # the model's predicted class in the monitor's rows
MAX_BODY_BYTES = 1 << 20
MONITOR_TIMEOUT_S = 30.0
_INTEGER = re.compile(r"[0-9]+")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- signatures and events ---------------------------------------------------------------------


def load_secrets(value: str | None) -> tuple[Webhook, ...]:
    """One verifier per secret in `value` (separated by commas or whitespace)."""
    found = [s for s in re.split(r"[,\s]+", value or "") if s]
    if not found:
        raise ValueError(f"no webhook secret: set {SECRET_ENV}=whsec_... (the monitor's secret)")
    verifiers = []
    for i, secret in enumerate(found, 1):
        try:
            verifiers.append(Webhook(secret))
        except (ValueError, EmptyWebhookSecretError):  # binascii.Error is a ValueError
            # The secret itself is never repeated in a message.
            raise ValueError(f"secret #{i} in {SECRET_ENV} is not whsec_<base64>") from None
    return tuple(verifiers)


def verify(verifiers: Sequence[Webhook], body: bytes, headers: Mapping[str, str]) -> str | None:
    """None when one of the secrets verifies the body and headers; otherwise why none did."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    why = "no secret configured"
    for verifier in verifiers:
        try:
            verifier.verify(text, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            why = str(exc)
        except ValueError:  # the library's parsing of a malformed webhook-signature
            why = "malformed webhook-signature header"
        else:
            return None
    return why


class BadEvent(ValueError):
    """The body is not the CloudEvent this receiver takes (400)."""


def parse_event(body: bytes, content_type: str | None, webhook_id: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON event in `body`, checked."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != CLOUDEVENTS_JSON:
        raise BadEvent(f"content-type {media or '(none)'}: expected {CLOUDEVENTS_JSON}")
    try:
        event = json.loads(body)
    except ValueError:
        raise BadEvent("the body is not JSON") from None
    if not isinstance(event, dict):
        raise BadEvent("a CloudEvent is a JSON object")
    if event.get("specversion") != "1.0":
        raise BadEvent(f"specversion {event.get('specversion')!r}: expected '1.0'")
    for key in ("id", "type", "source", "subject"):
        if not isinstance(event.get(key), str) or not event[key]:
            raise BadEvent(f"the event needs a non-empty string {key!r}")
    if "data" not in event:
        raise BadEvent("the event has no 'data'")
    if event["id"] != webhook_id:
        raise BadEvent("the webhook-id header differs from the event's id")
    return event


def drift_version(event: Mapping[str, Any]) -> str | None:
    """The breast_cancer version a drift event asks to retrain, or None for any other event."""
    if event["type"] != DRIFT_EVENT:
        return None
    model, slash, version = event["subject"].partition("/")
    return version if model == MODEL and slash and valid_name(version) else None


# --- state ---------------------------------------------------------------------------------------


class EventStore:
    """Accepted events in SQLite, one row per id: the deduplication key and GET /events."""

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS events ("
                " id TEXT PRIMARY KEY, type TEXT NOT NULL, subject TEXT NOT NULL,"
                " received_at TEXT NOT NULL, last_received_at TEXT NOT NULL,"
                " deliveries INTEGER NOT NULL, body TEXT NOT NULL, retrained TEXT)"
            )
            # Jobs that were queued or running when an earlier receiver stopped died with it.
            self._db.execute(
                "UPDATE events SET retrained = json_set(retrained, '$.status', 'interrupted')"
                " WHERE json_extract(retrained, '$.status') IN ('queued', 'running')"
            )

    def record(self, event: Mapping[str, Any], body: str, retrained: Any = None) -> int:
        """Count one arrival of the event; stores it on the first. Returns the arrivals so far
        (1: new; more: a duplicate, whose body and job are left as they were)."""
        now = _now()
        with self._lock:
            row = self._db.execute(
                "INSERT INTO events (id, type, subject, received_at, last_received_at, deliveries,"
                " body, retrained) VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET deliveries = deliveries + 1,"
                " last_received_at = excluded.last_received_at RETURNING deliveries",
                (
                    event["id"],
                    event["type"],
                    event["subject"],
                    now,
                    now,
                    body,
                    None if retrained is None else json.dumps(retrained),
                ),
            ).fetchone()
        return int(row[0])

    def seen(self, event_id: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone() is not None

    def set_retrained(self, event_id: str, outcome: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE events SET retrained = ? WHERE id = ?", (json.dumps(outcome), event_id)
            )

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, subject, received_at, last_received_at, deliveries, retrained,"
                " body FROM events ORDER BY rowid"
            ).fetchall()
        return [
            {
                "id": r[0],
                "type": r[1],
                "subject": r[2],
                "received_at": r[3],
                "last_received_at": r[4],
                "deliveries": r[5],
                "retrained": None if r[6] is None else json.loads(r[6]),
                "event": json.loads(r[7]),
            }
            for r in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- retraining ----------------------------------------------------------------------------------


class GitHubDispatch:
    """Forwards events to GitHub's repository_dispatch API (POST /repos/{repo}/dispatches)."""

    def __init__(self, repo: str, token: str, api_url: str = "https://api.github.com",
                 timeout_s: float = 10.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo) or any(
            part.strip(".") == "" for part in repo.split("/")
        ):
            raise ValueError(f"--forward-to-github {repo!r}: expected OWNER/REPO")
        if not token:
            raise ValueError("forwarding to GitHub needs a token in $GITHUB_TOKEN")
        self.url = f"{api_url.rstrip('/')}/repos/{repo}/dispatches"
        self.token = token
        self.timeout_s = timeout_s

    def payload(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """GitHub takes at most 10 top-level client_payload keys: the event's essentials."""
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        return {
            "event_type": event["type"],
            "client_payload": {
                "id": event["id"], "type": event["type"], "subject": event.get("subject"),
                "time": event.get("time"), "model": data.get("model"),
                "version": data.get("version"), "source": event.get("source"),
            },
        }

    def send(self, event: Mapping[str, Any]) -> str | None:
        """None when GitHub accepted the dispatch, else why not."""
        headers = {"Authorization": f"Bearer {self.token}",
                   "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        try:
            answer = httpx.post(self.url, json=self.payload(event), headers=headers,
                                timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if answer.status_code == 204:
            return None
        return f"GitHub answered {answer.status_code}: {answer.text[:200]}"


class RetrainError(Exception):
    """Retraining stopped before publishing; the message says why (stored with the event)."""


class Retrainer:
    """Retrains breast_cancer from a drifted version's reference data and window rows."""

    def __init__(
        self,
        models_dir: Path,
        monitor_url: str,
        token: str | None,
        timeout_s: float = MONITOR_TIMEOUT_S,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.monitor_url = monitor_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # one job at a time: each takes the next version

    def run(self, event_id: str, parent: str, store: EventStore) -> dict[str, Any]:
        """One job (on a worker thread): retrain, and store and log the outcome."""
        with self._lock:
            started_at, started = _now(), time.perf_counter()
            store.set_retrained(event_id, {"status": "running", "started_at": started_at})
            try:
                outcome: dict[str, Any] = {"status": "published", **self.retrain(event_id, parent)}
                logger.info(
                    "event %s: published %s/%s from %s/%s (%d reference + %d window rows)",
                    event_id,
                    MODEL,
                    outcome["version"],
                    MODEL,
                    parent,
                    outcome["reference_rows"],
                    outcome["window_rows"],
                )
            except RetrainError as exc:
                outcome = {"status": "failed", "error": str(exc)}
                logger.warning("event %s: %s/%s not retrained: %s", event_id, MODEL, parent, exc)
            except Exception as exc:
                logger.exception("event %s: retraining %s/%s failed", event_id, MODEL, parent)
                outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            outcome.update(
                started_at=started_at,
                finished_at=_now(),
                seconds=round(time.perf_counter() - started, 3),
            )
            store.set_retrained(event_id, outcome)
            return outcome

    def retrain(self, event_id: str, parent: str) -> dict[str, Any]:
        import pandas as pd

        parent_dir = self.models_dir / MODEL / parent
        if not (parent_dir / MANIFEST_FILE).exists():
            raise RetrainError(f"{MODEL}/{parent} is not in {self.models_dir}")
        manifest = read_manifest(parent_dir)
        if (manifest.inputs, manifest.outputs) != (BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS):
            raise RetrainError(f"{MODEL}/{parent} does not have the example's inputs and outputs")
        features = manifest.metadata.get("feature_names")
        width = BREAST_CANCER_INPUTS[0].shape[1]
        if not isinstance(features, list) or len(features) != width:
            raise RetrainError(f"{MODEL}/{parent} has no {width} metadata.feature_names")
        try:
            reference = pd.read_parquet(parent_dir / REFERENCE_FILE)
        except (OSError, ValueError) as exc:
            raise RetrainError(f"the reference data of {MODEL}/{parent}: {exc}") from None
        missing = [c for c in (*features, TARGET) if c not in reference.columns]
        if missing:
            raise RetrainError(f"{parent_dir / REFERENCE_FILE} lacks columns {missing[:3]}")
        ref_x = reference[features].to_numpy(np.float32)
        ref_y = reference[TARGET].to_numpy(np.int64)

        doc = self.fetch_rows(parent)
        win_x, win_y, dropped = window_rows(doc, features, parent, classes=np.unique(ref_y))
        x, y = np.concatenate([ref_x, win_x]), np.concatenate([ref_y, win_y])
        onnx_bytes, accuracy = train(x, y)

        frame = pd.DataFrame(x, columns=features)
        frame[TARGET] = y
        window = doc.get("window") or {}
        metadata = {
            "task": manifest.metadata.get("task", "binary classification"),
            "feature_names": features,
            **({"classes": manifest.metadata["classes"]} if "classes" in manifest.metadata else {}),
            "training_rows": len(y),
            "training_accuracy": accuracy,  # on its training rows, pseudo-labels included
            "source": f"{MODEL}/{parent} reference data + monitor window rows, pseudo-labelled",
            "labels": f"window rows carry {MODEL}/{parent}'s own predictions, not ground truth",
            "trained_from_event": event_id,
            "parent_version": parent,
            "window_index": window.get("index"),
            "window_rows": len(win_y),
            "window_rows_dropped": dropped,
        }
        version = self.publish(onnx_bytes, frame, metadata)
        return {
            "version": version,
            "reference_rows": len(ref_y),
            "window_rows": len(win_y),
            "window_rows_dropped": dropped,
            "window_index": window.get("index"),
            "training_accuracy": accuracy,
        }

    def fetch_rows(self, version: str) -> dict[str, Any]:
        """The monitor's rows of the version's last closed window."""
        url = f"{self.monitor_url}/v1/models/{MODEL}/rows"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                answer = client.get(url, params={"version": version}, headers=headers)
        except httpx.HTTPError as exc:
            raise RetrainError(
                f"the monitor at {url} cannot be reached: {type(exc).__name__}: {exc}"
            ) from None
        if answer.status_code != 200:
            try:
                why = answer.json()["error"]
            except (ValueError, KeyError, TypeError):
                why = answer.text[:200]
            raise RetrainError(
                f"the monitor answered {answer.status_code} for the rows of "
                f"{MODEL}/{version}: {why}"
            )
        try:
            return answer.json()
        except ValueError:
            raise RetrainError("the monitor's rows are not JSON") from None

    def publish(self, onnx_bytes: bytes, frame: Any, metadata: dict[str, Any]) -> str:
        """Publish the next integer version with its reference data and profile; all of it
        appears at once (a staging folder renamed over the claimed, empty version folder)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        model_dir = self.models_dir / MODEL
        version = claim_next_version(model_dir)
        claimed = model_dir / version
        # A name scan() skips (versions start with a letter or digit), on the same filesystem.
        staging = model_dir / f".staging-{version}-{token_hex(4)}"
        try:
            staged = publish(
                staging,
                MODEL,
                version,
                onnx_bytes,
                BREAST_CANCER_INPUTS,
                BREAST_CANCER_OUTPUTS,
                metadata=metadata,
                max_batch_rows=BREAST_CANCER_MAX_BATCH_ROWS,
            )
            sink = pa.BufferOutputStream()
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table, sink, compression="snappy")
            atomic_write(staged.path / REFERENCE_FILE, sink.getvalue().to_pybytes())
            # As vigil.tools.examples does: `target` is not an input, the outputs are the model's own.
            profile_version(
                staged.path, staged.path / REFERENCE_FILE, outputs_from_model=True, progress=False
            )
            # Production stays where it is: the new version waits for validate and promote.
            pin_production(self.models_dir, MODEL)
            os.rename(staged.path, claimed)  # replaces the empty folder (POSIX rename)
        except BaseException:
            with suppress(OSError):
                claimed.rmdir()  # give the number back
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return version


def claim_next_version(model_dir: Path) -> str:
    """Create the folder of 1 + the highest integer version under model_dir and return its
    name. mkdir is the claim: another process that races for the same number moves on."""
    taken = [int(p.name) for p in model_dir.iterdir() if _INTEGER.fullmatch(p.name)]
    number = max(taken, default=0) + 1
    while True:
        try:
            (model_dir / str(number)).mkdir()
        except FileExistsError:
            number += 1
        else:
            return str(number)


def window_rows(
    doc: Any, features: Sequence[str], version: str, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(features as float32, pseudo-labels, rows dropped) from the monitor's rows document.
    The label of each row is the served model's prediction: there is no ground truth."""
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict):
        raise RetrainError("the monitor's rows have no 'columns'")
    if (doc.get("model"), doc.get("version")) != (MODEL, version):
        raise RetrainError(
            f"the monitor sent rows of {doc.get('model')}/{doc.get('version')}, "
            f"not {MODEL}/{version}"
        )
    columns = doc["columns"]
    missing = [c for c in (*features, PREDICTED) if c not in columns]
    if missing:
        raise RetrainError(f"the window's rows lack the columns {missing[:3]}")
    wanted = [columns[c] for c in (*features, PREDICTED)]
    if not all(isinstance(v, list) for v in wanted) or len({len(v) for v in wanted}) != 1:
        raise RetrainError("the window's columns are not lists of one length")
    try:
        # None (a non-finite value in JSON) becomes NaN here and drops its row below.
        x = np.array(wanted[:-1], dtype=np.float64).T
        predicted = np.array(wanted[-1], dtype=np.float64)
    except (TypeError, ValueError):
        raise RetrainError("the window's columns are not numeric") from None
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    keep = np.isfinite(x32).all(axis=1) & np.isin(predicted, classes)
    if not keep.any():
        raise RetrainError(
            f"the window has no usable rows ({len(predicted)} rows, none finite "
            f"with a predicted class in {classes.tolist()})"
        )
    return x32[keep], predicted[keep].astype(np.int64), int((~keep).sum())


def train(x: np.ndarray, y: np.ndarray) -> tuple[bytes, float]:
    """The ONNX bytes of StandardScaler + LogisticRegression fitted on (x, y), converted as
    vigil.tools.examples converts breast_cancer/1, and its accuracy on (x, y)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("scaler", StandardScaler()), ("classifier", clf)]).fit(x, y)
    proto = convert_sklearn(
        pipe,
        name=MODEL,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, 2])),
        ],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    return _serialize(proto), float(round(pipe.score(x, y), 4))


# --- the app -------------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes (read no further than that)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(
    *,
    models_dir: str | Path,
    monitor_url: str,
    state_path: str | Path,
    secrets: str | None = None,
    token: str | None = None,
    forward: GitHubDispatch | None = None,
) -> Starlette:
    """The receiver. `secrets` and `token` default to $VIGIL_WEBHOOK_SECRET and $VIGIL_TOKEN.
    With `forward`, events go to GitHub's repository_dispatch instead of a local retraining."""
    verifiers = load_secrets(os.environ.get(SECRET_ENV) if secrets is None else secrets)
    token = (os.environ.get(TOKEN_ENV) or None) if token is None else token
    store = EventStore(state_path)
    retrainer = Retrainer(Path(models_dir), monitor_url, token)
    jobs: set[asyncio.Task[Any]] = set()

    def finished(task: asyncio.Task[Any]) -> None:
        jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a retraining job failed", exc_info=task.exception())

    async def receive(request: Request) -> JSONResponse:
        body = await _read_body(request, MAX_BODY_BYTES)
        if body is None:
            return _error(413, f"the body is over {MAX_BODY_BYTES} bytes")
        headers = dict(request.headers)
        why = verify(verifiers, body, headers)
        if why is not None:
            logger.warning(
                "rejected an event from %s: %s", request.client.host if request.client else "?", why
            )
            return _error(401, f"webhook signature rejected: {why}")
        try:
            event = parse_event(body, headers.get("content-type"), headers["webhook-id"])
        except BadEvent as exc:
            return _error(400, str(exc))
        if forward is not None:
            return await _forwarded(event, body)
        parent = drift_version(event)
        queued = {"status": "queued", "parent_version": parent} if parent else None
        deliveries = await asyncio.to_thread(store.record, event, body.decode(), queued)
        if deliveries > 1:
            logger.info(
                "event %s (%s) again: duplicate #%d ignored", event["id"], event["type"], deliveries
            )
            return JSONResponse({"duplicate": True, "id": event["id"], "deliveries": deliveries})
        logger.info("event %s: %s for %s", event["id"], event["type"], event["subject"])
        if parent is None:
            return JSONResponse({"accepted": True, "id": event["id"]})
        job = asyncio.create_task(asyncio.to_thread(retrainer.run, event["id"], parent, store))
        jobs.add(job)
        job.add_done_callback(finished)
        return JSONResponse(
            {"accepted": True, "id": event["id"], "retraining": f"{MODEL}/{parent}"},
            status_code=202,
        )

    forwarding = asyncio.Lock()  # seen -> send -> record as one step: one dispatch per id

    async def _forwarded(event: dict[str, Any], body: bytes) -> JSONResponse:
        async with forwarding:
            return await _forward_once(event, body)

    async def _forward_once(event: dict[str, Any], body: bytes) -> JSONResponse:
        assert forward is not None
        if await asyncio.to_thread(store.seen, event["id"]):
            deliveries = await asyncio.to_thread(store.record, event, body.decode())
            return JSONResponse({"duplicate": True, "id": event["id"], "deliveries": deliveries})
        why = await asyncio.to_thread(forward.send, event)
        if why is not None:  # not recorded: the monitor's retry forwards it again
            logger.warning("event %s not forwarded: %s", event["id"], why)
            return _error(502, f"forwarding to GitHub failed: {why}")
        await asyncio.to_thread(store.record, event, body.decode(), {"status": "forwarded"})
        logger.info("event %s (%s) forwarded to %s", event["id"], event["type"], forward.url)
        return JSONResponse({"accepted": True, "id": event["id"], "forwarded": True})

    async def list_events(request: Request) -> JSONResponse:
        return JSONResponse(await asyncio.to_thread(store.list))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "retraining_jobs": len(jobs)})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        try:
            yield
        finally:
            if jobs:  # a job's thread cannot be stopped: let it finish and record its outcome
                logger.info("waiting for %d retraining job(s) to finish", len(jobs))
                await asyncio.gather(*jobs, return_exceptions=True)
            store.close()

    app = Starlette(
        routes=[
            Route("/events", receive, methods=["POST"]),
            Route("/events", list_events, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.retrainer = retrainer
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.retrain_receiver",
        description="Receive Vigil's signed webhooks; retrain breast_cancer on drift. "
        f"Secrets come from ${SECRET_ENV} (comma-separated during a rotation), the monitor's "
        f"bearer token from ${TOKEN_ENV}.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="the model repository that `make serve` serves (default: models)",
    )
    parser.add_argument(
        "--monitor-url",
        default="http://127.0.0.1:8000/monitor",
        help="the monitor's base URL (default: http://127.0.0.1:8000/monitor)",
    )
    parser.add_argument(
        "--state",
        type=Path,
        default=Path("receiver-state.sqlite"),
        help="SQLite file of received events (default: receiver-state.sqlite)",
    )
    parser.add_argument(
        "--forward-to-github",
        default=None,
        metavar="OWNER/REPO",
        help="forward each event to GitHub's repository_dispatch (token in $GITHUB_TOKEN) "
        "instead of retraining here: .github/workflows/retrain.yml takes it from there",
    )
    parser.add_argument(
        "--github-api-url", default="https://api.github.com", help=argparse.SUPPRESS
    )
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
        app = build_app(
            models_dir=args.models_dir, monitor_url=args.monitor_url, state_path=args.state,
            forward=forward,
        )
    except ValueError as exc:
        parser.error(str(exc))
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
