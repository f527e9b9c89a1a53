"""Retraining alerts end to end: the real Monitor replica judges windows, commits events to its
SQLite outbox and delivers them, signed, to real receivers on 127.0.0.1: the example retraining
receiver (examples/retrain_receiver.py, its own process) and a server that answers 500, hangs
or answers 410.

Windows are 100 sampled rows (rows only: nothing closes on time); rows are fed through the
monitor's ingest handle, clean (drawn from the reference data) or shifted (+3 standard
deviations on every feature). The drift rule fires on the first drifted window and resolves on
the first clean one, so every count below is exact.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.retraining import MIN_HISTORY_ROWS, history_rows
from monitoring.outbox import Outbox
from monitoring.settings import MonitorAppSettings
from load_tests.procs import free_port
from tests.integration.conftest import ROOT, wait_for
from tests.integration.test_monitor import _batch, _monitor_app, _wait_until_no_samples_arrive
from tests.local_http import serving
from vigil.core.repository import read_manifest

pytestmark = pytest.mark.slow
ROWS = 100
SECRET_ENV = "VIGIL_TEST_WEBHOOK_SECRET"
READ_TOKEN = "alerts-test-read-token-0123456789"  # the receiver's GET /events token
RULE = "bc-drift"


class ReceiverProcess:
    """The example receiver, started and stopped as a user would run it."""

    def __init__(self, port: int, workdir: Path, monitor_url: str, token: str) -> None:
        self.port, self.workdir, self.monitor_url, self.token = port, workdir, monitor_url, token
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "VIGIL_WEBHOOK_SECRET": os.environ[SECRET_ENV], "VIGIL_TOKEN": self.token,
               "VIGIL_RECEIVER_TOKEN": READ_TOKEN}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "examples.retrain_receiver", "--port", str(self.port),
             "--models-dir", str(self.workdir / "models"), "--monitor-url", self.monitor_url,
             "--state", str(self.workdir / "receiver-state.sqlite")],
            cwd=ROOT, env=env, stdout=open(self.workdir / "receiver.log", "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200, 60,
                 "the receiver up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def events(self) -> list[dict]:
        return httpx.get(f"{self.url}/events", timeout=10,
                         headers={"Authorization": f"Bearer {READ_TOKEN}"}).json()


def _failing_app(hits: dict[str, list[str]]) -> Starlette:
    """/fail answers 500, /hang answers after 5 s (past the target's timeout), /gone 410."""
    async def handle(request: Request) -> Response:
        route = request.path_params["route"]
        hits.setdefault(route, []).append(request.headers.get("webhook-id", ""))
        if route == "hang":
            await asyncio.sleep(5)
        return Response(status_code={"fail": 500, "hang": 200, "gone": 410}[route])

    return Starlette(routes=[Route("/{route}", handle, methods=["POST"])])


@pytest.fixture(scope="module")
def alerting(vigil, tmp_path_factory):
    from ray import serve

    version_dir = vigil.models_dir / "breast_cancer" / "1"
    features = read_manifest(version_dir).metadata["feature_names"]
    x = pd.read_parquet(version_dir / "reference.parquet")[features].to_numpy(np.float32)
    session = ort.InferenceSession(str(version_dir / "model.onnx"))
    rng = np.random.default_rng(7)
    shifted = x + 3 * x.std(axis=0)

    # The receiver retrains into its own copy of the repository, not the session's.
    workdir = tmp_path_factory.mktemp("receiver")
    shutil.copytree(version_dir, workdir / "models" / "breast_cancer" / "1")
    receiver = ReceiverProcess(free_port(), workdir, f"{vigil.base_url}/monitor", vigil.token)
    receiver.start()
    hits: dict[str, list[str]] = {}
    handle = serve.get_deployment_handle("Monitor", app_name="monitor")

    def windows(n: int, shift: bool = False) -> None:
        for _ in range(n):
            rows = (shifted if shift else x)[rng.choice(len(x), ROWS, replace=False)]
            label, proba = session.run(None, {"input": rows})
            message = _batch("breast_cancer", {"input": rows},
                             {"label": label, "probabilities": proba})
            handle.ingest.remote([message]).result(timeout_s=60)

    with serving(_failing_app(hits)) as failing:
        quick = {"backoff_s": 0.1, "max_backoff_s": 0.3}
        user_config = {
            "window": {"rows": ROWS, "seconds": None},
            "alerts": [{"name": RULE, "model": "breast_cancer", "when": {"dataset_drift": True},
                        "min_rows": 50, "for_windows": 1, "resolve_windows": 1}],
            "webhooks": [
                {"name": "receiver", "url": f"{receiver.url}/events", "secret_env": SECRET_ENV,
                 "timeout_s": 5, "max_attempts": 100, "backoff_s": 0.2, "max_backoff_s": 1.0},
                {"name": "fail", "url": f"{failing}/fail", "secret_env": SECRET_ENV,
                 "events": ["vigil.drift.detected"], "max_attempts": 3, **quick},
                {"name": "hang", "url": f"{failing}/hang", "secret_env": SECRET_ENV,
                 "events": ["vigil.drift.detected"], "max_attempts": 3, "timeout_s": 0.5, **quick},
                {"name": "gone", "url": f"{failing}/gone", "secret_env": SECRET_ENV,
                 "events": ["vigil.drift.detected"], "max_attempts": 3, **quick},
            ],
        }
        config = _with_monitor_user_config(vigil.config, user_config)
        _wait_until_no_samples_arrive(vigil)
        vigil.deploy(config)
        wait_for(lambda: [a["rule"] for a in _drift(vigil)["alerts"]] == [RULE], 180,
                 "the monitor running the test's rules", 1.0)
        outbox = Outbox(MonitorAppSettings(model_repository=vigil.models_dir).outbox_file())
        try:
            yield SimpleNamespace(windows=windows, receiver=receiver, hits=hits, outbox=outbox,
                                  workdir=workdir, handle=handle)
        finally:
            receiver.stop()
            vigil.deploy(vigil.config)


def _with_monitor_user_config(config: dict, user_config: dict) -> dict:
    import copy

    config = copy.deepcopy(config)
    deployment = _monitor_app(config)["deployments"][0]
    deployment["user_config"] = {**deployment["user_config"], **user_config}
    return config


def _drift(vigil) -> dict:
    return vigil.get("/monitor/v1/models/breast_cancer/drift", params={"windows": 1}).json()


def _alert(vigil) -> dict:
    (alert,) = _drift(vigil)["alerts"]
    return alert


def _types(events: list[dict]) -> Counter[str]:
    return Counter(e["type"] for e in events)


def _new(events: list[dict], before: list[dict]) -> list[dict]:
    seen = {e["id"] for e in before}
    return [e for e in events if e["id"] not in seen]


def _metric(vigil, name: str, **labels: str) -> float | None:
    for line in vigil.get("/monitor/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _settle(alerting, before: list[dict], expected: int, timeout: float = 60) -> list[dict]:
    """The events the receiver got since `before`, once there are `expected` and a little time
    has passed without more (so 'exactly' means exactly)."""
    wait_for(lambda: len(_new(alerting.receiver.events(), before)) >= expected, timeout,
             f"{expected} new events at the receiver")
    time.sleep(1.5)
    return _new(alerting.receiver.events(), before)


def test_clean_traffic_for_20_windows_sends_nothing(vigil, alerting):
    before_events = alerting.receiver.events()
    before_ids = {d.event_id for d in alerting.outbox.deliveries(limit=10_000)}
    evaluated = _drift(vigil)["windows_evaluated"]
    alerting.windows(20)
    doc = _drift(vigil)
    assert doc["windows_evaluated"] == evaluated + 20
    alert = doc["alerts"][0]
    assert alert["status"] == "ok" and alert["latest"]["breached"] is False
    assert alert["latest"]["window"] == evaluated + 20
    time.sleep(1.5)
    assert _new(alerting.receiver.events(), before_events) == []
    assert {d.event_id for d in alerting.outbox.deliveries(limit=10_000)} == before_ids
    assert _metric(vigil, "vigil_alert_firing", model="breast_cancer", version="1", rule=RULE) == 0


def test_shift_fires_once_and_clean_resolves_once_and_the_receiver_retrains(vigil, alerting):
    before = alerting.receiver.events()
    alerting.windows(3, shift=True)
    fired = _settle(alerting, before, 1)
    assert _types(fired) == {"vigil.drift.detected": 1}
    (event,) = fired
    assert event["subject"] == "breast_cancer/1"
    assert _alert(vigil)["status"] == "firing"
    assert _metric(vigil, "vigil_alert_firing", model="breast_cancer", version="1", rule=RULE) == 1

    alerting.windows(3)
    events = _settle(alerting, before, 2)
    assert _types(events) == {"vigil.drift.detected": 1, "vigil.alert.resolved": 1}
    assert _alert(vigil)["status"] == "ok"
    assert _metric(vigil, "vigil_alert_firing", model="breast_cancer", version="1", rule=RULE) == 0

    # The receiver fetched the window's rows from the monitor and published a new version.
    new_version = alerting.workdir / "models" / "breast_cancer" / "2"
    wait_for(lambda: (new_version / "profile.json").exists(), 120, "breast_cancer/2 retrained")
    manifest = read_manifest(new_version)
    assert manifest.metadata["trained_from_event"] == event["id"]
    reference = pd.read_parquet(new_version / "reference.parquet")
    original = pd.read_parquet(alerting.workdir / "models" / "breast_cancer" / "1" / "reference.parquet")
    # The window's rows and the parent's newest reference rows: at least 100 of them
    # (examples.retraining.history_rows), a tenth of the frame at most beyond that.
    kept = history_rows(original["target"].to_numpy(), ROWS)
    assert kept == MIN_HISTORY_ROWS
    assert len(reference) == kept + ROWS
    assert reference.iloc[:kept].equals(original.iloc[-kept:].reset_index(drop=True))


def test_events_wait_for_a_receiver_that_is_down(vigil, alerting):
    before = alerting.receiver.events()
    alerting.receiver.stop()
    try:
        alerting.windows(2, shift=True)
        alerting.windows(2)
        pending = wait_for(
            lambda: (p := alerting.outbox.deliveries(state="pending", target="receiver"))
            and len(p) == 2 and all(d.attempts >= 1 for d in p) and p,
            60, "two events pending, tried and failed",
        )
        assert {d.type for d in pending} == {"vigil.drift.detected", "vigil.alert.resolved"}
        assert _metric(vigil, "vigil_webhook_outbox_pending", target="receiver") == 2
        assert (_metric(vigil, "vigil_webhook_deliveries_total", target="receiver",
                        outcome="connection_error") or 0) >= 2
    finally:
        alerting.receiver.start()
    events = _settle(alerting, before, 2, timeout=90)
    assert {e["id"] for e in events} == {d.event_id for d in pending}
    assert all(e["deliveries"] >= 1 for e in events)
    # A replay sends the same id again: the receiver's deduplication sees it once.
    replayed = pending[0].event_id
    from vigil.tools.cli import main

    assert main(["webhooks", "replay", replayed, "--target", "receiver",
                 "--outbox", str(alerting.outbox.path)]) == 0
    wait_for(lambda: next(e for e in alerting.receiver.events() if e["id"] == replayed)
             ["deliveries"] == 2, 30, "the replayed event delivered again")
    assert len(_new(alerting.receiver.events(), before)) == 2


def test_500_hang_and_410_are_retried_retried_and_dead_lettered(vigil, alerting):
    before = alerting.receiver.events()
    alerting.windows(1, shift=True)
    (event,) = _settle(alerting, before, 1)
    eid = event["id"]

    def dead(target: str):
        return [d for d in alerting.outbox.deliveries(event_id=eid, target=target) if d.state == "dead"]

    wait_for(lambda: all(dead(t) for t in ("fail", "hang", "gone")), 60, "three dead letters")
    attempts = {t: dead(t)[0].attempts for t in ("fail", "hang", "gone")}
    assert attempts == {"fail": 3, "hang": 3, "gone": 1}
    assert Counter(h for h in alerting.hits["fail"] if h == eid)[eid] == 3
    assert Counter(h for h in alerting.hits["gone"] if h == eid)[eid] == 1
    assert "HTTP 410" in dead("gone")[0].last_error
    assert "no answer within" in dead("hang")[0].last_error
    for target, outcome in (("fail", "http_error"), ("hang", "timeout"), ("gone", "rejected")):
        assert _metric(vigil, "vigil_webhook_deliveries_total", target=target, outcome=outcome) >= 1
        assert _metric(vigil, "vigil_webhook_dead_letters_total", target=target) >= 1

    # `vigil webhooks retry` puts a dead letter back: one more attempt, dead again.
    from vigil.tools.cli import main

    assert main(["webhooks", "retry", eid, "--target", "gone",
                 "--outbox", str(alerting.outbox.path)]) == 0
    wait_for(lambda: alerting.hits["gone"].count(eid) == 2 and dead("gone"), 30,
             "the retried dead letter attempted again")
    alerting.windows(1)
    assert _types(_settle(alerting, before, 2)) == {"vigil.drift.detected": 1,
                                                     "vigil.alert.resolved": 1}


def _monitor_actor(vigil):
    from ray.util.state import list_actors

    actors = list_actors(
        address=vigil.dashboard_url,
        filters=[("class_name", "=", "ServeReplica:monitor:Monitor"), ("state", "=", "ALIVE")],
    )
    return actors[0] if len(actors) == 1 else None


def test_a_killed_monitor_delivers_pending_events_after_restart_and_does_not_fire_again(
    vigil, alerting
):
    import ray

    before = alerting.receiver.events()
    alerting.receiver.stop()
    try:
        alerting.windows(1, shift=True)
        wait_for(lambda: alerting.outbox.deliveries(state="pending", target="receiver"), 30,
                 "the firing pending for the receiver")
        old = _monitor_actor(vigil)
        ray.kill(ray.get_actor(old.name, namespace="serve"), no_restart=True)
        wait_for(lambda: (a := _monitor_actor(vigil)) and a.actor_id != old.actor_id, 180,
                 "Serve restarting the monitor", 1.0)
    finally:
        alerting.receiver.start()
    wait_for(lambda: _drift(vigil)["alerts"][0]["status"] == "firing", 120,
             "the restarted monitor knowing the alert fires", 1.0)
    (event,) = _settle(alerting, before, 1, timeout=90)
    assert event["type"] == "vigil.drift.detected"

    # Still drifting after the restart: the alert already fires, nothing new is sent.
    alerting.windows(3, shift=True)
    time.sleep(1.5)
    assert _new(alerting.receiver.events(), before) == [event]
    alerting.windows(1)
    assert _types(_settle(alerting, before, 2)) == {"vigil.drift.detected": 1,
                                                     "vigil.alert.resolved": 1}
