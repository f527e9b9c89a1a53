"""Alert rules on quality from labels: quality_below, quality_drop (against the gate's
reference) and label_coverage_below, judged once a window settled (feedback.settle_s after it
closed), through the label join and the alert engine to the outbox's events."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from monitoring.alert_settings import AlertRule, WebhookTarget
from monitoring.alerts import AlertEngine
from monitoring.collector_labels import LabelCollector
from monitoring.label_join import LabelJoin
from monitoring.label_store import LabelStore
from monitoring.outbox import Outbox
from monitoring.rules import judge, judge_estimated, judge_labels
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from tests.unit.monitoring.helpers import window_of
from vigil.core.messages import SampleMessage
from vigil.core.prediction_messages import PredictionMessage
from vigil.core.repository import MANIFEST_FILE, read_manifest

WINDOW = window_of(index=3, features=[])


def _quality(metrics: dict[str, Any], labelled: int = 200, served: int = 400,
             reference: dict[str, float] | None = None, task: str = "classification") -> dict:
    return {"labelled_rows": labelled, "served_rows": served,
            "coverage": labelled / served if served else None, "settled": True, "task": task,
            "metrics": metrics, "classes": {}, "reference": reference or {}}


def _rule(when: dict, **kw: Any) -> AlertRule:
    return AlertRule(name="q", when=when, **kw)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("when, why", [
    ({"quality_below": {"metric": "accuracy"}}, "value"),  # no threshold
    ({"quality_below": {"metric": "bogus", "value": 0.5}}, "metric"),
    ({"quality_below": {"metric": "accuracy", "value": float("nan")}}, "finite"),
    ({"quality_drop": {"metric": "f1_macro", "by": 0.05}}, "accuracy"),  # the gate never scores it
    ({"quality_drop": {"metric": "accuracy", "by": 0}}, "greater than 0"),
    ({"quality_drop": {"metric": "accuracy", "by": 0.1, "extra": 1}}, "extra"),
    ({"label_coverage_below": 0}, "greater than 0"),
    ({"label_coverage_below": 1.5}, "less than or equal to 1"),
    ({"label_coverage_below": 0.5, "dataset_drift": True}, "exactly one"),
])
def test_a_malformed_label_condition_is_refused_with_what_to_fix(when: dict, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        _rule(when)


def test_label_conditions_have_their_family_and_event_types() -> None:
    rules = [_rule({"quality_below": {"metric": "mae", "value": 2.0}}),
             _rule({"quality_drop": {"metric": "roc_auc", "by": 0.05}}),
             _rule({"label_coverage_below": 0.2})]
    assert [r.when.family for r in rules] == ["labels"] * 3
    assert [r.event_type for r in rules] == ["vigil.quality.degraded", "vigil.quality.degraded",
                                             "vigil.labels.coverage_low"]
    with pytest.raises(ValueError, match="judge_labels"):  # never judged at window close
        judge(rules[0], WINDOW)


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("metric, value, threshold, breached", [
    ("accuracy", 0.79, 0.8, True),
    ("accuracy", 0.8, 0.8, False),  # at the floor is not below it
    ("f1_macro", 0.9, 0.8, False),
    ("mae", 2.5, 2.0, True),  # an error metric is worse above its threshold
    ("log_loss", 0.3, 0.4, False),
    ("r2", -0.1, 0.0, True),
])
def test_quality_below_means_worse_than_the_value(metric, value, threshold, breached) -> None:
    rule = _rule({"quality_below": {"metric": metric, "value": threshold}})
    verdict = judge_labels(rule, WINDOW, _quality({metric: value}))
    assert verdict.breached is breached and verdict.window == 3
    assert [c.statistic for c in verdict.crossed] == ([metric] if breached else [])


@pytest.mark.parametrize("metric, value, reference, by, breached", [
    ("accuracy", 0.90, 0.96, 0.05, True),
    ("accuracy", 0.93, 0.96, 0.05, False),
    ("roc_auc", 0.99, 0.96, 0.01, False),  # better than the reference
    ("rmse", 3.0, 2.0, 0.5, True),  # an error that grew
    ("rmse", 1.0, 2.0, 0.5, False),
])
def test_quality_drop_is_measured_from_the_gates_reference(metric, value, reference, by,
                                                           breached) -> None:
    rule = _rule({"quality_drop": {"metric": metric, "by": by}})
    verdict = judge_labels(rule, WINDOW, _quality({metric: value}, reference={metric: reference}))
    assert verdict.breached is breached, verdict.detail
    if breached:
        (crossed,) = verdict.crossed
        assert crossed.statistic == f"{metric}_drop" and crossed.threshold == by
        assert crossed.value == pytest.approx(abs(value - reference))


def test_no_verdict_when_the_window_cannot_say() -> None:
    drop = _rule({"quality_drop": {"metric": "accuracy", "by": 0.05}}, min_rows=100)
    below = _rule({"quality_below": {"metric": "roc_auc", "value": 0.7}}, min_rows=100)
    coverage = _rule({"label_coverage_below": 0.5}, min_rows=100)
    few = _quality({"accuracy": 0.1, "roc_auc": 0.1}, labelled=99, reference={"accuracy": 0.9})
    assert judge_labels(drop, WINDOW, few).breached is None  # too few labelled rows
    assert "99 labelled rows" in judge_labels(below, WINDOW, few).detail
    ungated = _quality({"accuracy": 0.1})
    assert "did not score" in judge_labels(drop, WINDOW, ungated).detail
    assert judge_labels(drop, WINDOW, ungated).breached is None
    unscored = _quality({"accuracy": 0.8, "roc_auc": None})  # one class in the window
    assert judge_labels(below, WINDOW, unscored).breached is None
    regression = _quality({"mae": 1.0}, task="regression")
    assert "regression" in judge_labels(below, WINDOW, regression).detail
    # coverage counts served rows, labelled or not
    assert judge_labels(coverage, WINDOW, _quality({}, labelled=0, served=99)).breached is None
    verdict = judge_labels(coverage, WINDOW, _quality({}, labelled=0, served=100))
    assert verdict.breached is True and verdict.crossed[0].value == 0.0
    assert judge_labels(coverage, WINDOW, _quality({}, labelled=50, served=100)).breached is False


# ---------------------------------------------------------------- settling, end to end

SETTLE_S = 100.0
SETTINGS = MonitorSettings(window={"rows": 100, "seconds": None})
TARGET = WebhookTarget(name="all", url="http://127.0.0.1:9/a", secret_env="S")


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    path = root / "breast_cancer" / "1"
    manifest = read_manifest(path)
    gate = {"validation": {"passed": True, "metrics": {"candidate": {"accuracy": 0.96}}}}
    (path / MANIFEST_FILE).write_text(
        dataclasses.replace(manifest, lineage={**manifest.lineage, **gate}).to_yaml())
    return root


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


class Stack:
    """A service over the example repository, its label join and an alert engine."""

    def __init__(self, repo: Path, tmp: Path, outbox: Outbox, rules: list[AlertRule]) -> None:
        self.engine = AlertEngine(outbox, "http://mon:8000/monitor", 0.0)
        self.service = MonitorService(MonitorAppSettings(model_repository=repo), SETTINGS, 0.0,
                                      alerts=self.engine)
        self.join = LabelJoin(LabelStore(tmp / "labels.sqlite", 1e6, 10_000), self.service,
                              SETTLE_S)
        self.engine.configure(rules, [TARGET], [("breast_cancer", "1")], 0.0)
        frame = pd.read_parquet(repo / "breast_cancer" / "1" / "reference.parquet")
        self.x = frame.drop(columns=["target"]).to_numpy(np.float32)[:100]
        self.served = 0

    def serve_window(self, at: float, right: int) -> None:
        """100 requests answered at `at` (class 1), labelled at once: `right` of them 1; then
        the 100 sampled rows that close the window."""
        ids = tuple(f"r{self.served + i}" for i in range(100))
        self.served += 100
        outputs = {"label": np.ones(100, np.int64),
                   "probabilities": np.tile(np.float32([0.2, 0.8]), (100, 1))}
        self.join.record([PredictionMessage("breast_cancer", "1", ids, np.full(100, at),
                                            np.ones(100, np.int64), outputs)], now=at)
        labels = [(i, 1 if n < right else 0) for n, i in enumerate(ids)]
        self.join.label("breast_cancer", labels, False, at)
        self.service.ingest([SampleMessage("breast_cancer", "1", {"input": self.x}, outputs,
                                           np.full(100, 0.01), np.full(100, 200, np.int16))],
                            now=at + 1.0)

    def settle(self, now: float) -> list:
        settled = self.join.settle(now)
        for model, version, window, quality in settled:
            self.engine.on_settled(model, version, window, quality, now)
        return settled


def _events(outbox: Outbox) -> list[dict]:
    rows = outbox.deliveries(limit=1000)
    ids = sorted({d.event_id for d in rows}, key=lambda i: outbox.event(i)["time"])
    return [outbox.event(i) for i in ids]


def test_a_quality_drop_fires_once_the_window_settled_and_resolves(repo, tmp_path,
                                                                   outbox) -> None:
    rule = _rule({"quality_drop": {"metric": "accuracy", "by": 0.1}}, min_rows=50)
    stack = Stack(repo, tmp_path, outbox, [rule])
    stack.serve_window(at=10.0, right=70)  # accuracy 0.70 against 0.96: a drop of 0.26
    assert stack.settle(now=50.0) == []  # closed at 11: not settled before 111
    assert _events(outbox) == []
    (settled,) = stack.settle(now=111.0)
    assert settled[3]["metrics"]["accuracy"] == 0.7 and settled[3]["settled"] is True
    (fired,) = _events(outbox)
    assert fired["type"] == "vigil.quality.degraded"
    assert fired["data"]["condition"] == {"quality_drop": {"metric": "accuracy", "by": 0.1}}
    assert fired["data"]["crossed"][0]["statistic"] == "accuracy_drop"
    assert fired["data"]["window"]["index"] == 1
    assert stack.settle(now=112.0) == []  # each window is judged once
    stack.serve_window(at=200.0, right=95)  # 0.95: within 0.1 of the reference
    stack.settle(now=400.0)
    assert [e["type"] for e in _events(outbox)] == ["vigil.quality.degraded",
                                                    "vigil.alert.resolved"]
    (described,) = stack.engine.describe("breast_cancer", "1", 400.0)
    assert described["status"] == "ok" and described["latest"]["window"] == 2


def test_label_coverage_fires_when_labels_stop(repo, tmp_path, outbox) -> None:
    rule = _rule({"label_coverage_below": 0.5}, min_rows=50)
    stack = Stack(repo, tmp_path, outbox, [rule])
    stack.serve_window(at=10.0, right=70)
    ids = tuple(f"x{i}" for i in range(100))
    outputs = {"label": np.ones(100, np.int64),
               "probabilities": np.tile(np.float32([0.2, 0.8]), (100, 1))}
    # the feedback pipeline stopped: these are served, never labelled
    stack.join.record([PredictionMessage("breast_cancer", "1", ids, np.full(100, 20.0),
                                         np.ones(100, np.int64), outputs)], now=20.0)
    stack.service.ingest([SampleMessage("breast_cancer", "1", {"input": stack.x}, outputs,
                                        np.full(100, 0.01), np.full(100, 200, np.int16))],
                         now=21.0)
    settled = stack.settle(now=200.0)
    assert [q["coverage"] for *_, q in settled] == [1.0, 0.0]
    (fired,) = _events(outbox)
    assert fired["type"] == "vigil.labels.coverage_low"
    assert fired["data"]["window"]["index"] == 2


def test_settled_quality_is_scraped_and_forgotten_with_its_version(repo, tmp_path,
                                                                   outbox) -> None:
    stack = Stack(repo, tmp_path, outbox, [])
    stack.serve_window(at=10.0, right=80)
    stack.settle(now=500.0)

    def scrape() -> dict[str, list]:
        collector = LabelCollector(stack.join.store, settled=lambda: [
            (*k, doc) for k, (_, doc) in stack.join.last_settled.items()])
        return {f.name: f.samples for f in collector.collect()}

    families = scrape()
    accuracy = [s for s in families["vigil_quality_settled"] if s.labels["metric"] == "accuracy"]
    assert accuracy[0].value == 0.8
    assert families["vigil_quality_settled_labels"][0].value == 100.0
    assert families["vigil_quality_settled_label_coverage"][0].value == 1.0
    stack.service.versions.clear()  # the version was released
    stack.settle(now=600.0)
    assert stack.join.last_settled == {} and stack.join.waiting == {}
    assert scrape()["vigil_quality_settled"] == []


def test_waiting_windows_are_bounded(repo, tmp_path, outbox, monkeypatch) -> None:
    monkeypatch.setattr("monitoring.label_join.MAX_WAITING", 2)
    stack = Stack(repo, tmp_path, outbox, [])
    for at in (10.0, 20.0, 30.0, 40.0):
        stack.serve_window(at=at, right=50)
    settled = stack.settle(now=45.0)  # none settled; the two oldest judged early
    assert [w.index for _, _, w, _ in settled] == [1, 2]
    assert [q["settled"] for *_, q in settled] == [False, False]
    assert len(stack.join.waiting[("breast_cancer", "1")]) == 2


def test_a_label_event_carries_json_ready_figures(repo, tmp_path, outbox) -> None:
    rule = _rule({"quality_below": {"metric": "accuracy", "value": 0.9}}, min_rows=10)
    stack = Stack(repo, tmp_path, outbox, [rule])
    stack.serve_window(at=10.0, right=60)
    stack.settle(now=1000.0)
    (fired,) = _events(outbox)
    json.dumps(fired)  # as delivered
    assert fired["data"]["crossed"] == [{"statistic": "accuracy", "value": 0.6,
                                         "threshold": 0.9}]


def test_a_rollouts_quality_is_accuracy_on_the_labels_joined_so_far(repo, tmp_path,
                                                                    outbox) -> None:
    stack = Stack(repo, tmp_path, outbox, [])
    stack.serve_window(at=10.0, right=70)
    assert stack.join.rollout_quality("breast_cancer", "1", 0.0, 20.0, 100) == 0.7
    assert stack.join.rollout_quality("breast_cancer", "1", 0.0, 20.0, 101) is None  # too few
    assert stack.join.rollout_quality("breast_cancer", "1", 20.0, 40.0, 1) is None  # none


# ---------------------------------------------------------------- estimated before labels


def _estimate(metrics: dict[str, Any], rows: int = 300, available: bool = True,
              reference: dict[str, float] | None = None) -> dict[str, Any]:
    return {"available": available, "reason": None if available else "no profile",
            "rows": rows, "served_rows": rows, "metrics": metrics,
            "reference": {"accuracy": 0.96, "roc_auc": 0.99} if reference is None else reference}


@pytest.mark.parametrize("when, why", [
    ({"estimated_quality_drop": {"metric": "log_loss", "by": 0.1}}, "metric"),  # not estimated
    ({"estimated_quality_drop": {"metric": "accuracy", "by": -0.1}}, "greater than 0"),
    ({"estimated_quality_drop": {"metric": "accuracy"}}, "by"),
])
def test_a_malformed_estimated_condition_is_refused(when: dict, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        _rule(when)


def test_an_estimated_drop_is_measured_from_the_held_out_sets_figure() -> None:
    rule = _rule({"estimated_quality_drop": {"metric": "accuracy", "by": 0.1}}, min_rows=100)
    assert (rule.when.family, rule.event_type) == ("estimated", "vigil.quality.estimated_drop")
    verdict = judge_estimated(rule, WINDOW, _estimate({"accuracy": 0.80}))
    assert verdict.breached is True and verdict.window == 3
    assert verdict.crossed[0].statistic == "estimated_accuracy_drop"
    assert verdict.crossed[0].value == pytest.approx(0.16)
    assert judge_estimated(rule, WINDOW, _estimate({"accuracy": 0.90})).breached is False
    for estimate, why in [(_estimate({"accuracy": 0.5}, rows=99), "99 rows estimated"),
                          (_estimate({}, available=False), "no estimate: no profile"),
                          (_estimate({"accuracy": None}), "not defined"),
                          (_estimate({"accuracy": 0.5}, reference={}), "not defined")]:
        verdict = judge_estimated(rule, WINDOW, estimate)
        assert verdict.breached is None and why in verdict.detail


def test_windows_are_estimated_for_the_rules_once_their_records_are_in(repo, tmp_path, outbox,
                                                                       monkeypatch) -> None:
    rule = _rule({"estimated_quality_drop": {"metric": "accuracy", "by": 0.1}}, min_rows=50)
    stack = Stack(repo, tmp_path, outbox, [rule])
    calls: list[tuple[float, float]] = []

    def estimated(state, opened_at: float, closed_at: float) -> dict[str, Any]:
        calls.append((opened_at, closed_at))
        return _estimate({"accuracy": 0.70})

    monkeypatch.setattr(stack.join, "estimated", estimated)
    stack.serve_window(at=10.0, right=70)  # closes at 11
    assert stack.join.estimate_due(15.0) == []  # its last records may still be on the way
    (due,) = stack.join.estimate_due(21.0)
    assert due[:2] == ("breast_cancer", "1") and due[2].index == 1 and len(calls) == 1
    stack.engine.on_estimated(*due, now=21.0)
    (fired,) = _events(outbox)
    assert fired["type"] == "vigil.quality.estimated_drop"
    assert stack.join.estimate_due(30.0) == []  # each window once
    stack.serve_window(at=40.0, right=70)
    assert stack.join.estimate_due(100.0, wanted=False) == []  # no such rule: nothing waits
    assert stack.join.estimating == {}
