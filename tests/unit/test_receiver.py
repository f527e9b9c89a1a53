"""examples.retrain_receiver: signed CloudEvents in, deduplicated by id, read back only with the
receiver's token, and breast_cancer retrained on drift from the rows of a stand-in for the
monitor's rows endpoint and published through vigil.tools.publishing, or forwarded to a stand-in
for GitHub's repository_dispatch API. No Ray."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.receiver_events import (
    CLOUDEVENTS_JSON,
    DRIFT_EVENT,
    MAX_ID_CHARS,
    READ_TOKEN_ENV,
    EventStore,
    ReadAccess,
    Refusal,
)
from examples.retrain_receiver import GitHubDispatch, Receiver, build_app, main
from examples.retraining import (
    MIN_HISTORY_ROWS,
    MIN_LABELLED_ROWS,
    RetrainError,
    Retrainer,
    Trained,
    history_rows,
    train,
    window_rows,
)
from monitoring.profile import Profile
from vigil.core import audit
from vigil.core.aliases import LOCK_FILE, read_aliases
from vigil.core.repository import read_manifest, scan
from vigil.tools.examples import REFERENCE_FILE, build_examples


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


SECRET, ROTATED, STRANGER = _secret(), _secret(), _secret()
TOKEN = "receiver-test-token"  # the receiver's token to the monitor
READ_TOKEN = "receiver-read-token-" + secrets.token_hex(8)  # a reader's token to the receiver
WINDOW_ROWS = 40


@pytest.fixture(scope="module")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast_cancer/1 (with reference.parquet and profile), built once for this module."""
    root = tmp_path_factory.mktemp("receiver_models")
    build_examples(root)
    return root


@pytest.fixture
def models(built_models: Path, tmp_path: Path) -> Path:
    """A repository of its own per test (retraining adds versions to it)."""
    root = tmp_path / "models"
    shutil.copytree(built_models / "breast_cancer" / "1", root / "breast_cancer" / "1")
    return root


class Served:
    """An ASGI app served by uvicorn on a free port of 127.0.0.1, from a thread (lifespan on:
    stopping it waits for the receiver's retraining jobs, as Ctrl-C does)."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), 10)
        assert self.server.started, "uvicorn did not start"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def open_receiver(models: Path, tmp_path: Path) -> Iterator[Callable[..., httpx.Client]]:
    """Start a receiver on the test's repository and state file; an httpx client to it."""
    with ExitStack() as stack:

        def start(
            monitor_url: str = "http://127.0.0.1:9/monitor",
            secrets: str = SECRET,
            state: Path | None = None,
            forward: GitHubDispatch | None = None,
            read_token: str | None = READ_TOKEN,
            **extra: Any,
        ) -> httpx.Client:
            app = build_app(
                models_dir=models,
                monitor_url=monitor_url,
                state_path=state or tmp_path / "state.sqlite",
                secrets=secrets,
                token=TOKEN,
                read_token=read_token,
                forward=forward,
                **extra,
            )
            served = Served(app)
            stack.callback(served.close)
            reader = {"Authorization": f"Bearer {READ_TOKEN}"}  # sent by every request
            return stack.enter_context(httpx.Client(base_url=served.url, timeout=10,
                                                    headers=reader))

        yield start


def cloud_event(
    type_: str = "vigil.latency.slo_breached",
    subject: str = "breast_cancer/1",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "http://127.0.0.1:8000/monitor",
        "type": type_,
        "subject": subject,
        "time": "2026-01-01T00:00:00.000Z",
        "datacontenttype": "application/json",
        "data": {
            "model": "breast_cancer",
            "version": subject.partition("/")[2],
            "window": {"index": 3, "rows": WINDOW_ROWS},
        },
    }


def signed(
    event: dict[str, Any],
    secret: str = SECRET,
    when: datetime | None = None,
    body: bytes | None = None,
    content_type: str = CLOUDEVENTS_JSON,
) -> dict[str, Any]:
    """httpx keyword arguments of a POST signed as the monitor signs (Standard Webhooks)."""
    body = json.dumps(event).encode() if body is None else body
    when = when or datetime.now(UTC)
    return {
        "content": body,
        "headers": {
            "content-type": content_type,
            "webhook-id": event["id"],
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(event["id"], when, body.decode()),
        },
    }


def wait_for(check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout_s} s: {check}")


def retrained(client: httpx.Client, event_id: str, final: bool = True) -> dict[str, Any] | None:
    """The job outcome stored with the event (None while queued or running when final)."""
    found = [e for e in client.get("/events").json() if e["id"] == event_id]
    outcome = found[0]["retrained"] if found else None
    if final and (outcome is None or outcome["status"] in ("queued", "running")):
        return None
    return outcome


# --- signatures and events ---------------------------------------------------------------------


def test_healthz(open_receiver):
    assert open_receiver().get("/healthz").status_code == 200


def test_a_signed_event_is_accepted_and_listed(open_receiver):
    client = open_receiver()
    event = cloud_event()
    answer = client.post("/events", **signed(event))
    assert answer.status_code == 200
    assert answer.json() == {"accepted": True, "id": event["id"]}
    [listed] = client.get("/events").json()
    assert listed["id"] == event["id"]
    assert (listed["type"], listed["subject"]) == (event["type"], event["subject"])
    assert listed["deliveries"] == 1 and listed["retrained"] is None
    assert listed["event"] == event and listed["received_at"].endswith("Z")


def test_a_tampered_body_is_refused(open_receiver):
    client = open_receiver()
    event = cloud_event()
    request = signed(event)
    request["content"] = request["content"].replace(b"slo_breached", b"slo_breachez")
    answer = client.post("/events", **request)
    assert answer.status_code == 401
    assert "signature" in answer.json()["error"]
    assert client.get("/events").json() == []


