"""The outbox's retention (age and count; pending events never pruned), its tombstones, the
index-backed queries of a delivery pass, its size figures, and what `vigil webhooks` says of a
pruned event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import monitoring.outbox_retention as outbox_module
from monitoring.outbox import NewEvent, Outbox, Retention
from vigil.tools.cli import main

DAY = 86_400.0
KEEP_A_DAY = Retention(max_age_s=DAY, max_events=1000)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "vigil-outbox.sqlite")
    yield box
    box.close()


def _commit(outbox: Outbox, event_id: str, created_at: float, targets=("a", "b")) -> None:
    body = json.dumps({"id": event_id}).encode()
    outbox.commit({}, [NewEvent(event_id, "vigil.drift.detected", "iris/1", created_at, body,
                                tuple(targets))])


def _finish(outbox: Outbox, event_id: str, at: float, targets=("a", "b"),
            state="delivered") -> None:
    for target in targets:
        outbox.record_attempt(event_id, target, state=state, now=at, status=204, error=None)


def _ids(outbox: Outbox) -> set[str]:
    return {d.event_id for d in outbox.deliveries(limit=10_000)}


def test_age_prunes_finished_events_only(outbox: Outbox) -> None:
    """Older than max_age_s: delivered and dead events go with their deliveries; one with a
    delivery still pending stays whatever its age; one retried and finished lately stays until
    its last delivery is that old; one no target wanted goes by its age."""
    now = 10 * DAY
    _commit(outbox, "delivered", 1.0)
    _finish(outbox, "delivered", 2.0)
    _commit(outbox, "dead", 1.0)
    _finish(outbox, "dead", 2.0, state="dead")
    _commit(outbox, "half", 1.0)
    _finish(outbox, "half", 2.0, targets=("a",))  # b still pending
    _commit(outbox, "retried", 1.0)
    _finish(outbox, "retried", now - 60)  # finished a minute ago
    _commit(outbox, "nobody", 1.0, targets=())
    _commit(outbox, "young", now - 60)
    _finish(outbox, "young", now - 30)
    assert outbox.prune(KEEP_A_DAY, now) == 3
    assert _ids(outbox) == {"half", "retried", "young"}
    assert outbox.event("delivered") is None and outbox.event("nobody") is None
    assert outbox.counts() == {("a", "delivered"): 3, ("b", "pending"): 1,
                               ("b", "delivered"): 2}
    assert outbox.prune(KEEP_A_DAY, now) == 0  # nothing left beyond it


def test_count_prunes_the_oldest_finished_events_never_pending_ones(outbox: Outbox) -> None:
    """More than max_events: the oldest finished events go however recent; pending ones stay,
    so the outbox may hold more than max_events while they wait."""
    for i in range(8):
        _commit(outbox, f"e{i}", 100.0 + i)
        if i != 1:
            _finish(outbox, f"e{i}", 200.0)
    assert outbox.prune(Retention(max_age_s=DAY, max_events=3), now=300.0) == 4
    assert _ids(outbox) == {"e1", "e5", "e6", "e7"}  # e1: pending
    assert outbox.prune(Retention(max_age_s=DAY, max_events=3), now=300.0) == 0


def test_pruning_runs_in_batches_and_resumes(outbox: Outbox, monkeypatch) -> None:
    monkeypatch.setattr(outbox_module, "PRUNE_BATCH", 4)
    for i in range(10):
        _commit(outbox, f"e{i}", 1.0 + i, targets=())
    assert outbox.prune(KEEP_A_DAY, now=10 * DAY, max_batches=2) == 8
    assert outbox.prune(KEEP_A_DAY, now=10 * DAY, max_batches=2) == 2
    assert outbox.size().events == 0


def test_a_pruned_event_leaves_a_bounded_tombstone(outbox: Outbox, monkeypatch) -> None:
    """Its id, creation and pruning time; the newest MAX_TOMBSTONES are kept, the total and
    the retention in force are counted apart."""
    monkeypatch.setattr(outbox_module, "MAX_TOMBSTONES", 3)
    for i in range(5):
        _commit(outbox, f"e{i}", 1.0 + i, targets=())
    assert outbox.pruned("e4") is None and outbox.pruning().events == 0
    outbox.prune(KEEP_A_DAY, now=5 * DAY)
    stone = outbox.pruned("e4")
    assert (stone.id, stone.created_at, stone.pruned_at) == ("e4", 5.0, 5 * DAY)
    assert [outbox.pruned(f"e{i}") is not None for i in range(5)] == [False, False, True, True, True]
    pruning = outbox.pruning()
    assert (pruning.events, pruning.last_at, pruning.retention) == (5, 5 * DAY, KEEP_A_DAY)


def test_size_counts_rows_by_state_and_bytes(outbox: Outbox) -> None:
    _commit(outbox, "e1", 1.0)
    _finish(outbox, "e1", 2.0, targets=("a",))
    size = outbox.size()
    assert (size.events, dict(size.deliveries), size.pruned_events) == \
        (1, {"pending": 1, "delivered": 1, "dead": 0}, 0)
    wal = Path(f"{outbox.path}-wal")
    assert size.bytes == outbox.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    assert outbox.pending() == {"b": 1}


def test_a_delivery_pass_reads_indexes_over_pending_rows(outbox: Outbox) -> None:
    """The queries a pass runs search the deliveries_due index (state first), and pruning finds
    old events through events_created: no scan of every delivery or event ever made. (Counting
    every (target, state) was a scan on each pass.)"""
    db = outbox._db

    def plan(sql: str, *args) -> str:
        return " | ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", args))

    assert "USING COVERING INDEX deliveries_due (state=?)" in plan(
        "SELECT target, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY target")
    assert "INDEX deliveries_due (state=? AND target=? AND next_attempt_at<?)" in plan(
        "SELECT * FROM deliveries d WHERE d.state = 'pending' AND d.target = ? "
        "AND d.next_attempt_at <= ?", "a", 1.0)
    assert "INDEX events_created (created_at<?)" in plan(
        "SELECT e.id FROM events e WHERE e.created_at < ? ORDER BY e.created_at", 1.0)


def test_rows_and_bytes_stay_flat_under_retention(outbox: Outbox, monkeypatch) -> None:
    """200 cycles of 50 events delivered then pruned to the newest 100: rows stay at the bound,
    and the file (with its write-ahead log) stops growing once the tombstones reach theirs
    (300 here), the write-ahead log its high-water mark (about 4 MB, warm by cycle 50) and
    SQLite reuses the freed pages."""
    monkeypatch.setattr(outbox_module, "MAX_TOMBSTONES", 300)
    retention = Retention(max_age_s=DAY, max_events=100)
    sizes = []
    for cycle in range(200):
        t = 1000.0 + cycle
        outbox.commit({}, [NewEvent(f"c{cycle}-{i}", "vigil.drift.detected", "iris/1", t,
                                    b'{"pad": "' + b"x" * 500 + b'"}', ("a",))
                           for i in range(50)])
        with outbox._write() as db:  # 50 record_attempt calls, in one transaction (fast here)
            db.execute("UPDATE deliveries SET state = 'delivered', attempts = 1, done_at = ? "
                       "WHERE state = 'pending'", (t,))
        outbox.prune(retention, now=t)
        sizes.append(outbox.size())
    assert {s.events for s in sizes[2:]} == {100}
    assert sizes[-1].pruned_events == 200 * 50 - 100
    assert sizes[-1].bytes <= sizes[50].bytes * 1.1, (sizes[50].bytes, sizes[-1].bytes)


# ---------------------------------------------------------------- what operators see


@pytest.fixture
def pruned_path(outbox: Outbox) -> Path:
    """e-old pruned (delivered long ago), e-new kept."""
    _commit(outbox, "e-old", 1_700_000_000.0, targets=("a",))
    _finish(outbox, "e-old", 1_700_000_001.0, targets=("a",))
    _commit(outbox, "e-new", 1_700_900_000.0, targets=("a",))
    outbox.prune(Retention(max_age_s=7 * DAY, max_events=1000), now=1_700_900_000.0)
    return outbox.path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_says_an_event_was_pruned(pruned_path: Path, capsys) -> None:
    """`show` of a pruned id: exit 1, saying when and why; of an id never seen: as before,
    with how many were pruned."""
    code, out, err = _run(capsys, "webhooks", "show", "e-old", "--outbox", str(pruned_path))
    assert (code, out) == (1, "")
    assert err == (f"vigil: event e-old was pruned from {pruned_path} at 2023-11-25T08:13:20+00:00 "
                   "(created 2023-11-14T22:13:20+00:00; delivered or dead, beyond the retention: "
                   "kept 7 days, at most 1000 events)\n")
    code, _, err = _run(capsys, "webhooks", "show", "e-nope", "--outbox", str(pruned_path))
    assert code == 1 and err.startswith(f"vigil: no such event in {pruned_path}: e-nope (1 ")
    code, _, err = _run(capsys, "webhooks", "retry", "e-old", "--outbox", str(pruned_path))
    assert code == 1 and "event e-old was pruned" in err


def test_list_says_how_many_were_pruned(pruned_path: Path, capsys) -> None:
    code, out, _ = _run(capsys, "webhooks", "list", "--outbox", str(pruned_path))
    assert code == 0 and "e-new" in out and "e-old" not in out
    assert out.splitlines()[-1] == (
        "(1 delivered or dead events pruned by the outbox's retention: kept 7 days, at most "
        "1000 events, the last at 2023-11-25T08:13:20+00:00)")
    code, out, err = _run(capsys, "webhooks", "list", "--json", "--outbox", str(pruned_path))
    assert [json.loads(line)["event_id"] for line in out.splitlines()] == ["e-new"]
    assert err.startswith("(1 delivered or dead events pruned")
