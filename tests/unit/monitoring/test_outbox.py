"""The SQLite outbox: atomic commits, durability across a restart, WAL, due deliveries, attempts,
operator retry and replay, writers on two threads."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.outbox import NewEvent, Outbox
from monitoring.settings import OUTBOX_FILE_NAME, MonitorAppSettings
from monitoring.rules import AlertState

KEY = ("iris", "1", "drift")
FIRING = AlertState(firing=True, since=10.0, last_fired_at=10.0, last_event_id="e1", breaching=2)


def _event(event_id: str, created_at: float = 10.0, targets=("a", "b"), kind="vigil.drift.detected"):
    body = json.dumps({"id": event_id, "type": kind}).encode()
    return NewEvent(event_id, kind, "iris/1", created_at, body, tuple(targets))


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "box" / "outbox.sqlite")  # the folder is made
    yield box
    box.close()


def test_outbox_file() -> None:
    named = MonitorAppSettings(model_repository="/srv/models", outbox_path="~/x.sqlite")
    assert named.outbox_file() == Path("~/x.sqlite").expanduser()
    beside = MonitorAppSettings(model_repository="/srv/models").outbox_file()
    assert beside == Path("/srv") / OUTBOX_FILE_NAME


def test_a_commit_stores_state_events_and_deliveries(outbox: Outbox) -> None:
    outbox.commit({KEY: FIRING}, [_event("e1")])
    assert outbox.load_alerts() == {KEY: FIRING}
    assert outbox.event("e1") == {"id": "e1", "type": "vigil.drift.detected"}
    assert outbox.event("nope") is None
    rows = outbox.deliveries()
    assert [(d.event_id, d.target, d.state, d.attempts, d.next_attempt_at) for d in rows] == \
        [("e1", "a", "pending", 0, 10.0), ("e1", "b", "pending", 0, 10.0)]
    assert (rows[0].type, rows[0].subject, rows[0].created_at) == \
        ("vigil.drift.detected", "iris/1", 10.0)
    assert rows[0].body == b'{"id": "e1", "type": "vigil.drift.detected"}'
    assert "body" not in rows[0].to_dict() and rows[0].to_dict()["target"] == "a"
    outbox.commit({KEY: None}, [])  # None forgets the state
    assert outbox.load_alerts() == {}


def test_a_commit_is_atomic(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e0")])
    other = ("iris", "1", "latency")
    with pytest.raises(sqlite3.IntegrityError):
        outbox.commit({KEY: FIRING, other: AlertState()}, [_event("e1"), _event("e2"), _event("e1")])
    assert outbox.load_alerts() == {}
    assert outbox.event("e1") is None and outbox.event("e2") is None
    assert {d.event_id for d in outbox.deliveries()} == {"e0"}
    outbox.commit({KEY: FIRING}, [_event("e1")])  # the connection is usable after the rollback
    assert outbox.load_alerts() == {KEY: FIRING}


def test_everything_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    first = Outbox(path)
    first.commit({KEY: FIRING}, [_event("e1"), _event("e2", 11.0, targets=("a",))])
    first.record_attempt("e1", "a", state="delivered", now=12.0, status=204, error=None)
    first.close()
    del first
    again = Outbox(path)
    assert again.load_alerts() == {KEY: FIRING}
    assert again.event("e2") == {"id": "e2", "type": "vigil.drift.detected"}
    assert sorted((d.event_id, d.target, d.state) for d in again.deliveries()) == [
        ("e1", "a", "delivered"), ("e1", "b", "pending"), ("e2", "a", "pending")]
    again.close()


def test_wal_mode_and_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "1"
    db.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="outbox schema 2, this Vigil reads 1"):
        Outbox(path)


def test_due_order_limit_skip_and_target(outbox: Outbox) -> None:
    outbox.commit({}, [_event("late", 30.0), _event("early", 10.0), _event("mid", 20.0),
                       _event("only_b", 5.0, targets=("b",))])
    outbox.record_attempt("early", "a", state="pending", now=11.0, status=500, error="HTTP 500",
                          next_attempt_at=25.0)  # retried after "mid"
    assert [d.event_id for d in outbox.due("a", now=100.0, limit=10)] == ["mid", "early", "late"]
    assert [d.event_id for d in outbox.due("a", now=24.9, limit=10)] == ["mid"]
    assert [d.event_id for d in outbox.due("a", now=100.0, limit=2)] == ["mid", "early"]
    assert [d.event_id for d in outbox.due("a", now=100.0, limit=10, skip=["mid", "late"])] == \
        ["early"]
    assert outbox.due("a", now=100.0, limit=0) == [] and outbox.due("a", 100.0, -1) == []
    assert [d.event_id for d in outbox.due("b", now=100.0, limit=10)] == \
        ["only_b", "early", "mid", "late"]
    assert outbox.due("nobody", now=100.0, limit=10) == []
    same_time = [_event(f"s{i}", 50.0 + i / 10, targets=("c",)) for i in (3, 1, 2)]
    outbox.commit({}, same_time)  # next attempt = creation: oldest first
    assert [d.event_id for d in outbox.due("c", 100.0, 10)] == ["s1", "s2", "s3"]


def test_next_due(outbox: Outbox) -> None:
    assert outbox.next_due([]) is None and outbox.next_due(["a"]) is None
    outbox.commit({}, [_event("e1", 10.0, targets=("a",)), _event("e2", 5.0, targets=("b",))])
    assert outbox.next_due(["a"]) == 10.0
    assert outbox.next_due(["a", "b"]) == 5.0
    outbox.record_attempt("e2", "b", state="pending", now=6.0, status=None, error="refused",
                          next_attempt_at=40.0)
    assert outbox.next_due(["a", "b"]) == 10.0 and outbox.next_due(["b"]) == 40.0
    outbox.record_attempt("e1", "a", state="delivered", now=11.0, status=200, error=None)
    assert outbox.next_due(["a"]) is None and outbox.next_due(["x"]) is None


def test_next_due_leaves_out_the_attempts_in_flight(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", 1.0), _event("e2", 2.0), _event("e3", 3.0, targets=("b",))])
    assert outbox.next_due(["a", "b"], {"a": ["e1"]}) == 1.0  # e1 is still due to b
    assert outbox.next_due(["a", "b"], {"a": ["e1"], "b": ["e1", "e2"]}) == 2.0
    assert outbox.next_due(["a"], {"a": ["e1", "e2"]}) is None
    assert outbox.next_due(["b"], {"a": ["e3"]}) == 1.0


def test_record_attempt(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", targets=("a", "b", "c"))])
    outbox.record_attempt("e1", "a", state="pending", now=11.0, status=503, error="HTTP 503",
                          next_attempt_at=13.0)
    outbox.record_attempt("e1", "a", state="pending", now=13.5, status=None, error="timeout")
    a = outbox.deliveries(target="a")[0]
    assert (a.state, a.attempts, a.last_attempt_at, a.last_status, a.last_error,
            a.next_attempt_at, a.done_at) == ("pending", 2, 13.5, None, "timeout", 13.0, None)
    outbox.record_attempt("e1", "a", state="delivered", now=14.0, status=200, error=None)
    a = outbox.deliveries(target="a")[0]
    assert (a.state, a.attempts, a.last_status, a.last_error, a.done_at) == \
        ("delivered", 3, 200, None, 14.0)
    outbox.record_attempt("e1", "b", state="dead", now=15.0, status=410, error="HTTP 410: gone")
    b = outbox.deliveries(target="b")[0]
    assert (b.state, b.attempts, b.last_status, b.done_at) == ("dead", 1, 410, 15.0)
    # a finished delivery is not touched again (a late duplicate attempt's record)
    outbox.record_attempt("e1", "a", state="dead", now=16.0, status=500, error="late")
    assert outbox.deliveries(target="a")[0].state == "delivered"
    assert outbox.deliveries(target="a")[0].attempts == 3


def test_counts_and_filters(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", 1.0), _event("e2", 2.0), _event("e3", 3.0, targets=("a",))])
    outbox.record_attempt("e1", "a", state="delivered", now=4.0, status=200, error=None)
    outbox.record_attempt("e2", "a", state="dead", now=4.0, status=404, error="HTTP 404")
    outbox.record_attempt("e1", "b", state="dead", now=4.0, status=404, error="HTTP 404")
    assert outbox.counts() == {("a", "delivered"): 1, ("a", "dead"): 1, ("a", "pending"): 1,
                               ("b", "dead"): 1, ("b", "pending"): 1}
    assert [(d.event_id, d.target) for d in outbox.deliveries(state="dead")] == \
        [("e2", "a"), ("e1", "b")]  # newest event first
    assert [d.target for d in outbox.deliveries(event_id="e1")] == ["a", "b"]
    assert len(outbox.deliveries(limit=2)) == 2


def test_retry_requeues_dead_deliveries_with_a_fresh_budget(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", 1.0), _event("e2", 2.0)])
    for event_id, target in (("e1", "a"), ("e1", "b"), ("e2", "a")):
        outbox.record_attempt(event_id, target, state="dead", now=3.0, status=500, error="x")
    outbox.record_attempt("e2", "b", state="delivered", now=3.0, status=200, error=None)
    assert outbox.retry(event_ids=["e1"], target="b", now=50.0) == 1
    b = outbox.deliveries(event_id="e1", target="b")[0]
    assert (b.state, b.attempts, b.next_attempt_at, b.done_at) == ("pending", 0, 50.0, None)
    assert outbox.retry(now=60.0) == 2  # every dead one left; the delivered one stays
    assert outbox.counts() == {("a", "pending"): 2, ("b", "pending"): 1, ("b", "delivered"): 1}
    assert outbox.retry(now=70.0) == 0


def test_replay_sends_an_event_again_whatever_its_state(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", 1.0, targets=("a",))])
    outbox.record_attempt("e1", "a", state="delivered", now=2.0, status=200, error=None)
    assert outbox.replay(["e1"], ["a", "new"], now=9.0) == 2
    rows = {d.target: d for d in outbox.deliveries(event_id="e1")}
    assert {t: (d.state, d.attempts, d.next_attempt_at, d.done_at) for t, d in rows.items()} == {
        "a": ("pending", 0, 9.0, None), "new": ("pending", 0, 9.0, None)}
    with pytest.raises(KeyError, match="no such event: nope"):
        outbox.replay(["e1", "nope"], ["a"])


def test_two_threads_write_at_once(outbox: Outbox) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(prefix: str) -> None:
        try:
            start.wait()
            for i in range(40):
                outbox.commit({(prefix, "1", f"r{i}"): AlertState(breaching=i)},
                              [_event(f"{prefix}{i}", float(i), targets=("a",))])
                outbox.record_attempt(f"{prefix}{i}", "a", state="delivered", now=float(i),
                                      status=200, error=None)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            outbox.close()

    threads = [threading.Thread(target=write, args=(p,)) for p in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert outbox.counts() == {("a", "delivered"): 80}
    assert len(outbox.load_alerts()) == 80


def test_a_late_result_of_an_attempt_before_a_replay_is_ignored(outbox: Outbox) -> None:
    outbox.commit({}, [_event("e1", targets=("a",))])
    (started,) = outbox.due("a", now=100.0, limit=5)
    outbox.replay(["e1"], ["a"], now=101.0)  # while that attempt is in flight
    outbox.record_attempt("e1", "a", state="delivered", now=102.0, status=200, error=None,
                          round=started.round)
    (row,) = outbox.deliveries(event_id="e1")
    assert (row.state, row.attempts, row.round) == ("pending", 0, started.round + 1)
    outbox.record_attempt("e1", "a", state="delivered", now=103.0, status=200, error=None,
                          round=row.round)
    assert outbox.deliveries(event_id="e1")[0].state == "delivered"


def test_the_cli_offers_the_outbox_states() -> None:
    """`vigil webhooks list --state` takes exactly the states the outbox stores (one tuple,
    no copy in the CLI); another is refused by argparse (exit 2)."""
    from monitoring.outbox import STATES
    from vigil.tools.cli import build_parser

    parser = build_parser()
    for state in STATES:
        assert parser.parse_args(["webhooks", "list", "--state", state]).state == state
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["webhooks", "list", "--state", "stuck"])
    assert exc.value.code == 2