def test_a_timestamp_six_minutes_old_is_refused(open_receiver):
    client = open_receiver()
    old = datetime.now(UTC) - timedelta(minutes=6)
    answer = client.post("/events", **signed(cloud_event(), when=old))
    assert answer.status_code == 401
    assert "too old" in answer.json()["error"]
    assert client.get("/events").json() == []


def test_another_secret_is_refused(open_receiver):
    client = open_receiver()
    answer = client.post("/events", **signed(cloud_event(), secret=STRANGER))
    assert answer.status_code == 401
    assert client.get("/events").json() == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"webhook-signature": "v1"}, {"webhook-signature": "garbage"}, {"webhook-id": ""}],
    ids=["unsigned", "malformed", "no-comma", "no-id"],
)
def test_missing_or_malformed_signature_headers_are_refused(open_receiver, headers):
    client = open_receiver()
    request = signed(cloud_event())
    if headers:
        request["headers"].update(headers)
    else:
        request["headers"] = {"content-type": CLOUDEVENTS_JSON}
    answer = client.post("/events", **request)
    assert answer.status_code == 401
    assert "error" in answer.json()


def test_during_a_rotation_either_secret_verifies(open_receiver):
    client = open_receiver(secrets=f"{ROTATED}, {SECRET}")
    for secret in (SECRET, ROTATED):
        assert client.post("/events", **signed(cloud_event(), secret=secret)).status_code == 200
    assert client.post("/events", **signed(cloud_event(), secret=STRANGER)).status_code == 401
    assert len(client.get("/events").json()) == 2


def _not_cloudevents() -> list[Any]:
    event = cloud_event()
    wrong_id = cloud_event()
    return [
        pytest.param(
            event, json.dumps({"hello": "world"}).encode(), CLOUDEVENTS_JSON, id="plain-json"
        ),
        pytest.param(event, b"not json", CLOUDEVENTS_JSON, id="not-json"),
        pytest.param(event, json.dumps([event]).encode(), CLOUDEVENTS_JSON, id="batch"),
        pytest.param(
            event,
            json.dumps({**event, "specversion": "0.3"}).encode(),
            CLOUDEVENTS_JSON,
            id="specversion",
        ),
        pytest.param(
            event,
            json.dumps({k: v for k, v in event.items() if k != "data"}).encode(),
            CLOUDEVENTS_JSON,
            id="no-data",
        ),
        pytest.param(
            event,
            json.dumps({**event, "subject": ""}).encode(),
            CLOUDEVENTS_JSON,
            id="empty-subject",
        ),
        pytest.param(event, json.dumps(event).encode(), "application/json", id="binary-mode"),
        pytest.param(event, json.dumps(wrong_id).encode(), CLOUDEVENTS_JSON, id="id-mismatch"),
    ]


@pytest.mark.parametrize(("event", "body", "content_type"), _not_cloudevents())
def test_a_signed_body_that_is_not_a_cloudevent_is_a_400(open_receiver, event, body, content_type):
    client = open_receiver()
    answer = client.post("/events", **signed(event, body=body, content_type=content_type))
    assert answer.status_code == 400
    assert answer.json()["error"]
    assert client.get("/events").json() == []


def test_an_oversized_body_is_a_413(open_receiver):
    event = cloud_event()
    event["data"]["padding"] = "x" * (1 << 20)
    assert open_receiver().post("/events", **signed(event)).status_code == 413


def test_a_duplicate_id_is_answered_and_counted_only(open_receiver):
    client = open_receiver()
    first, second = cloud_event(), cloud_event()
    assert client.post("/events", **signed(first)).status_code == 200
    assert client.post("/events", **signed(second)).status_code == 200
    for deliveries in (2, 3):
        again = client.post("/events", **signed(first))  # a retry: same id, new timestamp
        assert again.status_code == 200
        assert again.json() == {"duplicate": True, "id": first["id"], "deliveries": deliveries}
    listed = client.get("/events").json()
    assert [(e["id"], e["deliveries"]) for e in listed] == [(first["id"], 3), (second["id"], 1)]


def test_the_state_file_outlives_the_receiver(open_receiver, tmp_path):
    state = tmp_path / "kept.sqlite"
    event = cloud_event()
    assert open_receiver(state=state).post("/events", **signed(event)).status_code == 200
    again = open_receiver(state=state).post("/events", **signed(event))
    assert again.json()["duplicate"] is True


# --- retraining ----------------------------------------------------------------------------------


