"""`make demo`: the seed's loop, end to end, on a laptop: drift -> retrain -> rollout -> promote.

    make demo              # exit 0 only if every step happened within its bound (15 min at most)
    make demo DEMO_BAD=1   # a worse candidate (shuffled labels, forced past the gate with a
                           # reason): exit 0 only if the rollout rolls it back
    make demo DEMO_SHORT=1 # CI's variant: 10-s windows, one clean window, one rollout step

It serves the example models on a private Ray cluster (its own ports and repository, as
`make serve` does) with a demo Monitor config: one drift rule whose webhook target is the example
receiver, started here with its own secret and `--rollout 10,50`. Traffic is clean breast_cancer
rows (the whole data set, as the model was trained on) until the monitor has windows of it, then a
real subpopulation change for the rest of the run: three in four patients malignant instead of
about one in three, as at a referral clinic. Then, each step as it happens: the monitor detects
drift in two windows in a row and the receiver gets `vigil.drift.detected`; it retrains on the
second drifted window's rows (wholly shifted),
publishes, and the gate validates; it starts a progressive rollout; the rollout advances step by
step under the shifted traffic and promotes; drift on the new production version's windows falls
under its threshold, its reference being the data it was trained on. It prints a timeline as the
loop runs and a summary, writes demo/timeline.json, demo/timeline.png and demo/windows.json (every
version's windows, column by column), and stops everything it started, whatever the outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from load_tests.demo_timeline import Point, Timeline
from load_tests.targets import HOST, REPO_ROOT, RayPorts, StartError
from load_tests.versions_server import VersionsServer, begin_run
from vigil.core import audit
from vigil.core.aliases import read_aliases

MODEL = "breast_cancer"
SECRET_ENV = "VIGIL_DEMO_WEBHOOK_SECRET"
PORTS = RayPorts(
    gcs=6412, dashboard=8286, client_server=6513, dashboard_agent=52484, http=8131,
    haproxy_stats=8512, haproxy_metrics=9212, fallback_http=8612, fallback_grpc=9612,
    ingress_http_min=34000, ingress_grpc_min=44000,
)
ROWS_PER_REQUEST = 5
REQUESTS_PER_S = 40.0
MALIGNANT_SHARE = 0.75  # shifted traffic; the data set has 37% malignant (target 0)


@dataclass(frozen=True)
class Pace:
    """How long the loop's parts take: the monitor's windows, the production windows of clean
    traffic before the shift, and the rollout's steps."""

    window_rows: int
    window_s: int
    clean_windows: int
    steps: str


FULL = Pace(window_rows=3000, window_s=20, clean_windows=2, steps="10,50")
# `--short` (CI's variant): smaller windows, one clean window and a single step; the same loop.
SHORT = Pace(window_rows=2000, window_s=10, clean_windows=1, steps="50")


def monitor_user_config(receiver_port: int, agreement: bool, pace: Pace) -> dict[str, Any]:
    """Windows of 3,000 sampled rows (or 20 s; `--short`: 2,000 or 10 s): the retrained
    version's reference is mostly the shifted window it was trained on. One drift rule for the
    receiver, on two drifted windows in a row: the second lies wholly inside the shift, so the
    retraining learns the shifted traffic alone, and a candidate's small canary windows, noisier
    than production's, seldom fire it. Rollouts judged on windows of at least 30 requests."""
    return {
        "window": {"rows": pace.window_rows, "seconds": pace.window_s},
        "history": 50,
        "alerts": [{"name": "demo-drift", "model": MODEL, "when": {"dataset_drift": True},
                    "min_rows": 200, "for_windows": 2, "resolve_windows": 1,
                    "cooldown_s": 3600}],
        "webhooks": [{"name": "receiver", "url": f"http://{HOST}:{receiver_port}/events",
                      "secret_env": SECRET_ENV, "events": ["vigil.drift.detected"],
                      "timeout_s": 10, "backoff_s": 1.0, "max_backoff_s": 5.0}],
        # The candidate's own profile is the data it was trained on: the original reference
        # and one shifted window. While the shift goes on, its predictions move away from that
        # mix by design, so prediction drift is not what judges it here: agreement with
        # production on the same rows is.
        "rollouts": {"min_requests": 30, "max_p99_ratio": 2.0, "prediction_drift": False,
                     "min_agreement": 0.9 if agreement else None},
    }


