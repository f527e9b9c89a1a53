"""Automatic canary rollback: rollback rules judge only the canary, clear it through
vigil.core.model_ops (aliases and audit log), send one vigil.model.rolled_back event and tell the
replicas; a canary already gone, production, and a later canary deployment, over a real
repository and outbox. The event is written in the same step as the change: a release that
fails, a change that fails, and a monitor that dies in between lose nothing and send nothing
for a change that was not made."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.alert_settings import AlertRule, WebhookTarget
from monitoring.alerts import AlertEngine
from monitoring.canary import CanaryGuard, rollback_reason
from monitoring.changes import ChangeWriter
from monitoring.outbox import Outbox
from monitoring.rules import AlertState, Crossed, Verdict
from tests.unit.monitoring.helpers import drift_of, latency_of, window_of
from vigil.core import audit, model_ops
from vigil.core.aliases import read_aliases
from vigil.core.repository import publish
from vigil.core.tensors import TensorSpec

ROOT = Path(__file__).resolve().parents[3]
PUBLIC = "http://mon.example:8000/monitor"
ERRORS = AlertRule(name="canary-errors", when={"error_ratio_above": 0.05}, min_requests=20,
                   action="rollback_canary")
SLOW = AlertRule(name="canary-latency", when={"latency_p99_above_s": 1.0}, min_requests=20,
                 for_windows=2, action="rollback_canary")
NOTIFY = AlertRule(name="errors", when={"error_ratio_above": 0.05}, min_requests=20)
TARGETS = [
    WebhookTarget(name="all", url="http://127.0.0.1:9/a", secret_env="S"),
    WebhookTarget(name="deploys", url="http://127.0.0.1:9/d", secret_env="S",
                  events=["vigil.model.rolled_back"]),
    WebhookTarget(name="errors", url="http://127.0.0.1:9/e", secret_env="S",
                  events=["vigil.errors.rate_exceeded"]),
]
FAILING = latency_of(40, p99=0.2, error_ratio=0.25)  # 10 of 40 requests failed
SLOWLY = latency_of(40, p99=1.5)
HEALTHY = latency_of(40, p99=0.2)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """iris 1 (production) and 2, canary with 10 % of the traffic."""
    root = tmp_path / "models"
    specs = ((TensorSpec("x", "FP32", (-1, 4)),), (TensorSpec("label", "INT64", (-1,)),))
    for version in ("1", "2"):
        publish(root, "iris", version, f"model {version}".encode(), *specs)
    model_ops.apply(root, "iris", "canary", actor="alice", version="2", weight=0.1,
                    reason="try 2", force=True)  # never validated: forced
    return root


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


class Told(list):
    """The models whose replicas were told of a rollback (the callback monitor.py wires to the
    alias board)."""

    def __call__(self, model: str) -> None:
        self.append(model)


def _engine(outbox: Outbox, root: Path, told: Told, rules=(ERRORS, SLOW, NOTIFY)) -> AlertEngine:
    engine = AlertEngine(outbox, PUBLIC, 0.0, repository=root, on_rollback=told)
    engine.configure(list(rules), TARGETS, [("iris", "1"), ("iris", "2")], 0.0)
    return engine


def _events(outbox: Outbox) -> list[dict]:
    rows = outbox.deliveries(limit=1000)
    ids = sorted({d.event_id for d in rows}, key=lambda i: outbox.event(i)["time"])
    return [{**outbox.event(i), "targets": sorted(d.target for d in rows if d.event_id == i)}
            for i in ids]


def _rolled_back(outbox: Outbox) -> list[dict]:
    return [e for e in _events(outbox) if e["type"] == "vigil.model.rolled_back"]


def _by_monitor(root: Path) -> list[dict]:
    return [e for e in audit.entries(root, "iris") if e["actor"].startswith("vigil-monitor")]


def test_a_breach_of_the_canary_clears_it_audits_sends_one_event_and_tells_the_replicas(
    root, outbox
) -> None:
    told = Told()
    engine = _engine(outbox, root, told)
    engine.on_window("iris", "2", window_of(index=3, rows=0, latency=FAILING), now=100.0)

    aliases = read_aliases(root, "iris")
    assert aliases.canary is None and aliases.production == "1"
    (entry,) = _by_monitor(root)
    assert (entry["actor"], entry["action"], entry["from_version"], entry["to_version"]) == \
        ("vigil-monitor (rule canary-errors)", "canary_cleared", "2", None)
    assert entry["reason"] == (
        "rule canary-errors (error_ratio_above 0.05) fired for canary iris/2: error_ratio 0.25 "
        "against threshold 0.05 in window 3 (40 requests, 0 sampled rows); canary cleared "
        "automatically")
    assert entry["generation"] == aliases.generation
    details = entry["details"]
    assert (details["rule"], details["condition"], details["window"]["index"],
            details["window"]["requests"], details["window"]["error_ratio"]) == \
        ("canary-errors", {"error_ratio_above": 0.05}, 3, 40, 0.25)
    assert details["crossed"] == [{"statistic": "error_ratio", "value": 0.25, "threshold": 0.05,
                                   "column": None, "method": None}]

    events = _events(outbox)
    (rolled,) = _rolled_back(outbox)
    assert rolled["subject"] == "iris/2" and rolled["targets"] == ["all", "deploys"]
    data = rolled["data"]
    assert (data["model"], data["version"], data["production"], data["rule"],
            data["action"], data["generation"]) == \
        ("iris", "2", "1", "canary-errors", "canary_cleared", aliases.generation)
    assert data["reason"] == entry["reason"]
    assert data["crossed"] == [{"statistic": "error_ratio", "value": 0.25, "threshold": 0.05}]
    assert data["window"] == {"index": 3, "start": "2023-11-14T22:13:20.000Z",
                              "end": "2023-11-14T22:14:20.500Z", "rows": 0, "requests": 40,
                              "error_ratio": 0.25, "latency_p99_s": 0.2,
                              "shadow_agreement": None}
    assert data["links"]["drift"] == f"{PUBLIC}/v1/models/iris/drift?version=2"
    # the notify rule watching every version sends its own event too; nothing else
    assert sorted(e["type"] for e in events) == ["vigil.errors.rate_exceeded",
                                                 "vigil.model.rolled_back"]
    assert told == ["iris"]

    state = AlertState(firing=False, since=None, last_fired_at=100.0,
                       last_event_id=rolled["id"])
    assert engine.states[("iris", "2", "canary-errors")] == state
    assert outbox.load_alerts()[("iris", "2", "canary-errors")] == state
    (described,) = [d for d in engine.describe("iris", "2", 100.0) if d["rule"] == "canary-errors"]
    assert (described["status"], described["action"], described["event_type"]) == \
        ("ok", "rollback_canary", "vigil.model.rolled_back")
    assert ("iris", "2", "canary-errors") not in dict(
        ((m, v, r), on) for m, v, r, on in engine.firing() if on)

    # version 2 is no canary any more: its later windows roll nothing back
    engine.on_window("iris", "2", window_of(index=4, rows=0, latency=FAILING), now=100.5)
    engine.on_window("iris", "2", window_of(index=5, rows=0, latency=FAILING), now=110.0)
    assert len(_rolled_back(outbox)) == 1 and told == ["iris"] and len(_by_monitor(root)) == 1


def test_the_same_breach_on_production_rolls_nothing_back(root, outbox) -> None:
    told = Told()
    engine = _engine(outbox, root, told, rules=(ERRORS,))
    for index in (1, 2):
        engine.on_window("iris", "1", window_of(index=index, rows=0, latency=FAILING),
                         now=100.0 * index)
    assert read_aliases(root, "iris").canary.version == "2"
    assert _events(outbox) == [] and told == [] and _by_monitor(root) == []
    assert ("iris", "1", "canary-errors") not in engine.evaluations  # not judged at all


def test_a_canary_an_operator_cleared_meanwhile_is_skipped_quietly(root, outbox, caplog) -> None:
    caplog.set_level(logging.INFO, "vigil.alerts")
    told = Told()
    engine = _engine(outbox, root, told, rules=(ERRORS,))
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=HEALTHY), now=100.0)
    model_ops.apply(root, "iris", "canary_cleared", actor="bob", reason="enough")
    # within the alias cache's second the engine still takes 2 for the canary: it judges,
    # fires, and finds the canary gone when it reads the aliases afresh
    engine.on_window("iris", "2", window_of(index=2, rows=0, latency=FAILING), now=100.5)
    assert _events(outbox) == [] and told == [] and _by_monitor(root) == []
    assert "no longer the canary: nothing to roll back" in caplog.text
    state = engine.states[("iris", "2", "canary-errors")]
    assert not state.firing and state.last_fired_at is None
    engine.on_window("iris", "2", window_of(index=3, rows=0, latency=FAILING), now=102.0)
    assert _events(outbox) == [] and engine.states[("iris", "2", "canary-errors")].breaching == 0


def test_a_change_that_fails_is_logged_not_fired_and_tried_again(root, outbox, caplog) -> None:
    told = Told()
    engine = _engine(outbox, root, told, rules=(ERRORS,))
    broken = root / "iris" / "3"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: iris\n")  # model_ops cannot list the versions
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    assert "rule canary-errors fired for canary iris/2, not rolled back" in caplog.text
    assert read_aliases(root, "iris").canary.version == "2" and _events(outbox) == []
    assert told == [] and not engine.states[("iris", "2", "canary-errors")].firing
    (broken / "model.yaml").unlink()
    broken.rmdir()
    engine.on_window("iris", "2", window_of(index=2, rows=0, latency=FAILING), now=102.0)
    assert read_aliases(root, "iris").canary is None
    assert len(_rolled_back(outbox)) == 1 and told == ["iris"]


def test_a_new_canary_deployment_is_judged_afresh(root, outbox) -> None:
    told = Told()
    engine = _engine(outbox, root, told, rules=(ERRORS, SLOW))
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    assert read_aliases(root, "iris").canary is None
    # slow: one breaching window of two, then 2 stops being the canary: its count starts again
    engine.on_window("iris", "2", window_of(index=2, rows=0, latency=SLOWLY), now=102.0)
    assert engine.states.get(("iris", "2", "canary-latency"), AlertState()).breaching == 0
    model_ops.apply(root, "iris", "canary", actor="alice", version="2", weight=0.2,
                    reason="fixed, try again", force=True)
    engine.on_window("iris", "2", window_of(index=3, rows=0, latency=SLOWLY), now=104.0)
    assert read_aliases(root, "iris").canary.version == "2"  # 1 of the 2 windows it needs
    engine.on_window("iris", "2", window_of(index=4, rows=0, latency=SLOWLY), now=106.0)
    assert read_aliases(root, "iris").canary is None
    first, second = _rolled_back(outbox)
    assert (first["data"]["rule"], second["data"]["rule"]) == ("canary-errors", "canary-latency")
    assert second["data"]["reason"] == (
        "rule canary-latency (latency_p99_above_s 1) fired for canary iris/2: latency_p99_s 1.5 "
        "against threshold 1 in window 4 (40 requests, 0 sampled rows), 2 breaching windows in "
        "a row; canary cleared automatically")
    assert told == ["iris", "iris"]
    assert [e["actor"] for e in _by_monitor(root)] == ["vigil-monitor (rule canary-errors)",
                                                       "vigil-monitor (rule canary-latency)"]


def test_two_rules_breached_by_one_window_roll_back_once(root, outbox) -> None:
    told = Told()
    slow_now = AlertRule(name="canary-latency", when={"latency_p99_above_s": 1.0},
                         min_requests=20, action="rollback_canary")
    engine = _engine(outbox, root, told, rules=(ERRORS, slow_now))
    both = latency_of(40, p99=1.5, error_ratio=0.25)
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=both), now=100.0)
    assert len(_rolled_back(outbox)) == 1 and told == ["iris"] and len(_by_monitor(root)) == 1
    assert not any(s.firing for s in engine.states.values())


def test_without_a_repository_rollback_rules_judge_nothing(root, outbox) -> None:
    engine = AlertEngine(outbox, PUBLIC, 0.0)
    engine.configure([ERRORS], TARGETS, [("iris", "2")], 0.0)
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    assert _events(outbox) == [] and read_aliases(root, "iris").canary.version == "2"


def test_the_canary_is_read_at_most_once_a_second(root, outbox) -> None:
    guard = CanaryGuard(ChangeWriter(root, outbox))
    assert guard.canary("iris", 10.0) == "2"
    model_ops.apply(root, "iris", "canary_cleared", actor="bob")
    assert guard.canary("iris", 10.9) == "2"  # cached
    assert guard.canary("iris", 11.0) is None
    assert guard.canary("nope", 11.0) is None  # a model without aliases has no canary
    (root / "iris" / "aliases.json").write_text("{not json")
    assert guard.canary("iris", 20.0) is None  # unreadable: logged, no canary judged


def test_a_drift_reason_names_the_columns_and_is_bounded() -> None:
    rule = AlertRule(name="canary-prediction-drift", when={"prediction_drift": True},
                     action="rollback_canary")
    crossed = tuple(Crossed("drift_score", 0.001, 0.05, f"out{i}", "ks") for i in range(7))
    window = window_of(index=9, rows=150, outputs=[drift_of("out0", 0.001, drifted=True,
                                                            role="output")])
    reason = rollback_reason(rule, "iris", "2", Verdict(True, "7 of the outputs drifted",
                                                        crossed), window)
    assert reason.startswith(
        "rule canary-prediction-drift (prediction_drift true) fired for canary iris/2: "
        "drift_score of out0 0.001 (ks) against threshold 0.05; ")
    assert "; 2 more in window 9 (0 requests, 150 sampled rows)" in reason
    many = AlertRule(name="r", when={"features_drifted": [f"f{i:04d}" for i in range(500)]},
                     action="rollback_canary")
    assert len(rollback_reason(many, "iris", "2", Verdict(True, "x"), None)) == 2000


def test_the_rolled_back_event_is_json_with_the_figures(root, outbox) -> None:
    engine = _engine(outbox, root, Told(), rules=(ERRORS,))
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    (event,) = _events(outbox)
    body = outbox.event(event["id"])
    assert json.loads(json.dumps(body)) == body
    assert set(body["data"]) == {"model", "version", "production", "action", "generation", "rule",
                                 "condition", "reason", "verdict", "crossed", "window", "links"}


# ------------------------------------------------------------------ the event and the change: one step


class FlakyOutbox(Outbox):
    """A real outbox whose next write that would make a rolled_back event deliverable fails
    once (SQLite refusing it: a full disk, a lock held too long), after the canary was cleared."""

    failures = 1

    def _fail_once(self) -> None:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")

    def commit(self, alerts, events) -> None:
        if any(e.type == "vigil.model.rolled_back" for e in events):
            self._fail_once()
        super().commit(alerts, events)

    def release(self, event_id: str) -> bool:
        self._fail_once()
        return super().release(event_id)


def test_an_event_whose_release_fails_is_sent_later_not_lost(root, tmp_path) -> None:
    """The canary is cleared, then writing its event fails: the event stays held and the next
    window (or a restart) releases it. It was lost for good before."""
    told = Told()
    flaky = FlakyOutbox(tmp_path / "flaky.sqlite")
    engine = _engine(flaky, root, told, rules=(ERRORS,))
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    assert read_aliases(root, "iris").canary is None and len(_by_monitor(root)) == 1
    assert _rolled_back(flaky) == [] and len(flaky.held()) == 1
    engine.on_window("iris", "1", window_of(index=2, rows=0, latency=HEALTHY), now=160.0)
    (event,) = _rolled_back(flaky)
    assert flaky.held() == [] and event["id"] == _by_monitor(root)[0]["details"]["event_id"]
    assert flaky.load_alerts()[("iris", "2", "canary-errors")].last_event_id == event["id"]
    flaky.close()


def test_a_restart_releases_what_a_failed_release_left_held(root, tmp_path) -> None:
    told = Told()
    path = tmp_path / "restart.sqlite"
    flaky = FlakyOutbox(path)
    _engine(flaky, root, told, rules=(ERRORS,)).on_window(
        "iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    flaky.close()
    again = Outbox(path)
    engine = _engine(again, root, told, rules=(ERRORS,))
    assert len(_rolled_back(again)) == 1 and again.held() == []
    assert engine.states[("iris", "2", "canary-errors")].last_fired_at == 100.0
    assert told == ["iris", "iris"]  # told at the change, and again when released
    again.close()


def test_a_change_that_fails_after_its_event_was_held_sends_nothing(root, outbox) -> None:
    """The audit log cannot be written: the canary stays, the held event is dropped."""
    told = Told()
    engine = _engine(outbox, root, told, rules=(ERRORS,))
    (root / "audit.jsonl").rename(root / "audit.old")
    (root / "audit.jsonl").mkdir()
    engine.on_window("iris", "2", window_of(index=1, rows=0, latency=FAILING), now=100.0)
    assert read_aliases(root, "iris").canary.version == "2"
    assert outbox.held() == [] and _events(outbox) == [] and told == []


_CRASH = """
import os, sys
from pathlib import Path
from monitoring.outbox import Outbox
from tests.unit.monitoring import test_canary as t
from vigil.core import aliases