class StandInMonitorRows:
    """A stand-in for the monitor's rows endpoint (GET /monitor/v1/models/{m}/rows, see
    monitoring.monitor.Monitor.rows), served by uvicorn on 127.0.0.1 from a thread: the first
    WINDOW_ROWS reference rows, shifted, with the outputs onnxruntime gives for them."""

    def __init__(self, version_dir: Path, status: int = 200) -> None:
        features = read_manifest(version_dir).metadata["feature_names"]
        reference = pd.read_parquet(version_dir / REFERENCE_FILE)
        x = (reference[features].to_numpy(np.float32)[:WINDOW_ROWS] * 1.3).astype(np.float32)
        session = ort.InferenceSession(
            str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        label, probabilities = session.run(["label", "probabilities"], {"input": x})
        columns = {name: x[:, i].tolist() for i, name in enumerate(features)}
        columns.update(
            label=label.tolist(),
            probabilities_0=probabilities[:, 0].tolist(),
            probabilities_1=probabilities[:, 1].tolist(),
        )
        self.document = {
            "model": "breast_cancer",
            "version": "1",
            "window": {"index": 3, "opened_at": 1.0, "closed_at": 61.0, "rows": WINDOW_ROWS},
            "columns": columns,
        }
        self.status = status
        self.gate = threading.Event()  # cleared: requests wait (the receiver must not)
        self.gate.set()
        self.calls: list[str] = []
        self.served = Served(
            Starlette(routes=[Route("/monitor/v1/models/{model}/rows", self.rows)])
        )
        self.url = f"{self.served.url}/monitor"

    async def rows(self, request: Request) -> JSONResponse:
        self.calls.append(str(request.url))
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return JSONResponse({"error": "missing or invalid bearer token"}, status_code=401)
        await asyncio.to_thread(self.gate.wait, 30)
        if self.status != 200:
            return JSONResponse(
                {"error": "no closed window with sampled rows"}, status_code=self.status
            )
        model, version = request.path_params["model"], request.query_params.get("version")
        if (model, version) != ("breast_cancer", "1"):
            return JSONResponse({"error": f"unknown {model}/{version}"}, status_code=404)
        return JSONResponse(self.document)

    def close(self) -> None:
        self.gate.set()
        self.served.close()


@pytest.fixture
def monitor(models: Path) -> Iterator[StandInMonitorRows]:
    stand_in = StandInMonitorRows(models / "breast_cancer" / "1")
    yield stand_in
    stand_in.close()


def _versions(models: Path) -> list[str]:
    return [v.manifest.version for v in scan(models)["breast_cancer"]]


def test_drift_retrains_into_the_next_version(open_receiver, models, monitor):
    client = open_receiver(monitor_url=monitor.url)
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    monitor.gate.clear()  # the monitor holds its answer: the receiver answers all the same
    answer = client.post("/events", **signed(event))
    assert answer.status_code == 202
    assert answer.json() == {"accepted": True, "id": event["id"], "retraining": "breast_cancer/1"}
    assert not (models / "breast_cancer" / "2").exists()
    monitor.gate.set()

    outcome = wait_for(lambda: retrained(client, event["id"]))
    parent_rows = len(pd.read_parquet(models / "breast_cancer" / "1" / REFERENCE_FILE))
    # A 40-row window keeps the parent's 100 most recent reference rows (MIN_HISTORY_ROWS).
    reference_rows = MIN_HISTORY_ROWS
    assert outcome["status"] == "published", outcome
    assert outcome["reference_rows_left_out"] == parent_rows - reference_rows
    assert outcome["version"] == "2"
    assert (outcome["reference_rows"], outcome["window_rows"]) == (reference_rows, WINDOW_ROWS)
    assert monitor.calls and monitor.calls[0].endswith("/v1/models/breast_cancer/rows?version=1")

    new = models / "breast_cancer" / "2"
    assert {"model.onnx", "model.yaml", "profile.json", "profile.npz", REFERENCE_FILE} <= {
        p.name for p in new.iterdir()
    }
    # No staging folder left behind (the aliases' lock file stays: it is reused).
    assert [p.name for p in (models / "breast_cancer").iterdir() if p.name.startswith(".")] == [
        LOCK_FILE]
    # Production was pinned to 1 before 2 appeared: the new version waits for a promote.
    assert read_aliases(models, "breast_cancer").production == "1"
    manifest = read_manifest(new)
    assert manifest.metadata["trained_from_event"] == event["id"]
    assert manifest.metadata["parent_version"] == "1"
    assert manifest.metadata["window_rows"] == WINDOW_ROWS
    # Published by vigil.tools.publishing: lineage and an audit entry naming the event.
    assert manifest.lineage["published_by"] == f"receiver:{event['id']}"
    assert manifest.lineage["metrics"] == {"training_accuracy": outcome["training_accuracy"]}
    [entry] = [e for e in audit.entries(models, "breast_cancer") if e["action"] == "publish"]
    assert (entry["actor"], entry["to_version"]) == (f"receiver:{event['id']}", "2")
    assert entry["details"]["sha256"] == manifest.sha256
    assert manifest.max_batch_rows == read_manifest(models / "breast_cancer" / "1").max_batch_rows
    frame = pd.read_parquet(new / REFERENCE_FILE)
    assert len(frame) == reference_rows + WINDOW_ROWS
    parent_frame = pd.read_parquet(models / "breast_cancer" / "1" / REFERENCE_FILE)
    assert frame.iloc[:reference_rows].equals(parent_frame.iloc[-reference_rows:].reset_index(
        drop=True))
    assert frame.columns[-1] == "target" and len(frame.columns) == 31
    # No labels in the monitor's rows: the window's rows carry the served model's predictions.
    assert frame["target"].tolist()[-WINDOW_ROWS:] == monitor.document["columns"]["label"]
    assert (outcome["labels"], manifest.metadata["window_labels"]) == ("pseudo", "pseudo")
    profile = Profile.load(new)
    assert profile.rows == reference_rows + WINDOW_ROWS
    assert profile.meta["outputs"] == "model" and "target" not in profile.names
    # The published model serves: its bytes match model.yaml and onnxruntime runs them.
    [v2] = [v for v in scan(models)["breast_cancer"] if v.manifest.version == "2"]
    session = ort.InferenceSession(v2.read_verified_bytes(), providers=["CPUExecutionProvider"])
    x = frame.drop(columns="target").to_numpy(np.float32)[:5]
    label, probabilities = session.run(None, {"input": x})
    assert label.shape == (5,) and probabilities.shape == (5, 2)

    # The monitor delivers at least once: the same id again changes nothing.
    again = client.post("/events", **signed(event))
    assert again.status_code == 200 and again.json()["duplicate"] is True
    time.sleep(0.3)
    assert _versions(models) == ["1", "2"]
    assert len(monitor.calls) == 1
    [listed] = client.get("/events").json()
    assert listed["deliveries"] == 2 and listed["retrained"]["version"] == "2"


def test_two_drift_events_at_once_publish_two_versions(open_receiver, models, monitor):
    client = open_receiver(monitor_url=monitor.url)
    events = [cloud_event(DRIFT_EVENT, "breast_cancer/1") for _ in range(2)]
    monitor.gate.clear()  # both jobs start before either gets rows
    assert [client.post("/events", **signed(e)).status_code for e in events] == [202, 202]
    monitor.gate.set()
    outcomes = [wait_for(lambda e=e: retrained(client, e["id"])) for e in events]
    assert sorted(o["version"] for o in outcomes) == ["2", "3"]
    first, second = sorted(outcomes, key=lambda o: o["version"])
    assert first["finished_at"] <= second["started_at"]  # one job at a time
    assert _versions(models) == ["1", "2", "3"]
    for event, outcome in zip(events, outcomes):
        manifest = read_manifest(models / "breast_cancer" / outcome["version"])
        assert manifest.metadata["trained_from_event"] == event["id"]


def test_an_unreachable_monitor_is_recorded_and_nothing_is_published(open_receiver, models):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = open_receiver(monitor_url=f"http://127.0.0.1:{port}/monitor")
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    assert client.post("/events", **signed(event)).status_code == 202
    outcome = wait_for(lambda: retrained(client, event["id"]))
    assert outcome["status"] == "failed"
    assert "cannot be reached" in outcome["error"]
    assert sorted(p.name for p in (models / "breast_cancer").iterdir()) == ["1"]


@pytest.mark.parametrize("status", [409, 404])
def test_a_monitor_without_rows_is_recorded_and_nothing_is_published(
    open_receiver, models, monitor, status
):
    monitor.status = status
    client = open_receiver(monitor_url=monitor.url)
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    assert client.post("/events", **signed(event)).status_code == 202
    outcome = wait_for(lambda: retrained(client, event["id"]))
    assert outcome["status"] == "failed"
    assert f"answered {status}" in outcome["error"] and "no closed window" in outcome["error"]
    assert sorted(p.name for p in (models / "breast_cancer").iterdir()) == ["1"]


def test_drift_of_an_unknown_version_is_recorded_as_failed(open_receiver, models, monitor):
    client = open_receiver(monitor_url=monitor.url)
    event = cloud_event(DRIFT_EVENT, "breast_cancer/7")
    assert client.post("/events", **signed(event)).status_code == 202
    outcome = wait_for(lambda: retrained(client, event["id"]))
    assert outcome["status"] == "failed" and "breast_cancer/7" in outcome["error"]
    assert monitor.calls == []
    assert _versions(models) == ["1"]


def test_drift_of_another_model_is_only_recorded(open_receiver, models):
    client = open_receiver()
    answer = client.post("/events", **signed(cloud_event(DRIFT_EVENT, "mlp/1")))
    assert answer.status_code == 200 and answer.json()["accepted"] is True
    assert client.get("/events").json()[0]["retrained"] is None


def test_window_rows_drop_unusable_rows_and_check_the_document():
    features = ["a", "b"]
    doc = {
        "model": "breast_cancer",
        "version": "1",
        "columns": {
            "a": [1.0, None, 3.0, 4.0, 1e39],
            "b": [1.0, 2.0, 3.0, 4.0, 5.0],
            "label": [0, 1, 2, 1, 0],
        },
    }
    rows = window_rows(doc, features, "1", classes=np.array([0, 1]))
    assert rows.x.dtype == np.float32 and rows.x.tolist() == [[1.0, 1.0], [4.0, 4.0]]
    assert rows.y.tolist() == [0, 1] and rows.dropped == 3
    assert (rows.ground_truth, rows.labelled, rows.unlabelled) == (False, 0, 0)  # no `labels`
    with pytest.raises(RetrainError, match="not breast_cancer/2"):
        window_rows(doc, features, "2", classes=np.array([0, 1]))
    with pytest.raises(RetrainError, match="lack"):
        window_rows({**doc, "columns": {"a": []}}, features, "1", classes=np.array([0, 1]))
    with pytest.raises(RetrainError, match="no usable rows"):
        empty = {"a": [], "b": [], "label": []}
        window_rows({**doc, "columns": empty}, features, "1", classes=np.array([0, 1]))


def _labelled_doc(n: int, labels: list) -> dict[str, Any]:
    """A rows document of `n` rows predicted 0, with the monitor's `labels` (null: none)."""
    return {"model": "breast_cancer", "version": "1",
            "columns": {"a": [float(i) for i in range(n)], "b": [1.0] * n, "label": [0] * n},
            "labels": labels}


def test_window_rows_train_on_the_labelled_rows_alone_when_there_are_enough():
    """At least min_labelled usable labelled rows: those rows, with their true labels; the
    unlabelled rows are left out (not pseudo-labelled), a labelled row with a non-finite feature
    or a label that is no class is dropped."""
    labels = [1, None, 1, 0, None, 7, 1]
    doc = _labelled_doc(7, labels)
    doc["columns"]["a"][6] = None  # non-finite: its label cannot be used
    rows = window_rows(doc, ["a", "b"], "1", classes=np.array([0, 1]), min_labelled=3)
    assert rows.ground_truth and rows.kind == "ground_truth"
    assert rows.x[:, 0].tolist() == [0.0, 2.0, 3.0] and rows.y.tolist() == [1, 1, 0]
    assert (rows.labelled, rows.unlabelled, rows.dropped) == (3, 2, 2)
    assert rows.describe("1").startswith("ground truth: the window's 3 labelled rows")


def test_window_rows_fall_back_to_pseudo_labels_below_the_threshold_and_say_so():
    """Fewer usable labelled rows than min_labelled: every usable row, its true label where it
    has one and the served model's prediction elsewhere."""
    doc = _labelled_doc(5, [1, None, None, 1, None])
    rows = window_rows(doc, ["a", "b"], "1", classes=np.array([0, 1]), min_labelled=3)
    assert not rows.ground_truth and rows.kind == "pseudo"
    assert rows.y.tolist() == [1, 0, 0, 1, 0] and len(rows.x) == 5
    assert (rows.labelled, rows.unlabelled, rows.dropped) == (2, 0, 0)
    assert rows.describe("1") == (
        "pseudo-labels: window rows carry breast_cancer/1's own predictions, not ground truth, "
        "except 2 rows with posted labels (fewer than the 3 needed to train on ground truth "
        "alone)")
    assert window_rows(doc, ["a", "b"], "1", np.array([0, 1]), min_labelled=2).ground_truth
    assert MIN_LABELLED_ROWS == 20  # the documented default
    for bad in ([1, 0], "1,0,1,0,0", {"0": 1}):
        with pytest.raises(RetrainError, match="not a list of one label per row"):
            window_rows({**doc, "labels": bad}, ["a", "b"], "1", classes=np.array([0, 1]))


def test_drift_retrains_on_the_windows_true_labels_when_enough_are_posted(open_receiver, models,
                                                                          monitor):
    """The monitor's rows carry labels (posted through the feedback route) for 30 of the 40
    rows, each the opposite of the model's prediction (the truth changed): the new version is
    trained on those 30 rows and their labels, and its metadata and the outcome say so."""
    predicted = monitor.document["columns"]["label"]
    truth = [1 - p if i < 30 else None for i, p in enumerate(predicted)]
    monitor.document["labels"] = truth
    client = open_receiver(monitor_url=monitor.url)
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    assert client.post("/events", **signed(event)).status_code == 202
    outcome = wait_for(lambda: retrained(client, event["id"]))
    assert outcome["status"] == "published", outcome
    assert (outcome["labels"], outcome["labelled_rows"], outcome["window_rows"]) == (
        "ground_truth", 30, 30)
    assert outcome["unlabelled_rows_left_out"] == 10
    assert outcome["labels_detail"].startswith("ground truth: the window's 30 labelled rows")
    manifest = read_manifest(models / "breast_cancer" / "2")
    assert manifest.metadata["window_labels"] == "ground_truth"
    assert manifest.metadata["labels"] == outcome["labels_detail"]
    assert manifest.metadata["source"].endswith("with ground-truth labels")
    assert (manifest.metadata["window_rows_labelled"],
            manifest.metadata["window_rows_unlabelled"]) == (30, 10)
    frame = pd.read_parquet(models / "breast_cancer" / "2" / REFERENCE_FILE)
    assert frame["target"].tolist()[-30:] == truth[:30]  # the true labels, not the predictions


def test_drift_with_too_few_labels_retrains_on_pseudo_labels_and_says_so(open_receiver, models,
                                                                         monitor):
    predicted = monitor.document["columns"]["label"]
    monitor.document["labels"] = [1 - p if i < 5 else None for i, p in enumerate(predicted)]
    client = open_receiver(monitor_url=monitor.url)
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    assert client.post("/events", **signed(event)).status_code == 202
    outcome = wait_for(lambda: retrained(client, event["id"]))
    assert (outcome["labels"], outcome["labelled_rows"], outcome["window_rows"]) == (
        "pseudo", 5, WINDOW_ROWS)
    manifest = read_manifest(models / "breast_cancer" / "2")
    assert manifest.metadata["window_labels"] == "pseudo"
    assert manifest.metadata["labels"].startswith("pseudo-labels: window rows carry "
                                                  "breast_cancer/1's own predictions")
    frame = pd.read_parquet(models / "breast_cancer" / "2" / REFERENCE_FILE)
    expected = [1 - p if i < 5 else p for i, p in enumerate(predicted)]
    assert frame["target"].tolist()[-WINDOW_ROWS:] == expected


@pytest.mark.parametrize(("parent", "window", "share", "kept"), [
    (426, 1985, 0.9, 221),    # the window is 9 in 10 of the frame: 1985 / 9 parent rows
    (426, 40, 0.9, 100),      # a small window still keeps MIN_HISTORY_ROWS of the parent
    (60, 40, 0.9, 60),        # ... or all the parent has
    (426, 2000, 1.0, 100),    # the window alone as far as it can be
    (426, 2000, 0.5, 426),    # half and half, capped by what the parent has
    (5000, 9000, 0.9, 1000),  # a grown parent gives its newest rows, not all of them
])
def test_the_parent_gives_its_most_recent_rows_so_the_window_dominates(parent, window, share, kept):
    parent_y = np.arange(parent) % 2
    assert history_rows(parent_y, window, share) == kept


def test_a_tail_of_one_class_keeps_the_whole_parent_reference():
    """A classifier needs every class: when the newest rows are all of one class, the parent's
    whole reference joins the window."""
    parent_y = np.array([0] * 50 + [1] * 300)
    assert history_rows(parent_y, 40, 0.9) == 350
    assert history_rows(np.array([1] * 300), 40, 0.9) == MIN_HISTORY_ROWS  # one class is all


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, float("nan")])
def test_a_recent_share_outside_zero_to_one_is_refused(models, share, capsys, monkeypatch):
    with pytest.raises(ValueError, match="recent_share"):
        Retrainer(models, "http://127.0.0.1:1", None, recent_share=share)
    monkeypatch.setenv("VIGIL_WEBHOOK_SECRET", "whsec_" + base64.b64encode(b"k" * 32).decode())
    with pytest.raises(SystemExit) as exc:
        main(["--models-dir", str(models), "--recent-share", str(share)])
    assert exc.value.code == 2 and "recent_share" in capsys.readouterr().err


