"""The client side of the cluster scenario: requests spread over every node's proxy, as a
Kubernetes Service spreads them over the ready endpoints behind it.

`Service` keeps the list of node proxies and a readiness probe per endpoint (GET /-/healthz on
HAProxy, every `period_s`; `failure_threshold` failures in a row take an endpoint out, one
success puts it back), like a Service's endpoints follow its pods' readiness probes (Kubernetes'
defaults are slower: periodSeconds 10, failureThreshold 3). Requests go round-robin over the
ready endpoints. `Load` runs `concurrency` threads of one-row requests for as long as asked and
records every outcome (time, endpoint, status or error), so the scenario can cut them into
before, during and after a fault.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class Service:
    endpoints: list[str]  # "http://10.77.0.1:8000", ...
    period_s: float = 0.5
    failure_threshold: int = 2
    ready: dict[str, bool] = field(init=False)
    _failures: dict[str, int] = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _cycle: Any = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    changes: list[tuple[float, str, bool]] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.ready = dict.fromkeys(self.endpoints, True)
        self._failures = dict.fromkeys(self.endpoints, 0)
        self._cycle = itertools.cycle(self.endpoints)

    def pick(self) -> str:
        """The next ready endpoint round-robin (any endpoint when none is ready)."""
        with self._lock:
            for _ in self.endpoints:
                endpoint = next(self._cycle)
                if self.ready[endpoint]:
                    return endpoint
            return next(self._cycle)

    def _probe_once(self, client: httpx.Client) -> None:
        for endpoint in self.endpoints:
            try:
                ok = client.get(f"{endpoint}/-/healthz", timeout=self.period_s).status_code == 200
            except httpx.HTTPError:
                ok = False
            self._failures[endpoint] = 0 if ok else self._failures[endpoint] + 1
            now_ready = ok or (self.ready[endpoint]
                               and self._failures[endpoint] < self.failure_threshold)
            if now_ready != self.ready[endpoint]:
                self.changes.append((time.time(), endpoint, now_ready))
                self.ready[endpoint] = now_ready

    def run_probes(self) -> threading.Thread:
        def loop() -> None:
            with httpx.Client() as client:
                while not self._stop.is_set():
                    started = time.monotonic()
                    self._probe_once(client)
                    self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))

        thread = threading.Thread(target=loop, name="readiness", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def infer_body(rows: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                                   "data": rows.astype("float32").ravel().tolist()}]}).encode()


@dataclass
class Outcome:
    t: float  # when sent (time.time())
    endpoint: str
    status: int  # 0: no answer (connection refused, reset, timeout)
    latency_s: float
    error: str = ""


class Load:
    """`concurrency` threads sending one-row requests through the Service until stopped."""

    def __init__(self, service: Service, token: str, body: bytes, concurrency: int = 4,
                 model: str = "breast_cancer", timeout_s: float = 10.0) -> None:
        self.service, self.body, self.concurrency = service, body, concurrency
        self.headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
        self.path = f"/v2/models/{model}/infer"
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _worker(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                endpoint = self.service.pick()
                sent, started = time.time(), time.monotonic()
                try:
                    status = client.post(f"{endpoint}{self.path}", content=self.body,
                                         headers=self.headers).status_code
                    error = ""
                except httpx.HTTPError as exc:
                    status, error = 0, type(exc).__name__
                self.outcomes.append(
                    Outcome(sent, endpoint, status, time.monotonic() - started, error))
                if status != 200:
                    time.sleep(0.02)  # a failing endpoint must not spin the client

    def start(self) -> None:
        for i in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 2)


def summarize(outcomes: list[Outcome], start: float, end: float) -> dict[str, Any]:
    """Requests sent in [start, end): count, failed, error ratio, p50/p99, failures by kind."""
    picked = [o for o in outcomes if start <= o.t < end]
    failed = [o for o in picked if o.status != 200]
    latencies = np.array([o.latency_s for o in picked if o.status == 200])
    kinds: dict[str, int] = {}
    for o in failed:
        key = f"{o.endpoint.split('//')[-1]} {o.error or o.status}"
        kinds[key] = kinds.get(key, 0) + 1
    return {
        "requests": len(picked), "failed": len(failed),
        "error_ratio": round(len(failed) / len(picked), 4) if picked else None,
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies.size else None,
        "failures": kinds,
    }
