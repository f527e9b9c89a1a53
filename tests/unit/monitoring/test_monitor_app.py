"""The monitor's HTTP app without Ray: its error answers (registered once as the app's
exception handlers) and its status, driven in process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from monitoring.monitor import ERROR_STATUS, Monitor, build_asgi_app
from monitoring.queries import BadQuery
from monitoring.service import NotReady, UnknownModel
from monitoring.settings import MonitorSettings


@pytest.fixture
def monitor(example_root: Path, tmp_path: Path) -> Iterator[Monitor]:
    m = Monitor({"model_repository": str(example_root), "auth": "none",
                 "outbox_path": str(tmp_path / "outbox.sqlite")})
    yield m
    m._worker.shutdown(wait=True)
    m._report_worker.shutdown(wait=True)


Get = Callable[[str], httpx.Response]


@pytest.fixture
def client(monitor: Monitor) -> Get:
    app = build_asgi_app(monitor)

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.get(path)

    return lambda path: asyncio.run(get(path))


def test_the_errors_a_route_raises_are_answered_once_for_all() -> None:
    assert ERROR_STATUS == {BadQuery: 400, UnknownModel: 404, NotReady: 409}


@pytest.mark.parametrize(("path", "status", "error"), [
    ("/v1/models/breast_cancer/drift?windows=0", 400, "windows must be a whole number"),
    ("/v1/models/breast_cancer/drift?nope=1", 400, "unknown query parameter(s) 'nope'"),
    ("/v1/models/nope/drift", 404, "unknown model 'nope'"),
    ("/v1/models/breast_cancer/report?version=9", 404, "unknown version '9'"),
    ("/v1/models/mlp/report", 409, "has no profile"),
    ("/v1/models/breast_cancer/rows", 409, "no closed window with sampled rows"),
    ("/v1/models/breast_cancer/rows?version=..", 400, "version must be a version label"),
    ("/v1/models/breast_cancer/rows?labelled=yes", 400,
     "labelled must be 'all' or 'only', got 'yes'"),
    ("/v1/models/breast_cancer/rows?labelled=only&labelled=only", 400,
     "query parameter 'labelled' is given more than once"),
    ("/v1/models/breast_cancer/rows?windows=2", 400,
     "unknown query parameter(s) 'windows': this route takes labelled, version"),
    ("/v1/models/breast_cancer/rows?labelled=only", 409, "no closed window with sampled rows"),
    ("/v1/nothing", 404, "no route /v1/nothing"),
])
def test_errors_are_json_with_their_status(client: Get, path, status, error) -> None:
    """A bad query gets 400, an unknown model or version 404, a valid request that cannot be
    answered yet 409: each an {"error"} body from the app's handlers, not a route's own catch."""
    response = client(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert error in response.json()["error"]


def test_status_shows_webhook_urls_redacted(monitor: Monitor, client: Get) -> None:
    """/v1/status returns the live settings: a target URL's password and token stay hidden."""
    url = "https://robot:hunter22-pw@hooks.example/in?token=s3cr3t-t0ken"
    monitor.settings = MonitorSettings(webhooks=[{"name": "t", "url": url, "secret_env": "S"}])
    response = client("/v1/status")
    assert response.status_code == 200
    assert response.json()["settings"]["webhooks"][0]["url"] == \
        "https://***@hooks.example/in?token=***"
    assert "hunter22-pw" not in response.text and "s3cr3t-t0ken" not in response.text


def test_a_model_whose_files_cannot_be_read_starts_the_monitor_and_is_in_its_status(
        example_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    (root / "mlp" / "1" / "model.yaml").write_text(": not yaml : [")
    m = Monitor({"model_repository": str(root), "auth": "none",
                 "outbox_path": str(tmp_path / "outbox.sqlite")})  # raised before: no monitor
    try:
        app = build_asgi_app(m)

        async def get() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get("/v1/status")

        status = asyncio.run(get()).json()
        assert [v["model"] for v in status["versions"]] == ["breast_cancer"]
        assert str(root / "mlp" / "1" / "model.yaml") in status["unreadable"]["mlp"]
    finally:
        m._worker.shutdown(wait=True)
        m._report_worker.shutdown(wait=True)


def test_sampled_rows_come_back_with_the_labels_posted_for_their_requests(
        monitor: Monitor, client: Get, example_root: Path) -> None:
    """The whole way without Ray: a replica's sample buffer and prediction log (serving), their
    messages taken by the monitor, labels posted for some requests, then the rows endpoint: each
    row has its request id and, where its request was labelled, its label."""
    import numpy as np
    import pandas as pd

    from serving.prediction_log import PredictionLog
    from serving.sampling import SampleBuffer

    monitor.service.reconfigure(MonitorSettings(window={"rows": 100, "seconds": None}), 0.0)
    frame = pd.read_parquet(example_root / "breast_cancer" / "1" / "reference.parquet")
    x = frame.drop(columns=["target"]).to_numpy(np.float32)[:100]
    samples, log = SampleBuffer(1.0, 1000, 1000), PredictionLog(1000)
    for i in range(0, 100, 2):  # 50 requests of two rows, ids q0, q2, ...
        outputs = {"label": np.array([0, 1]), "probabilities": np.full((2, 2), 0.5, np.float32)}
        samples.record("breast_cancer", "1", 0.01, 200, {"input": x[i:i + 2]}, outputs,
                       request_id=f"q{i}")
        log.record("breast_cancer", "1", f"q{i}", 1.0, outputs)
    monitor.labels.record(log.drain(), 5.0)
    assert [w.rows for w in monitor.service.ingest(samples.drain(), 6.0)] == [100]
    joined = monitor.labels.label("breast_cancer", [("q0", [1, 1]), ("q98", [0, 0])], False, 7.0)
    assert [o["outcome"] for o in joined] == ["joined", "joined"]

    everything = client("/v1/models/breast_cancer/rows")
    assert everything.status_code == 200, everything.text
    doc = everything.json()
    assert (doc["rows"], doc["labelled_rows"], doc["label_of"]) == (100, 4, "label")
    assert doc["labels"] == [1, 1] + [None] * 96 + [0, 0]
    assert doc["request_ids"][:4] == ["q0", "q0", "q2", "q2"]
    assert doc["columns"]["label"][:2] == [0, 1]  # the prediction stays a column of its own
    only = client("/v1/models/breast_cancer/rows?labelled=only&version=1").json()
    assert (only["rows"], only["labels"], only["request_ids"]) == (
        4, [1, 1, 0, 0], ["q0", "q0", "q98", "q98"])
    assert only["columns"]["mean radius"] == [float(v) for v in x[[0, 1, 98, 99], 0]]