class Traffic:
    """breast_cancer rows at REQUESTS_PER_S, ROWS_PER_REQUEST each, from a thread: clean until
    `shift()`, then the subpopulation change."""

    def __init__(self, base_url: str, timeline: Timeline) -> None:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        self.x, self.y = data.data.astype(np.float32), data.target
        self.base_url, self.timeline = base_url, timeline
        self.rng = np.random.default_rng(7)
        self.shifted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def rows(self) -> np.ndarray:
        if not self.shifted:
            return self.x[self.rng.integers(0, len(self.x), ROWS_PER_REQUEST)]
        malignant = self.rng.random(ROWS_PER_REQUEST) < MALIGNANT_SHARE
        pick = [self.rng.choice(np.flatnonzero(self.y == (0 if m else 1))) for m in malignant]
        return self.x[pick]

    async def _run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
            async def worker() -> None:
                while not self._stop.is_set():
                    started = time.monotonic()
                    x = self.rows()
                    body = {"inputs": [{"name": "input", "datatype": "FP32",
                                        "shape": list(x.shape), "data": x.ravel().tolist()}]}
                    try:
                        ok = (await client.post(f"/v2/models/{MODEL}/infer", json=body)
                              ).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    self.timeline.requests += 1
                    self.timeline.failed_requests += 0 if ok else 1
                    await asyncio.sleep(max(0.0, 4 / REQUESTS_PER_S - (time.monotonic() - started)))
            await asyncio.gather(*(worker() for _ in range(4)))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


class Receiver:
    """The example receiver (python -m examples.retrain_receiver) with --rollout, in a process."""

    def __init__(self, port: int, repository: Path, work: Path, bad: bool, steps: str) -> None:
        self.port = port
        self.read_token = secrets.token_hex(24)
        base = f"http://{HOST}:{PORTS.http}"
        argv = [sys.executable, "-m", "examples.retrain_receiver", "--host", HOST,
                "--port", str(port), "--models-dir", str(repository),
                "--monitor-url", f"{base}/monitor", "--state", str(work / "receiver.sqlite"),
                "--rollout", steps, "--windows-per-step", "1", "--step-deadline-s", "300",
                "--max-failed-checks", "2", "--server-url", base]
        if bad:
            argv += ["--train-on-shuffled-labels",
                     "--force-past-gate", "demo: a deliberately worse candidate"]
        env = {**os.environ, "VIGIL_WEBHOOK_SECRET": os.environ[SECRET_ENV],
               "VIGIL_RECEIVER_TOKEN": self.read_token}
        env.pop("VIGIL_TOKEN", None)  # the demo server has no tokens file: loopback is open
        self.log = open(work / "receiver.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def events(self) -> list[dict[str, Any]]:
        try:
            r = httpx.get(f"http://{HOST}:{self.port}/events", timeout=5,
                          headers={"Authorization": f"Bearer {self.read_token}"})
            return list(r.json()) if r.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Watch:
    """Reads, once a second, what the loop has done: the audit log, the receiver's events, the
    aliases and production's latest window."""

    def __init__(self, timeline: Timeline, server: VersionsServer, repository: Path,
                 receiver: Receiver) -> None:
        self.timeline, self.server, self.repository = timeline, server, repository
        self.receiver = receiver
        self.seen_audit = len(list(audit.entries(repository, MODEL)))
        self.promoted_wall: float | None = None
        self.drift_share = 0.5

    def poll(self) -> None:
        state = read_aliases(self.repository, MODEL)
        production = state.production or "1"
        weight = state.canary.weight if state.canary is not None else 0.0
        latest = self._latest(production)
        share = p99 = None
        if latest is not None:
            share = (latest.get("drift") or {}).get("share_drifted")
            p99 = (latest.get("latency") or {}).get("p99")
            self._settled(production, latest)
        self.timeline.points.append(Point(round(self.timeline.now(), 1), share, weight,
                                          None if p99 is None else round(p99 * 1000, 2),
                                          production))
        self._audit()
        self._receiver()

    def _latest(self, version: str) -> dict[str, Any] | None:
        r = self.server.client.get(f"/monitor/v1/models/{MODEL}/drift",
                                   params={"version": version, "windows": 1})
        if r.status_code != 200:
            return None
        doc = r.json()
        self.drift_share = doc["settings"]["drift_share"]
        return doc.get("latest")

    def _settled(self, production: str, latest: dict[str, Any]) -> None:
        drift = latest.get("drift") or {}
        if (self.promoted_wall is not None and latest["opened_at"] >= self.promoted_wall
                and drift.get("dataset_drift") is False):
            self.timeline.reach("settled", production, share_drifted=drift.get("share_drifted"),
                                threshold=self.drift_share, window=latest.get("index"),
                                rows=latest.get("rows"))

    def _audit(self) -> None:
        entries = list(audit.entries(self.repository, MODEL))
        for entry in entries[self.seen_audit:]:
            action, version = entry["action"], entry.get("to_version")
            details = entry.get("details") or {}
            checks = {c["name"]: c["outcome"] for c in details.get("checks") or []
                      if isinstance(c, dict) and action.startswith("rollout")}
            if action == "publish" and str(entry.get("actor", "")).startswith("receiver:"):
                self.timeline.reach("published", version)
            elif action == "rollout":
                if details.get("forced"):
                    self.timeline.reach("forced", version, gate=details.get("gate"))
                self.timeline.reach("rollout", version)
            elif action == "rollout_promoted":
                self.promoted_wall = time.time()
                self.timeline.reach("promoted", version, checks=checks)
            elif action == "rollout_rolled_back":
                self.timeline.reach("rolled_back", entry.get("from_version"), checks=checks)
            elif action.startswith("rollout_") and action != "rollout_held":
                self.timeline.note(action, entry.get("to_version") or entry.get("from_version"),
                                   checks=checks)
        self.seen_audit = len(entries)

    def _receiver(self) -> None:
        for event in self.receiver.events():
            if event.get("type") == "vigil.drift.detected":
                self.timeline.reach("drift", str(event.get("subject", "")).split("/")[-1])
            retrained = event.get("retrained") or {}
            if (retrained.get("shipped") or {}).get("gate") == "passed":
                # What it was trained on says why drift settles (or not) once it serves.
                self.timeline.reach("gated", retrained.get("version"),
                                    window_rows=retrained.get("window_rows"),
                                    reference_rows=retrained.get("reference_rows"))


def run(args: argparse.Namespace, timeline: Timeline, server: VersionsServer) -> None:
    work = Path(server.work)
    receiver_port = PORTS.http + 100
    pace = SHORT if args.short else FULL
    server.monitor_user_config = monitor_user_config(receiver_port, args.agreement, pace)
    repository = server.start()
    receiver = Receiver(receiver_port, repository, work, args.bad, pace.steps)
    traffic = Traffic(f"http://{HOST}:{PORTS.http}", timeline)
    try:
        watch = Watch(timeline, server, repository, receiver)
        traffic.start()
        timeline.note("clean traffic", "1")
        while _windows(server) < pace.clean_windows and timeline.now() < 120:
            watch.poll()
            time.sleep(1)
        traffic.shifted = True
        timeline.note("subpopulation shift begins", "1", malignant_share=MALIGNANT_SHARE)
        while timeline.next_step() is not None and timeline.overdue() is None:
            watch.poll()
            time.sleep(1)
        if (why := timeline.overdue()) is not None:
            timeline.note(f"stopped: {why}")
    finally:
        traffic.stop()
        receiver.stop()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "receiver.log").write_bytes((work / "receiver.log").read_bytes())
        _save_windows(server, repository, args.out / "windows.json")


