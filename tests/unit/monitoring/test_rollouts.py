"""The rollout driver (monitoring.rollouts) on a real repository and a real outbox, with
hand-built windows: a good candidate walked to promotion, a failing one rolled back, one without
traffic halted and never promoted, a restart that carries on at the same step without announcing
it again, candidate windows waiting for production's figures over the same span, and a decision
dropped when an operator changed the rollout meanwhile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitoring.outbox import Outbox
from monitoring.rollout_settings import RolloutCheckSettings
from monitoring.rollouts import RolloutDriver
from tests.unit.monitoring.helpers import latency_of, window_of
from vigil.core import aliases, audit, model_ops
from vigil.core.repository import publish
from vigil.core.rollout import make_plan
from vigil.core.tensors import TensorSpec

SPEC = (TensorSpec("x", "FP32", (-1, 2)),)
T0 = 1_700_000_000.0
SETTINGS = RolloutCheckSettings(min_requests=20, prediction_drift=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for v in ("1", "2"):
        publish(root, "m", v, f"bytes-{v}".encode(), SPEC, SPEC)
    model_ops.apply(root, "m", "promote", actor="ci", version="1", force=True, reason="seed")
    return root


class World:
    def __init__(self, repo: Path, tmp_path: Path, plan=None) -> None:
        self.repo = repo
        self.outbox = Outbox(tmp_path / "outbox.sqlite")
        self.told: list[str] = []
        self.driver = self.restart()
        model_ops.apply(repo, "m", "rollout", actor="ops", version="2", force=True,
                        reason="retrained", now=T0,
                        plan=plan or make_plan((0.1, 0.5), windows_per_step=1,
                                               max_failed_checks=2, step_deadline_s=300))

    def restart(self) -> RolloutDriver:
        self.driver = RolloutDriver(self.repo, self.outbox, "http://vigil", lambda kind: ("hook",),
                                    self.told.append, SETTINGS, settle_s=60)
        return self.driver

    def windows(self, index: int, start: float, candidate: dict, production: dict | None = None,
                order: str = "production first") -> None:
        """One window each of production and the candidate over [start, start + 30)."""
        def window(latency: dict):
            return window_of(index=index, opened_at=start, closed_at=start + 30,
                             latency=latency_of(**latency))
        pairs = [("2", window(candidate))]
        if production is not None:
            pairs.insert(0 if order == "production first" else 1, ("1", window(production)))
        for version, w in pairs:
            self.driver.on_window("m", version, w, start + 31)

    def state(self) -> aliases.AliasState:
        return aliases.read_aliases(self.repo, "m")

    def event_types(self) -> list[str]:
        rows = self.outbox._db.execute("SELECT type FROM events ORDER BY created_at, rowid")
        return [r[0] for r in rows.fetchall()]


GOOD = {"count": 100, "p99": 0.010, "error_ratio": 0.0}
PROD = {"count": 900, "p99": 0.010, "error_ratio": 0.0}
BAD = {"count": 100, "p99": 0.010, "error_ratio": 0.2}


def test_a_good_candidate_is_walked_to_promotion(repo: Path, tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.windows(1, T0, GOOD, PROD)
    state = world.state()
    assert (state.rollout.step, state.canary.weight) == (1, 0.5)
    world.windows(2, T0 + 30, GOOD, PROD)
    state = world.state()
    assert (state.production, state.canary, state.rollout) == ("2", None, None)
    assert world.event_types() == ["vigil.rollout.started", "vigil.rollout.advanced",
                                   "vigil.rollout.promoted"]
    promoted = json.loads(world.outbox._db.execute(
        "SELECT body FROM events WHERE type = 'vigil.rollout.promoted'").fetchone()[0])
    names = {c["name"]: c["outcome"] for c in promoted["data"]["checks"]}
    assert names == {"min_requests": "pass", "error_ratio": "pass", "latency_p99": "pass"}
    assert [e["action"] for e in audit.newest(repo, "m")][:3] == [
        "rollout_promoted", "rollout_advanced", "rollout"]
    assert world.told == ["m", "m"]  # the replicas were told after each change
    assert world.driver.decisions_total == {("m", "advance"): 1, ("m", "promote"): 1}


def test_a_candidate_that_errors_is_rolled_back(repo: Path, tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.windows(1, T0, BAD, PROD)
    assert world.state().rollout.failed_checks == 1
    world.windows(2, T0 + 30, BAD, PROD)
    state = world.state()
    assert (state.production, state.canary, state.rollout) == ("1", None, None)
    assert world.event_types()[-2:] == ["vigil.rollout.rolled_back", "vigil.model.rolled_back"]
    entry = next(audit.newest(repo, "m"))
    assert entry["action"] == "rollout_rolled_back" and len(entry["details"]["event_ids"]) == 2
    assert world.driver.checks_total[("m", "error_ratio", "fail")] == 2


def test_a_candidate_without_traffic_halts_and_is_never_promoted(repo: Path, tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.windows(1, T0, {"count": 3, "p99": 0.01}, PROD)  # too few requests: no verdict
    world.driver.tick(["m"], T0 + 299)
    assert world.state().rollout.status == "running"
    world.driver.tick([], T0 + 300)  # a model never sampled: found in the repository
    state = world.state()
    assert state.rollout.status == "halted" and state.production == "1"
    assert world.event_types()[-1] == "vigil.rollout.halted"
    world.windows(2, T0 + 310, GOOD, PROD)  # halted: good windows change nothing
    assert world.state().rollout.status == "halted" and world.state().production == "1"


def test_a_restarted_monitor_carries_on_at_the_same_step(repo: Path, tmp_path: Path) -> None:
    world = World(repo, tmp_path, plan=make_plan((0.1, 0.5), windows_per_step=2))
    world.windows(1, T0, GOOD, PROD)
    assert world.state().rollout.passed_windows == 1
    world.restart()
    world.windows(2, T0 + 30, GOOD, PROD)
    state = world.state()
    assert (state.rollout.step, state.rollout.passed_windows) == (1, 0)
    assert world.event_types().count("vigil.rollout.started") == 1  # not announced again


def test_a_candidate_window_waits_for_production_over_the_same_span(repo: Path,
                                                                   tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.windows(1, T0, GOOD, PROD, order="candidate first")  # judged once production closes
    assert world.state().rollout.step == 1
    world.windows(2, T0 + 30, GOOD)  # production's window still open: waits
    assert world.state().rollout.step == 1
    world.driver.tick(["m"], T0 + 60 + 59)
    assert world.state().rollout.step == 1
    world.driver.tick(["m"], T0 + 60 + 61)  # settled with no production figures: no verdict
    state = world.state()
    assert (state.rollout.step, state.rollout.last_window) == (1, 2)
    assert state.rollout.last_checks[0].outcome == "no_verdict"


def test_a_decision_on_a_rollout_an_operator_changed_is_dropped(repo: Path, tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.driver.on_window("m", "2", window_of(index=1, opened_at=T0, closed_at=T0 + 30,
                                               latency=latency_of(**GOOD)), T0 + 31)
    model_ops.apply(repo, "m", "rollout_paused", actor="ops", reason="look")
    world.driver.on_window("m", "1", window_of(index=1, opened_at=T0, closed_at=T0 + 30,
                                               latency=latency_of(**PROD)), T0 + 32)
    state = world.state()
    assert state.rollout.status == "paused" and state.rollout.step == 0  # not judged: paused
    assert world.event_types() == ["vigil.rollout.started"]
    assert world.outbox.held() == []


def test_a_running_rollout_and_its_checks_are_scraped(repo: Path, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from monitoring.collector_ops import RolloutCollector

    world = World(repo, tmp_path)
    world.windows(1, T0, BAD, PROD)  # one failed round: held at step 1
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RolloutCollector(world.driver.running,
                                       lambda: list(world.driver.checks_total.items())))
    text = generate_latest(registry).decode()
    assert 'vigil_rollout_weight{model="m",version="2"} 0.1' in text
    assert 'vigil_rollout_step{model="m",version="2"} 1.0' in text
    assert 'vigil_rollout_halted{model="m",version="2"} 0.0' in text
    assert 'vigil_rollout_checks_total{check="error_ratio",model="m",outcome="fail"} 1.0' in text
    world.driver.tick(["m"], T0 + 400)  # past the 300 s deadline: halted
    assert 'vigil_rollout_halted{model="m",version="2"} 1.0' in generate_latest(registry).decode()


def test_a_rollback_rule_on_the_candidate_rolls_back_through_its_rollout(repo: Path,
                                                                         tmp_path: Path) -> None:
    """The canary guard folded in: a rollback_canary rule that fires on a rollout's candidate
    (paused here: the rule still protects production) ends the rollout by the rollout's own
    roll_back decision, one audited change with the rollout's events; the alert is committed
    not firing, naming the event."""
    from monitoring.alert_settings import AlertRule, WebhookTarget
    from monitoring.alerts import AlertEngine

    world = World(repo, tmp_path)
    world.driver.on_window("m", "2", window_of(index=0, opened_at=T0 - 30, closed_at=T0), T0)
    model_ops.apply(repo, "m", "rollout_paused", actor="ops", reason="lunch", now=T0 + 1)
    rule = AlertRule(name="canary-errors", when={"error_ratio_above": 0.05}, min_requests=10,
                     action="rollback_canary")
    engine = AlertEngine(world.outbox, "http://vigil", T0, repository=repo,
                         on_rollback=world.told.append, rollouts=world.driver)
    engine.configure([rule], [WebhookTarget(name="hook", url="http://127.0.0.1:9/h",
                                            secret_env="S")], [("m", "1"), ("m", "2")], T0)
    engine.on_window("m", "2", window_of(index=1, opened_at=T0, closed_at=T0 + 30,
                                         latency=latency_of(**BAD)), T0 + 31)
    state = world.state()
    assert (state.production, state.canary, state.rollout) == ("1", None, None)
    entry = next(audit.newest(repo, "m"))
    assert (entry["action"], entry["actor"]) == ("rollout_rolled_back", "vigil-monitor (rollout)")
    assert entry["details"]["rule"] == "canary-errors"
    assert entry["reason"].startswith("rule canary-errors (error_ratio_above 0.05) fired")
    assert world.event_types()[-2:] == ["vigil.rollout.rolled_back", "vigil.model.rolled_back"]
    alert = engine.states[("m", "2", "canary-errors")]
    assert not alert.firing and alert.last_fired_at == T0 + 31
    assert alert.last_event_id == entry["details"]["event_ids"][-1]
    assert world.outbox.load_alerts()[("m", "2", "canary-errors")] == alert  # survives a restart
    assert world.told[-1] == "m"


def test_a_rollback_rule_without_a_rollout_clears_the_canary_as_before(repo: Path,
                                                                        tmp_path: Path) -> None:
    from monitoring.alert_settings import AlertRule
    from monitoring.alerts import AlertEngine

    world = World(repo, tmp_path)
    model_ops.apply(repo, "m", "rollout_aborted", actor="ops", reason="manual canary", now=T0)
    model_ops.apply(repo, "m", "canary", actor="ops", version="2", weight=0.2, force=True,
                    reason="by hand")
    rule = AlertRule(name="canary-errors", when={"error_ratio_above": 0.05}, min_requests=10,
                     action="rollback_canary")
    engine = AlertEngine(world.outbox, "http://vigil", T0, repository=repo,
                         on_rollback=world.told.append, rollouts=world.driver)
    engine.configure([rule], [], [("m", "2")], T0)
    engine.on_window("m", "2", window_of(index=1, opened_at=T0, closed_at=T0 + 30,
                                         latency=latency_of(**BAD)), T0 + 31)
    assert world.state().canary is None
    assert next(audit.newest(repo, "m"))["action"] == "canary_cleared"
    assert world.event_types()[-1] == "vigil.model.rolled_back"


def test_labels_feed_the_quality_check_over_the_candidate_windows_span(repo: Path,
                                                                        tmp_path: Path) -> None:
    """With labels joined for both sides over the candidate window's span, the quality check
    compares them (a worse candidate fails it and, twice, is rolled back); each side is asked
    for its own version and the window's span, with min_requests labelled rows."""
    asked: list[tuple] = []
    figures = {"1": 0.95, "2": 0.70}

    def quality(model: str, version: str, start: float, end: float, least: int) -> float:
        asked.append((model, version, start, end, least))
        return figures[version]

    world = World(repo, tmp_path)
    world.driver.quality = quality
    world.windows(1, T0, GOOD, PROD)
    assert asked == [("m", "2", T0, T0 + 30, 20), ("m", "1", T0, T0 + 30, 20)]
    checks = {c.name: (c.outcome, c.observed) for c in world.state().rollout.last_checks}
    assert checks["quality"] == ("fail", pytest.approx(0.25))
    assert checks["error_ratio"][0] == "pass"
    world.windows(2, T0 + 30, GOOD, PROD)
    assert world.state().rollout is None and world.state().production == "1"
    assert world.event_types()[-2:] == ["vigil.rollout.rolled_back", "vigil.model.rolled_back"]


def test_without_enough_labels_the_quality_check_gives_no_verdict(repo: Path,
                                                                   tmp_path: Path) -> None:
    world = World(repo, tmp_path)
    world.driver.quality = lambda model, version, *span: 0.9 if version == "2" else None
    world.windows(1, T0, GOOD, PROD)
    checks = {c.name: c.outcome for c in world.state().rollout.last_checks}
    assert checks["quality"] == "no_verdict"
    world.driver.quality = lambda *a: None  # no labels at all: the check is left out
    world.windows(2, T0 + 30, GOOD, PROD)
    state = world.state()
    assert (state.rollout.step, state.canary.weight) == (1, 0.5)  # the other checks passed
    assert "quality" not in {c.name for c in state.rollout.last_checks}