def test_main_refuses_to_start_without_a_secret(models, monkeypatch, capsys):
    monkeypatch.delenv("VIGIL_WEBHOOK_SECRET", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(models), "--state", str(models / "s.sqlite")])
    assert exit_.value.code == 2
    assert "VIGIL_WEBHOOK_SECRET" in capsys.readouterr().err


def test_jobs_cut_short_by_a_restart_are_marked_interrupted(tmp_path):
    path = tmp_path / "state.sqlite"
    store = EventStore(path)
    event = cloud_event(DRIFT_EVENT)
    store.record(event, json.dumps(event), {"status": "queued", "parent_version": "1"})
    store.close()
    [listed] = EventStore(path).list()
    assert listed["retrained"] == {"status": "interrupted", "parent_version": "1"}


# --- forwarding to GitHub ------------------------------------------------------------------------

GITHUB_TOKEN = "ghp-receiver-test"


class StandInGitHub:
    """A stand-in for GitHub's REST API, which cannot be reached from here: POST
    /repos/{owner}/{repo}/dispatches (repository_dispatch) recorded and answered `status`
    (204, as GitHub accepts one), served by uvicorn on 127.0.0.1 from a thread."""

    def __init__(self, status: int = 204) -> None:
        self.status = status
        self.dispatches: list[dict[str, Any]] = []
        self.served = Served(
            Starlette(routes=[
                Route("/repos/{owner}/{repo}/dispatches", self.dispatch, methods=["POST"])
            ])
        )
        self.url = self.served.url

    async def dispatch(self, request: Request) -> Response:
        self.dispatches.append({
            "repo": f"{request.path_params['owner']}/{request.path_params['repo']}",
            "headers": dict(request.headers),
            "body": json.loads(await request.body()),
        })
        if self.status == 204:
            return Response(status_code=204)
        return JSONResponse({"message": "Server Error"}, status_code=self.status)

    def close(self) -> None:
        self.served.close()