def _save_windows(server: VersionsServer, repository: Path, path: Path) -> None:
    """Every version's evaluated windows, column by column, beside the timeline: what a step
    that came late (or never) was waiting for."""
    versions = sorted((p.name for p in (repository / MODEL).iterdir() if p.name.isdigit()), key=int)
    docs = {}
    for version in versions:
        r = server.client.get(f"/monitor/v1/models/{MODEL}/drift", params={"version": version})
        docs[version] = r.json() if r.status_code == 200 else {"status": r.status_code}
    path.write_text(json.dumps(docs, indent=1))


def _windows(server: VersionsServer) -> int:
    r = server.client.get(f"/monitor/v1/models/{MODEL}/drift", params={"windows": 1})
    return int(r.json().get("windows_evaluated", 0)) if r.status_code == 200 else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m load_tests.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bad", action="store_true", default=os.environ.get("DEMO_BAD") == "1",
                        help="the worse candidate (also DEMO_BAD=1)")
    parser.add_argument("--agreement", action=argparse.BooleanOptionalAction, default=True,
                        help="judge the rollout's agreement with production")
    parser.add_argument("--short", action="store_true",
                        default=os.environ.get("DEMO_SHORT") == "1",
                        help="smaller windows and a single rollout step, as CI runs it "
                             "(also DEMO_SHORT=1)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "demo")
    args = parser.parse_args(argv)
    os.environ.setdefault(SECRET_ENV, "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    begin_run()
    timeline = Timeline(bad=args.bad)
    server = VersionsServer("demo", PORTS, keep_logs=False)
    try:
        run(args, timeline, server)
    except StartError as exc:
        print(f"could not start the server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        timeline.note("interrupted")
    finally:
        server.stop()
    print()
    print(timeline.summary())
    path, plot = timeline.write(args.out)
    print(f"wrote {path}" + (f" and {plot}" if plot else ""))
    return 0 if timeline.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
