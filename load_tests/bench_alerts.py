"""Alerting's cost on the monitor's window thread, and how fast events reach a receiver.

    python -m load_tests.bench_alerts [--windows 200] [--rows 100]

Feeds the same sample messages (breast_cancer, windows of --rows rows, five clean windows then
five shifted ones, over and over: every fifth window fires or resolves the drift rule) through
the monitor's service (monitoring.service, no Ray) three times:

- baseline: no alert rules;
- rules: the three rules below and the SQLite outbox (WAL, synchronous=FULL), no target;
- alerting: three rules (dataset drift, p99 latency, error ratio), the SQLite outbox
  (WAL, synchronous=FULL) and the webhook deliverer sending to a receiver on 127.0.0.1;
- hung receiver: the same, but the receiver never answers (the attempt times out).

The modes run interleaved, --rounds times (load on a shared machine moves every mode alike); for
each mode the round with the median result is reported. Prints the median and p99 time of one
ingest call (which closes and evaluates one window), their ratio to the baseline, and the median time from an event's commit to its arrival at
the receiver. Writes JSON under load_tests/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import logging
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from load_tests.procs import free_port
from monitoring.alerts import AlertEngine
from monitoring.outbox import Outbox
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from monitoring.webhooks import ActiveTarget, Deliverer, DeliveryStats
from vigil.tools.examples import build_examples
from vigil.core.messages import SampleMessage
from vigil.core.repository import read_manifest

DEFAULT_OUT = Path("load_tests/results/bench_alerts.json")
SECRET_ENV = "VIGIL_BENCH_WEBHOOK_SECRET"
RULES = [
    {"name": "drift", "when": {"dataset_drift": True}, "min_rows": 50},
    {"name": "slo", "when": {"latency_p99_above_s": 0.5}},
    {"name": "errors", "when": {"error_ratio_above": 0.01}},
]


def receiver_app(arrivals: dict[str, float], hang: bool) -> Starlette:
    async def events(request: Request) -> Response:
        body = await request.body()
        if hang:
            await asyncio.sleep(3600)
        arrivals.setdefault(json.loads(body)["id"], time.time())
        return Response(status_code=204)

    return Starlette(routes=[Route("/events", events, methods=["POST"])])


def serve_in_thread(app: Starlette, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server


def messages(models: Path, windows: int, rows: int) -> list[SampleMessage]:
    version = models / "breast_cancer" / "1"
    features = read_manifest(version).metadata["feature_names"]
    x = pd.read_parquet(version / "reference.parquet")[features].to_numpy(np.float32)
    shifted = x + 3 * x.std(axis=0)
    session = ort.InferenceSession(str(version / "model.onnx"))
    rng = np.random.default_rng(0)
    out = []
    for i in range(windows):
        batch = (shifted if (i // 5) % 2 else x)[rng.choice(len(x), rows)]
        label, proba = session.run(None, {"input": batch})
        requests = max(rows // 10, 1)
        out.append(SampleMessage(
            model="breast_cancer", version="1", inputs={"input": batch},
            outputs={"label": label, "probabilities": proba},
            latency_s=np.full(requests, 0.004), status=np.full(requests, 200, np.int16),
        ))
    return out


async def _start(coro: Any) -> asyncio.Task:
    return asyncio.create_task(coro)


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def run(models: Path, batches: list[SampleMessage], rows: int, mode: str) -> dict[str, Any]:
    """One run: ingest every batch on this thread (the monitor's window thread)."""
    app = MonitorAppSettings(model_repository=models, models=["breast_cancer"])
    user: dict[str, Any] = {"window": {"rows": rows, "seconds": None}}
    arrivals: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    engine = deliverer = task = server = None
    workdir = Path(tempfile.mkdtemp(prefix="vigil-bench-alerts-"))
    if mode == "rules":
        user["alerts"] = RULES
        engine = AlertEngine(Outbox(workdir / "outbox.sqlite"), "http://127.0.0.1:8000/monitor",
                             time.time())
    elif mode != "baseline":
        port = free_port()
        server = serve_in_thread(receiver_app(arrivals, hang=mode == "hung"), port)
        user["alerts"] = RULES
        user["webhooks"] = [{"name": "receiver", "url": f"http://127.0.0.1:{port}/events",
                             "secret_env": SECRET_ENV, "timeout_s": 2.0, "backoff_s": 0.5}]
        outbox = Outbox(workdir / "outbox.sqlite")
        deliverer = Deliverer(outbox, DeliveryStats())
        engine = AlertEngine(outbox, "http://127.0.0.1:8000/monitor", time.time(),
                             notify=lambda: loop.call_soon_threadsafe(deliverer.wake))
        task = asyncio.run_coroutine_threadsafe(_start(deliverer.run()), loop).result()
    settings = MonitorSettings.model_validate(user)
    service = MonitorService(app, MonitorSettings(), time.time(), alerts=engine)
    service.reconfigure(settings, time.time())
    if deliverer is not None:
        targets = {t.name: ActiveTarget(t, tuple(t.secrets(os.environ))) for t in settings.webhooks}
        loop.call_soon_threadsafe(deliverer.configure, targets)
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        closed = service.ingest([batch], time.time())
        seconds.append(time.perf_counter() - started)
        assert len(closed) == 1, "every batch closes exactly one window"
    committed, events = [], engine.events_committed if engine is not None else 0
    if engine is not None:
        committed = [(d.event_id, d.created_at) for d in engine.outbox.deliveries(limit=100_000)]
        deadline = time.monotonic() + {"alerting": 30, "hung": 2}.get(mode, 0)
        while time.monotonic() < deadline and len(arrivals) < len(committed):
            time.sleep(0.05)
    if task is not None:  # stopped on its loop, so it closes its HTTP client there
        asyncio.run_coroutine_threadsafe(_stop(task), loop).result(timeout=10)
    if server is not None:
        server.should_exit = True
    loop.call_soon_threadsafe(loop.stop)
    delays = [arrivals[e] - created for e, created in committed if e in arrivals]
    ms = np.array(seconds) * 1000
    return {
        "mode": mode, "windows": len(batches), "events": events,
        "delivered": len(delays),
        "ingest_ms_median": float(np.median(ms)), "ingest_ms_p99": float(np.quantile(ms, 0.99)),
        "delivery_ms_median": float(np.median(delays) * 1000) if delays else None,
    }


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("vigil").setLevel(logging.ERROR)  # one line per firing otherwise
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3,
                        help="each mode runs this many times, interleaved; medians of the rounds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    models = Path(tempfile.mkdtemp(prefix="vigil-bench-models-"))
    build_examples(models, progress=False)
    batches = messages(models, args.windows, args.rows)
    modes = ("baseline", "rules", "alerting", "hung")
    rounds = [[run(models, batches, args.rows, mode) for mode in modes] for _ in range(args.rounds)]
    results = []
    for i in range(len(modes)):  # the median round of each mode, by its median ingest
        runs = sorted((r[i] for r in rounds), key=lambda r: r["ingest_ms_median"])
        results.append({**runs[len(runs) // 2], "rounds": len(runs)})
    base = results[0]["ingest_ms_median"]
    print(f"{'run':<10} {'windows':>7} {'events':>6} {'delivered':>9} {'ingest ms p50':>13} "
          f"{'p99':>7} {'x baseline':>10} {'delivery ms p50':>15}")
    for r in results:
        r["ratio_to_baseline"] = r["ingest_ms_median"] / base
        delivery = "-" if r["delivery_ms_median"] is None else f"{r['delivery_ms_median']:.1f}"
        print(f"{r['mode']:<10} {r['windows']:>7} {r['events']:>6} {r['delivered']:>9} "
              f"{r['ingest_ms_median']:>13.2f} {r['ingest_ms_p99']:>7.2f} "
              f"{r['ratio_to_baseline']:>10.2f} {delivery:>15}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "rows_per_window": args.rows, "runs": results,
    }, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