@pytest.fixture
def github() -> Iterator[StandInGitHub]:
    stand_in = StandInGitHub()
    yield stand_in
    stand_in.close()


def _forward(github: StandInGitHub) -> GitHubDispatch:
    return GitHubDispatch("octo/vigil", GITHUB_TOKEN, api_url=github.url)


def test_forwarding_sends_a_drift_event_to_githubs_repository_dispatch(
    open_receiver, models, monitor, github
):
    client = open_receiver(monitor_url=monitor.url, forward=_forward(github))
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    answer = client.post("/events", **signed(event))
    assert answer.status_code == 200
    assert answer.json() == {"accepted": True, "id": event["id"], "forwarded": True}

    [dispatch] = github.dispatches
    assert dispatch["repo"] == "octo/vigil"
    assert dispatch["headers"]["authorization"] == f"Bearer {GITHUB_TOKEN}"
    assert dispatch["headers"]["accept"] == "application/vnd.github+json"
    assert dispatch["headers"]["content-type"] == "application/json"
    body = dispatch["body"]
    assert set(body) == {"event_type", "client_payload"}
    assert body["event_type"] == DRIFT_EVENT
    payload = body["client_payload"]
    assert len(payload) <= 10  # GitHub refuses a client_payload of more top-level keys
    assert (payload["id"], payload["model"], payload["version"]) == (
        event["id"], "breast_cancer", "1")
    assert (payload["type"], payload["subject"]) == (DRIFT_EVENT, "breast_cancer/1")

    # Nothing is retrained here: no job, no call to the monitor, no new version.
    assert client.get("/healthz").json()["retraining_jobs"] == 0
    [listed] = client.get("/events").json()
    assert listed["retrained"] == {"status": "forwarded"}

    # The monitor delivers at least once: the same id again is a duplicate, not a dispatch.
    again = client.post("/events", **signed(event))
    assert again.status_code == 200
    assert again.json() == {"duplicate": True, "id": event["id"], "deliveries": 2}
    assert len(github.dispatches) == 1

    # Any other verified event is forwarded with its own type (retrain.yml ignores it).
    other = cloud_event()
    assert client.post("/events", **signed(other)).json()["forwarded"] is True
    assert [d["body"]["event_type"] for d in github.dispatches] == [DRIFT_EVENT, other["type"]]

    time.sleep(0.3)
    assert monitor.calls == []
    assert _versions(models) == ["1"]


