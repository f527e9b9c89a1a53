"""Label scenario: concept drift that only labels can see.

    python -m load_tests.label_scenario [--max-seconds 420]

It serves the example models on a private Ray cluster (its own ports and repository, as
`make demo` does), after the model gate scored breast_cancer/1 on its held-out set (the
reference a quality drop is measured from). Traffic is breast_cancer rows drawn from the whole
data set, each request with its own id; a labeller posts every request's true labels to
/v2/models/breast_cancer/feedback a few seconds after its answer. Once the monitor has judged
clean settled windows, the labelling rule flips for a subpopulation (patients whose mean radius
is above the data set's 60th percentile get the other class): the same inputs, a new truth.

The monitor's rules: `quality_drop` (accuracy down 0.1 from the gate's score), `dataset_drift`
and `prediction_drift`. Pass: quality_drop fires on a window after the flip, and neither drift
rule ever fires. It prints each window (drift share, prediction drift, labelled rows, accuracy
against the reference) and the rules' states, writes load_tests/results/label_scenario.json, and
stops everything it started. Exit 0 on pass, 1 on fail, 2 when the server cannot start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from load_tests import versions_server
from load_tests.targets import HOST, REPO_ROOT, RayPorts, StartError
from load_tests.versions_server import VersionsServer, begin_run

MODEL = "breast_cancer"
PORTS = RayPorts(
    gcs=6416, dashboard=8288, client_server=6517, dashboard_agent=52488, http=8133,
    haproxy_stats=8514, haproxy_metrics=9214, fallback_http=8614, fallback_grpc=9614,
    ingress_http_min=34100, ingress_grpc_min=44100,
)
ROWS_PER_REQUEST = 5
REQUESTS_PER_S = 30.0
LABEL_DELAY_S = 2.0  # labels arrive this long after their answer
SETTLE_S = 6.0  # feedback.settle_s: a window is judged on labels this long after it closed
FLIPPED_PERCENTILE = 60  # mean radius above this percentile: the subpopulation whose truth flips
CLEAN_SETTLED = 2  # settled windows judged healthy before the flip
DEFAULT_OUT = REPO_ROOT / "load_tests" / "results" / "label_scenario.json"
RULES = ("quality-drop", "dataset-drift", "prediction-drift")


def monitor_user_config() -> dict[str, Any]:
    """Windows of 15 s (or 3,000 sampled rows); the three rules, one window each."""
    rule = {"model": MODEL, "min_rows": 200, "for_windows": 1, "resolve_windows": 1}
    return {
        "window": {"rows": 3000, "seconds": 15},
        "history": 100,
        "alerts": [
            {"name": "quality-drop", "when": {"quality_drop": {"metric": "accuracy", "by": 0.1}},
             **rule},
            {"name": "dataset-drift", "when": {"dataset_drift": True}, **rule},
            {"name": "prediction-drift", "when": {"prediction_drift": True}, **rule},
        ],
    }


def gated_build(work: Path) -> Path:
    """`vigil examples build`, then the model gate on breast_cancer/1 with its held-out set, so
    that the version has the reference quality (model.yaml lineage.validation)."""
    from vigil.tools.model_gate import validate

    repository = _build(work)
    verdict = validate(repository, MODEL, "1", actor="label-scenario",
                       holdout=repository / MODEL / "1" / "holdout.parquet")
    if not verdict["passed"] or "candidate" not in verdict["metrics"]:
        raise StartError(f"the gate did not score {MODEL}/1: {verdict}")
    return repository


_build = versions_server.build_models


class Traffic:
    """Requests with ids from a thread; their true labels posted LABEL_DELAY_S later."""

    def __init__(self, base_url: str) -> None:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        self.x, self.y = data.data.astype(np.float32), data.target.astype(np.int64)
        self.flip_from = float(np.percentile(self.x[:, 0], FLIPPED_PERCENTILE))
        self.base_url = base_url
        self.rng = np.random.default_rng(11)
        self.flipped = False
        self.sent = self.failed = self.labels_posted = self.labels_refused = 0
        self.outcomes: dict[str, int] = {}
        self._due: deque[tuple[float, str, list[int]]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def truth(self, rows: np.ndarray) -> list[int]:
        y = self.y[rows].copy()
        if self.flipped:
            flip = self.x[rows, 0] > self.flip_from
            y[flip] = 1 - y[flip]
        return [int(v) for v in y]

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            await asyncio.gather(*(self._requests(client, w) for w in range(3)),
                                 self._labeller(client))

    async def _requests(self, client: httpx.AsyncClient, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            started = time.monotonic()
            rows = self.rng.integers(0, len(self.x), ROWS_PER_REQUEST)
            x = self.x[rows]
            request_id = f"ls-{worker}-{n}"
            n += 1
            body = {"id": request_id, "inputs": [{"name": "input", "datatype": "FP32",
                                                  "shape": list(x.shape),
                                                  "data": x.ravel().tolist()}]}
            truth = self.truth(rows)  # the rule in force when the request was served
            try:
                ok = (await client.post(f"/v2/models/{MODEL}/infer", json=body)).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.sent += 1
            if ok:
                self._due.append((time.monotonic() + LABEL_DELAY_S, request_id, truth))
            else:
                self.failed += 1
            await asyncio.sleep(max(0.0, 3 / REQUESTS_PER_S - (time.monotonic() - started)))

    async def _labeller(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(0.5)
            batch = []
            while self._due and self._due[0][0] <= time.monotonic():
                _, request_id, truth = self._due.popleft()
                batch.append({"id": request_id, "label": truth})
            if not batch:
                continue
            try:
                r = await client.post(f"/v2/models/{MODEL}/feedback", json=batch)
            except httpx.HTTPError:
                self.labels_refused += len(batch)
                continue
            if r.status_code not in (200, 409):
                self.labels_refused += len(batch)
                continue
            self.labels_posted += len(batch)
            for item in r.json().get("labels", []):
                outcome = str(item.get("outcome"))
                self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def drift_doc(client: httpx.Client) -> dict[str, Any] | None:
    r = client.get(f"/monitor/v1/models/{MODEL}/drift", params={"version": "1", "windows": 100})
    return r.json() if r.status_code == 200 else None


def window_rows(doc: dict[str, Any], flipped_at: float | None) -> list[dict[str, Any]]:
    """One line per closed window: its drift, prediction drift and quality from labels."""
    rows = []
    for w in sorted(doc.get("windows", []), key=lambda w: w["index"]):
        drift, labels = w.get("drift") or {}, w.get("labels") or {}
        rows.append({
            "window": w["index"], "closed_at": w["closed_at"],
            "phase": "flipped" if flipped_at is not None and w["opened_at"] >= flipped_at
            else ("mixed" if flipped_at is not None and w["closed_at"] > flipped_at
                  else "clean"),
            "sampled_rows": w.get("rows"), "share_drifted": drift.get("share_drifted"),
            "dataset_drift": drift.get("dataset_drift"),
            "prediction_drift": drift.get("prediction_drift"),
            "labelled_rows": labels.get("labelled_rows"), "served_rows": labels.get("served_rows"),
            "accuracy": (labels.get("metrics") or {}).get("accuracy"),
            "reference_accuracy": (labels.get("reference") or {}).get("accuracy"),
            "settled": labels.get("settled"),
        })
    return rows


def rule_states(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["rule"]: {"status": a["status"], "last_fired_at": a.get("last_fired_at"),
                        "latest": (a.get("latest") or {}).get("detail")}
            for a in doc.get("alerts", [])}


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else (format(value, spec) if isinstance(value, float) else str(value))


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'window':>6} {'phase':>7} {'rows':>5} {'drifted':>7} {'dataset':>7} "
            f"{'pred':>5} {'labelled':>8} {'accuracy':>8} {'reference':>9} {'settled':>7}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['window']:>6} {r['phase']:>7} {_fmt(r['sampled_rows']):>5} "
                     f"{_fmt(r['share_drifted']):>7} {_fmt(r['dataset_drift']):>7} "
                     f"{_fmt(r['prediction_drift']):>5} {_fmt(r['labelled_rows']):>8} "
                     f"{_fmt(r['accuracy']):>8} {_fmt(r['reference_accuracy']):>9} "
                     f"{_fmt(r['settled']):>7}")
    return "\n".join(lines)


def verdict(states: dict[str, dict[str, Any]], flipped_at: float | None) -> tuple[bool, str]:
    quality = states.get("quality-drop", {})
    fired = quality.get("last_fired_at")
    if flipped_at is None:
        return False, "the labelling rule never flipped (too few clean settled windows)"
    if fired is None or fired < flipped_at:
        return False, "quality-drop did not fire after the flip"
    noisy = [r for r in ("dataset-drift", "prediction-drift")
             if states.get(r, {}).get("last_fired_at") is not None]
    if noisy:
        return False, f"drift rules fired: {noisy}"
    return True, "quality-drop fired on concept drift; the drift rules stayed quiet"


def run(args: argparse.Namespace, server: VersionsServer) -> dict[str, Any]:
    server.monitor_user_config = monitor_user_config()
    server.monitor_args = {"feedback": {"settle_s": SETTLE_S}}
    versions_server.build_models = gated_build  # the reference quality, before serving starts
    try:
        server.start()
    finally:
        versions_server.build_models = _build
    traffic = Traffic(f"http://{HOST}:{PORTS.http}")
    started = time.time()
    flipped_at: float | None = None
    fired_at: float | None = None
    doc: dict[str, Any] = {}
    try:
        traffic.start()
        while time.time() - started < args.max_seconds:
            time.sleep(2)
            doc = drift_doc(server.client) or doc
            states = rule_states(doc)
            if flipped_at is None:
                healthy = [r for r in window_rows(doc, None)
                           if r["settled"] and (r["labelled_rows"] or 0) >= 200]
                if len(healthy) >= CLEAN_SETTLED:
                    traffic.flipped, flipped_at = True, time.time()
                    print(f"{flipped_at - started:6.1f}s: the labelling rule flips for mean "
                          f"radius > {traffic.flip_from:.2f}", flush=True)
            elif fired_at is None and (states.get("quality-drop", {}).get("last_fired_at")
                                       or 0) >= flipped_at:
                fired_at = time.time()
                print(f"{fired_at - started:6.1f}s: quality-drop fired", flush=True)
            elif fired_at is not None and (time.time() - fired_at > 60 or any(
                    r["phase"] == "flipped" and r["settled"]
                    for r in window_rows(doc, flipped_at))):
                break  # a whole window of the new truth settled, for the table
    finally:
        traffic.stop()
    states = rule_states(doc)
    passed, why = verdict(states, flipped_at)
    return {"passed": passed, "why": why, "seconds": round(time.time() - started, 1),
            "flipped_after_s": None if flipped_at is None else round(flipped_at - started, 1),
            "requests": traffic.sent, "failed_requests": traffic.failed,
            "labels_posted": traffic.labels_posted, "labels_refused": traffic.labels_refused,
            "label_outcomes": traffic.outcomes, "rules": states,
            "windows": window_rows(doc, flipped_at)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.label_scenario",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=420.0,
                        help="traffic stops after this long, fired or not")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    begin_run()
    server = VersionsServer("labels", PORTS, keep_logs=False)
    try:
        result = run(args, server)
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    finally:
        server.stop()
    print()
    print(table(result["windows"]))
    print()
    for rule in RULES:
        state = result["rules"].get(rule, {})
        print(f"{rule:>17}: {state.get('status')} (fired at {state.get('last_fired_at')}); "
              f"{state.get('latest')}")
    print(f"requests {result['requests']} (failed {result['failed_requests']}), labels posted "
          f"{result['labels_posted']} {result['label_outcomes']}, refused "
          f"{result['labels_refused']}")
    print(("PASSED: " if result["passed"] else "FAILED: ") + result["why"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