class Dying(Outbox):
    def release(self, event_id):
        os._exit(3)  # the monitor dies after the change, before the release

if sys.argv[2] == "before-aliases":
    aliases.atomic_write = lambda *a, **k: os._exit(3)  # dies after the audit line
engine = t._engine(Dying(sys.argv[3]), Path(sys.argv[1]), t.Told(), rules=(t.ERRORS,))
engine.on_window("iris", "2", t.window_of(index=1, rows=0, latency=t.FAILING), now=100.0)
"""


@pytest.mark.parametrize(("when", "cleared"), [("after-change", True), ("before-aliases", False)])
def test_a_monitor_that_dies_mid_rollback_sends_the_event_iff_the_change_happened(
        root, tmp_path, when: str, cleared: bool) -> None:
    """A real process death: after the change and before the release, the restarted monitor
    sends the event once; after the audit line and before the aliases (the change not made),
    it sends nothing, and the next change records the void line."""
    path = tmp_path / "crash.sqlite"
    done = subprocess.run([sys.executable, "-c", _CRASH, str(root), when, str(path)],
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 3
    box = Outbox(path)
    assert len(box.held()) == 1
    _engine(box, root, Told(), rules=(ERRORS,))
    assert box.held() == []
    assert (read_aliases(root, "iris").canary is None) is cleared
    assert len(_rolled_back(box)) == (1 if cleared else 0)
    if not cleared:
        later = model_ops.apply(root, "iris", "canary_cleared", actor="bob", reason="by hand")
        assert later.entry["details"]["void_generation"] == later.after.generation - 1
    box.close()