def test_an_event_github_refuses_is_a_502_and_forwarded_on_redelivery(
    open_receiver, models, github
):
    github.status = 500
    client = open_receiver(forward=_forward(github))
    event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
    answer = client.post("/events", **signed(event))
    assert answer.status_code == 502
    assert "500" in answer.json()["error"]
    assert client.get("/events").json() == []  # not recorded: a redelivery is not a duplicate

    github.status = 204
    again = client.post("/events", **signed(event))  # the outbox's retry: same id
    assert again.status_code == 200
    assert again.json() == {"accepted": True, "id": event["id"], "forwarded": True}
    assert [d["body"]["client_payload"]["id"] for d in github.dispatches] == [event["id"]] * 2
    [listed] = client.get("/events").json()
    assert listed["deliveries"] == 1 and listed["retrained"] == {"status": "forwarded"}
    assert _versions(models) == ["1"]


def test_github_out_of_reach_is_a_502(open_receiver):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    forward = GitHubDispatch("octo/vigil", GITHUB_TOKEN, api_url=f"http://127.0.0.1:{port}")
    client = open_receiver(forward=forward)
    answer = client.post("/events", **signed(cloud_event(DRIFT_EVENT, "breast_cancer/1")))
    assert answer.status_code == 502
    assert client.get("/events").json() == []


@pytest.mark.parametrize("repo", ["vigil", "octo/vigil/extra", "/vigil", "octo/", "octo/vi gil",
                                  "octo/vigil;rm", ""])
def test_github_dispatch_refuses_a_repo_not_owner_slash_repo(repo):
    with pytest.raises(ValueError, match="OWNER/REPO"):
        GitHubDispatch(repo, GITHUB_TOKEN)


def test_github_dispatch_refuses_an_empty_token():
    with pytest.raises(ValueError, match="GITHUB_TOKEN"):
        GitHubDispatch("octo/vigil", "")


def test_main_refuses_to_forward_without_a_github_token(models, monkeypatch, capsys):
    monkeypatch.setenv("VIGIL_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(models), "--state", str(models / "s.sqlite"),
              "--forward-to-github", "octo/vigil"])
    assert exit_.value.code == 2
    assert "GITHUB_TOKEN" in capsys.readouterr().err


# --- reading what is stored ----------------------------------------------------------------------


def _events_url(client: httpx.Client) -> str:
    return str(client.base_url.join("/events"))


@pytest.mark.parametrize(
    "authorization",
    [None, f"Basic {READ_TOKEN}", "Bearer", f"Bearer {READ_TOKEN}x", f"Bearer {TOKEN}"],
    ids=["none", "basic", "empty", "wrong", "the-monitors-token"],
)
def test_reading_events_takes_the_receivers_own_token(open_receiver, authorization):
    """GET /events without the read token (none, another scheme, an empty or a wrong one, the
    token the receiver sends to the monitor): 401 with WWW-Authenticate and nothing stored in
    the body. With it: the events."""
    client = open_receiver()
    event = cloud_event()
    assert client.post("/events", **signed(event)).status_code == 200
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = httpx.get(_events_url(client), headers=headers, timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith('Bearer realm="vigil-receiver"')
    assert set(answer.json()) == {"error"} and event["id"] not in answer.text
    allowed = httpx.get(_events_url(client), headers={"Authorization": f"Bearer {READ_TOKEN}"},
                        timeout=10)
    assert [e["id"] for e in allowed.json()] == [event["id"]]


def test_without_a_read_token_nothing_is_read_and_health_stays_open(open_receiver, monkeypatch):
    """No VIGIL_RECEIVER_TOKEN: every GET /events is a 401 that says how to turn reading on,
    whatever token is sent; /healthz answers, with counts only."""
    monkeypatch.delenv(READ_TOKEN_ENV, raising=False)
    client = open_receiver(read_token=None)
    assert client.post("/events", **signed(cloud_event())).status_code == 200
    answer = client.get("/events")  # the client sends READ_TOKEN: nothing matches it
    assert answer.status_code == 401 and READ_TOKEN_ENV in answer.json()["error"]
    assert answer.headers["www-authenticate"] == 'Bearer realm="vigil-receiver"'
    health = httpx.get(str(client.base_url.join("/healthz")), timeout=10)
    assert health.json() == {"status": "ok", "retraining_jobs": 0, "stored_events": 1}


def test_a_short_read_token_is_refused_at_start(models, monkeypatch, capsys):
    monkeypatch.setenv("VIGIL_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv(READ_TOKEN_ENV, "short")
    with pytest.raises(SystemExit) as exit_:
        main(["--models-dir", str(models), "--state", str(models / "s.sqlite")])
    assert exit_.value.code == 2
    assert f"{READ_TOKEN_ENV} is shorter than 16" in capsys.readouterr().err


def test_read_access_alone():
    """The token's digest compared: the right bearer passes; anything else is a 401 Refusal."""
    access = ReadAccess(READ_TOKEN)
    access.check(f"Bearer {READ_TOKEN}")
    access.check(f"bearer {READ_TOKEN}")  # the scheme is case-insensitive (RFC 7235)
    for wrong in (None, "", READ_TOKEN, f"Bearer {READ_TOKEN[:-1]}"):
        with pytest.raises(Refusal) as refused:
            access.check(wrong)
        assert refused.value.status == 401 and "WWW-Authenticate" in refused.value.headers


def test_an_event_id_over_256_characters_is_a_400(open_receiver):
    """The id is the dedup key and part of the audit's actor: a longer one is refused."""
    client = open_receiver()
    answer = client.post("/events", **signed(cloud_event(event_id="x" * (MAX_ID_CHARS + 1))))
    assert answer.status_code == 400 and f"over {MAX_ID_CHARS}" in answer.json()["error"]
    assert client.get("/events").json() == []


def test_the_store_keeps_the_newest_events_and_unfinished_jobs(tmp_path):
    """With max_events 3, twenty more events leave the count flat at 3 (plus a job still
    queued, which is kept until it finishes); the newest are the ones kept."""
    store = EventStore(tmp_path / "state.sqlite", max_events=3)
    queued = cloud_event(DRIFT_EVENT)
    store.record(queued, json.dumps(queued), {"status": "queued", "parent_version": "1"})
    events = [cloud_event() for _ in range(20)]
    counts = []
    for event in events:
        store.record(event, json.dumps(event))
        counts.append(store.count())
    assert counts[2:] == [4] * 18
    assert [e["id"] for e in store.list()] == [queued["id"], *(e["id"] for e in events[-3:])]
    store.set_retrained(queued["id"], {"status": "published", "version": "2"})
    latest = cloud_event()
    store.record(latest, json.dumps(latest))
    assert [e["id"] for e in store.list()] == [*(e["id"] for e in events[-2:]), latest["id"]]
    store.close()


# --- the receiver's parts, without HTTP ----------------------------------------------------------


def test_the_receivers_parts_work_alone(models, tmp_path):
    """Verifying, recording, listing and health on a Receiver, with a real SQLite store and no
    server: a bad signature is a 401 Refusal, a drift event names the version to retrain, a
    repeated id is counted, and reading takes the token."""
    receiver = Receiver.from_environment(
        models_dir=models, monitor_url="http://127.0.0.1:9/monitor",
        state_path=tmp_path / "state.sqlite", secrets=SECRET, token=TOKEN, read_token=READ_TOKEN,
    )
    event, drift = cloud_event(), cloud_event(DRIFT_EVENT)
    request = signed(event)
    assert receiver.verified_event(request["content"], request["headers"], "test") == event
    forged = {**request["headers"], "webhook-signature": signed(event, STRANGER)["headers"][
        "webhook-signature"]}
    with pytest.raises(Refusal) as refused:
        receiver.verified_event(request["content"], forged, "test")
    assert refused.value.status == 401

    reply, parent = receiver.record(event, request["content"])
    assert (reply.status, reply.body, parent) == (200, {"accepted": True, "id": event["id"]}, None)
    reply, parent = receiver.record(drift, json.dumps(drift).encode())
    assert (reply.status, parent) == (202, "1")
    reply, parent = receiver.record(event, request["content"])
    assert (reply.body["deliveries"], parent) == (2, None)

    with pytest.raises(Refusal):
        receiver.events(None)
    assert [e["id"] for e in receiver.events(f"Bearer {READ_TOKEN}")] == [event["id"], drift["id"]]
    assert receiver.health() == {"status": "ok", "retraining_jobs": 0, "stored_events": 2}
    asyncio.run(receiver.close())


# --- publishing through vigil.tools.publishing ---------------------------------------------------


def _trained(retrainer: Retrainer, seed: int) -> Trained:
    """A model trained on a random 90% of breast_cancer/1's reference rows: other bytes per seed."""
    parent = retrainer.parent("1")
    frame = parent.reference.sample(frac=0.9, random_state=seed).reset_index(drop=True)
    onnx_bytes, accuracy = train(frame[parent.features].to_numpy(np.float32),
                                 frame["target"].to_numpy(np.int64))
    metadata = {"feature_names": parent.features, "seed": seed}
    return Trained(onnx_bytes, frame, metadata, {"training_accuracy": accuracy})


def test_racing_retrainers_each_publish_their_own_version(models):
    """Three retrainers with locks of their own (as three processes would be) publish at once,
    into a repository where an empty folder 2 was left by an earlier claim: 2 stays empty, and
    3, 4 and 5 each hold one of the three models (a number taken by another is skipped), each
    with its reference.parquet and one audit entry."""
    (models / "breast_cancer" / "2").mkdir()
    retrainers = [Retrainer(models, "http://127.0.0.1:9/monitor", TOKEN) for _ in range(3)]
    models_to_publish = [_trained(r, seed) for seed, r in enumerate(retrainers)]
    with ThreadPoolExecutor(3) as pool:
        published = list(pool.map(lambda pair: pair[0].publish(pair[1], f"test:{id(pair[1])}"),
                                   zip(retrainers, models_to_publish)))
    assert sorted(v.manifest.version for v in published) == ["3", "4", "5"]
    for version, trained in zip(published, models_to_publish):
        assert version.read_verified_bytes() == trained.onnx_bytes
        assert len(pd.read_parquet(version.path / REFERENCE_FILE)) == len(trained.frame)
    assert list((models / "breast_cancer" / "2").iterdir()) == []
    publishes = [e["to_version"] for e in audit.entries(models) if e["action"] == "publish"]
    assert sorted(publishes) == ["3", "4", "5"]


# ------------------------------------------------------------------ closing the loop: gate, rollout


def _shipper(url: str, force_reason: str | None = None):
    from examples.shipping import Shipping
    from vigil.core.rollout import make_plan

    return Shipping(url, make_plan((0.05, 0.5), windows_per_step=1), force_reason)


def test_a_retrained_version_that_passes_the_gate_starts_a_rollout(open_receiver, models, monitor,
                                                                  monkeypatch):
    from tests.local_http import serving
    from tests.unit.cli_support import StandInAdminServer

    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")  # the admin's, for the rollout
    admin = StandInAdminServer(models)
    with serving(admin.app) as url:
        client = open_receiver(monitor_url=monitor.url, shipper=_shipper(url))
        event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
        assert client.post("/events", **signed(event)).status_code == 202
        outcome = wait_for(lambda: retrained(client, event["id"]))
    assert outcome["shipped"]["gate"] == "passed", outcome
    assert outcome["shipped"]["rollout"] == "started" and outcome["shipped"]["forced"] is False
    state = read_aliases(models, "breast_cancer")
    assert (state.canary.version, state.canary.weight, state.rollout.plan.steps) == (
        "2", 0.05, (0.05, 0.5))
    assert [r[1].rsplit("/", 1)[-1] for r in admin.requests] == ["rollout"]


def test_a_candidate_trained_on_shuffled_labels_fails_the_gate_and_is_forced_only_with_a_reason(
        open_receiver, models, monitor, monkeypatch):
    from tests.local_http import serving
    from tests.unit.cli_support import StandInAdminServer

    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    admin = StandInAdminServer(models)
    with serving(admin.app) as url:
        client = open_receiver(monitor_url=monitor.url, shipper=_shipper(url),
                               shuffle_labels=True)
        event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
        client.post("/events", **signed(event))
        refused = wait_for(lambda: retrained(client, event["id"]))
        assert refused["shipped"]["gate"] == "failed" and refused["shipped"]["rollout"] is None
        assert read_aliases(models, "breast_cancer").rollout is None
        assert read_manifest(models / "breast_cancer" / "2").metadata["labels"].startswith(
            "shuffled")

        forced = open_receiver(monitor_url=monitor.url, state=models.parent / "forced.sqlite",
                               shipper=_shipper(url, "demo: a worse candidate"),
                               shuffle_labels=True)
        event = cloud_event(DRIFT_EVENT, "breast_cancer/1")
        forced.post("/events", **signed(event))
        outcome = wait_for(lambda: retrained(forced, event["id"]))
    assert outcome["shipped"]["rollout"] == "started" and outcome["shipped"]["forced"] is True
    state = read_aliases(models, "breast_cancer")
    assert state.rollout.version == "3" and state.production == "1"
    entry = [e for e in audit.entries(models, "breast_cancer") if e["action"] == "rollout"][-1]
    assert "forced past the gate" in entry["reason"] and entry["details"]["forced"] is True
