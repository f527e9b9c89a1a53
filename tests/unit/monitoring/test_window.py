"""Tumbling windows: row and time bounds, roll-over, facts, empty windows, history, reconfigure."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.profile import build_profile
from monitoring.settings import MonitorSettings
from monitoring.window import RowKeys, TumblingWindow, empty_columns

NO_FACTS = (np.empty(0), np.empty(0, np.int16))


@pytest.fixture(scope="module")
def profile():
    return build_profile({"x": np.arange(10.0), "c": np.array(["a", "b"] * 5)})


def _settings(rows=None, seconds=None, **kw) -> MonitorSettings:
    return MonitorSettings(window={"rows": rows, "seconds": seconds}, **kw)


def _rows(start: int, n: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n, dtype=np.float64), "c": np.array(["a", "b"] * n)[:n]}


def test_rows_beyond_the_bound_roll_into_the_next_windows(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=4), now=0.0)
    closed = window.add(_rows(0, 10), 10, np.array([0.1, 0.2, 0.3]), np.array([200] * 3), now=1.0)
    assert [(w.index, w.rows, w.requests, w.reason) for w in closed] == [
        (1, 4, 3, "rows"), (2, 4, 0, "rows")  # facts go to the window open on arrival
    ]
    assert [w.result.rows for w in closed] == [4, 4]
    assert window.last_rows["x"].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert window.last_rows_window is closed[1]
    assert (closed[1].opened_at, closed[1].closed_at, window.opened_at) == (1.0, 1.0, 1.0)
    assert window.rows == 2
    third = window.reconfigure(_settings(rows=4), now=2.0)
    assert third.index == 3 and window.last_rows_window is third
    assert window.last_rows["x"].tolist() == [8.0, 9.0]


def test_kept_rows_are_copies_not_views_of_the_batch(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=100), now=0.0)
    batch = _rows(0, 3)
    window.add(batch, 3, *NO_FACTS, now=0.0)
    batch["x"][:] = -1.0
    window.reconfigure(_settings(rows=100), now=1.0)
    assert window.last_rows["x"].tolist() == [0.0, 1.0, 2.0]


def test_the_rows_kept_are_those_of_the_last_window_that_had_rows(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=2, seconds=10.0), now=0.0)
    assert (window.last_rows, window.last_rows_window) == (None, None)
    assert window.closes_when(4.0) == "the open window (0 rows) closes after 2 more sampled rows or in 6 s"
    (first,) = window.add(_rows(0, 2), 2, *NO_FACTS, now=1.0)
    empty = window.tick(11.5)  # closes empty: the rows kept stay those of window 1
    assert (first.index, empty.index, empty.rows) == (1, 2, 0)
    assert window.last_rows_window is first and window.last_rows["x"].tolist() == [0.0, 1.0]
    window.reconfigure(_settings(rows=5, seconds=None), now=12.0)
    window.add(_rows(0, 1), 1, *NO_FACTS, now=12.0)
    assert window.closes_when(99.0) == "the open window (1 rows) closes after 4 more sampled rows"


def test_a_window_closes_on_time_then_empty_ones_follow(profile) -> None:
    window = TumblingWindow(profile, _settings(seconds=10.0), now=0.0)
    assert window.add(_rows(0, 2), 2, *NO_FACTS, now=1.0) == []
    assert window.tick(9.9) is None
    first = window.tick(10.0)
    assert (first.reason, first.rows, first.opened_at, first.closed_at) == ("time", 2, 0.0, 10.0)
    empty = window.tick(20.0)
    assert (empty.index, empty.rows, empty.requests, empty.reason) == (2, 0, 0, "time")
    drift, quality = empty.result.drift, empty.result.quality
    assert (drift.tested, drift.drifted, drift.share_drifted, drift.dataset_drift) == (0, 0, 0.0, False)
    assert drift.prediction_drift is None
    assert {c.status for c in drift.features} == {"empty_window"}
    assert quality.violations == ()  # empty, not "missing columns"
    assert (empty.latency.count, empty.latency.p50, empty.latency.error_ratio) == (0, None, 0.0)


def test_a_late_batch_first_closes_the_window_whose_time_is_up(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=100, seconds=10.0), now=0.0)
    window.add(_rows(0, 3), 3, *NO_FACTS, now=1.0)
    closed = window.add(_rows(3, 2), 2, *NO_FACTS, now=25.0)
    assert [(w.rows, w.reason, w.closed_at) for w in closed] == [(3, "time", 25.0)]
    assert (window.rows, window.opened_at) == (2, 25.0)


def test_buffer_rows_caps_a_time_only_window(profile) -> None:
    window = TumblingWindow(profile, _settings(seconds=60.0, buffer_rows=3), now=0.0)
    assert window.row_limit == 3
    closed = window.add(_rows(0, 7), 7, *NO_FACTS, now=0.0)
    assert [w.rows for w in closed] == [3, 3] and window.rows == 1


def test_latency_and_errors_of_a_window_are_exact(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=1), now=0.0)
    latency = np.array([0.1, 0.2, 0.3, 0.4, 0.25])
    (closed,) = window.add(_rows(0, 1), 1, latency, np.array([200, 500, 404, 0, 499]), now=0.0)
    stats = closed.latency
    assert (stats.count, stats.errors, stats.client_errors, stats.cancelled) == (5, 2, 1, 1)
    assert (stats.error_ratio, stats.client_error_ratio, stats.cancelled_ratio) == (0.4, 0.2, 0.2)
    assert stats.p50 == pytest.approx(0.25) and stats.p99 == pytest.approx(0.396)
    assert (stats.mean, stats.max) == (pytest.approx(0.25), 0.4)


def test_request_facts_are_bounded_counts_stay_exact(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=1), now=0.0, max_requests=4)
    for start in (1, 6):  # 10 facts over two batches, 4 kept
        latency = np.arange(start, start + 5, dtype=np.float64)
        window.add(None, 0, latency, np.array([200, 200, 200, 200, 503]), now=0.0)
    assert window._kept == 4 and window._latency.size == 4
    (closed,) = window.add(_rows(0, 1), 1, *NO_FACTS, now=0.0)
    stats = closed.latency
    assert (stats.count, stats.errors, stats.error_ratio) == (10, 2, 0.2)
    assert (stats.mean, stats.max) == (5.5, 10.0)
    assert 1.0 <= stats.p50 <= 10.0


def test_history_keeps_the_last_k_windows(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=1, history=2), now=0.0)
    window.add(_rows(0, 3), 3, *NO_FACTS, now=0.0)
    assert [w.index for w in window.history] == [2, 3] and window.closed == 3
    assert window.latest.index == 3


def test_reconfigure_closes_a_started_window_under_the_old_settings(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=10, history=5), now=0.0)
    window.add(_rows(0, 3), 3, *NO_FACTS, now=1.0)
    closed = window.reconfigure(_settings(rows=2, history=1), now=2.0)
    assert (closed.rows, closed.reason, closed.closed_at) == (3, "reconfigure", 2.0)
    assert window.row_limit == 2 and window.history.maxlen == 1
    assert window.reconfigure(_settings(rows=5), now=3.0) is None  # empty: only the clock restarts
    assert (window.opened_at, window.closed) == (3.0, 1)


def test_without_a_profile_rows_are_counted_only(profile) -> None:
    window = TumblingWindow(None, _settings(rows=2), now=0.0)
    (closed,) = window.add(None, 2, np.array([0.5]), np.array([200]), now=0.0)
    assert (closed.rows, closed.result, closed.error, closed.latency.p50) == (2, None, None, 0.5)
    assert window.last_rows is None


def test_a_window_that_cannot_be_evaluated_records_why(profile) -> None:
    settings = MonitorSettings(
        window={"rows": 2, "seconds": None}, overrides={"c": {"method": "ks"}}
    )
    window = TumblingWindow(profile, settings, now=0.0)
    (closed,) = window.add(_rows(0, 2), 2, *NO_FACTS, now=0.0)
    assert closed.result is None
    assert closed.error == "ValueError: ks needs a numeric column; 'c' is categorical"


def test_empty_columns_match_the_profile(profile) -> None:
    columns = empty_columns(profile)
    assert {k: (v.dtype.kind, v.size) for k, v in columns.items()} == {"x": ("f", 0), "c": ("U", 0)}


def test_to_dict_summary_leaves_out_the_columns(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=2), now=0.0)
    (closed,) = window.add(_rows(0, 2), 2, *NO_FACTS, now=0.0)
    full, summary = closed.to_dict(), closed.to_dict(detail=False)
    assert [c["name"] for c in full["drift"]["features"]] == ["x", "c"]
    assert "features" not in summary["drift"] and "columns" not in summary["quality"]
    assert summary["drift"]["drifted_features"] == full["drift"]["drifted_features"]


def test_a_failed_column_is_in_the_json_with_its_reason(profile) -> None:
    window = TumblingWindow(profile, _settings(rows=2), now=0.0)
    unhashable = np.empty(2, dtype=object)
    unhashable[:] = [["a"], "b"]
    (closed,) = window.add({"x": np.array([1.0, 2.0]), "c": unhashable}, 2, *NO_FACTS, now=0.0)
    assert closed.result is not None and closed.error is None  # the window is evaluated
    reason = "TypeError: unhashable type: 'list'"
    full, summary = closed.to_dict(), closed.to_dict(detail=False)
    assert full["failed_columns"] == summary["failed_columns"] == {"c": reason}
    x, c = full["drift"]["features"]
    assert (x["status"], x["error"]) == ("tested", None)
    assert (c["status"], c["error"], c["score"], c["drifted"]) == ("failed", reason, None, False)
    assert full["quality"]["columns"][1]["error"] == reason
    assert (summary["drift"]["tested"], summary["drift"]["share_drifted"]) == (1, 0.0)


def test_summary_is_the_window_in_brief(profile) -> None:
    """One summary of a closed window (which, when, how much, and the figures a rollback rests
    on) for the audit log and the events, rather than a dict written in each."""
    window = TumblingWindow(profile, _settings(rows=2), now=5.0)
    (closed,) = window.add(_rows(0, 2), 2, np.array([0.1, 0.3]), np.array([200, 500]), now=7.0,
                           agreement=(1, 4))
    assert closed.summary() == {
        "index": 1, "opened_at": 5.0, "closed_at": 7.0, "rows": 2, "requests": 2,
        "error_ratio": 0.5, "latency_p99_s": pytest.approx(0.298), "shadow_agreement": 0.25,
    }


def test_bad_facts_are_refused_when_added_not_when_the_window_closes(profile) -> None:
    """A negative latency or float status codes raise ValueError in add(), before the window
    holds them (they used to raise at the close, taking the window's rows with them)."""
    window = TumblingWindow(profile, _settings(rows=2), now=0.0)
    with pytest.raises(ValueError, match="negative"):
        window.add(_rows(0, 1), 1, np.array([-0.1]), np.array([200]), now=0.0)
    with pytest.raises(ValueError, match="integers"):
        window.add(_rows(0, 1), 1, np.array([0.1]), np.array([200.0]), now=0.0)
    assert (window.rows, window.requests) == (0, 0)
    (closed,) = window.add(_rows(0, 2), 2, np.array([0.1]), np.array([200]), now=1.0)
    assert closed.latency.count == 1


def _keys(ids: list, positions: list) -> RowKeys:
    array = np.empty(len(ids), dtype=object)
    array[:] = ids
    return RowKeys(array, np.array(positions, dtype=np.int64))


def test_each_row_keeps_its_request_id_and_position_beside_the_columns(profile) -> None:
    """The ids roll over with their rows, stay out of the columns (no statistic sees them) and
    are kept with the last closed window's rows; rows added without keys are unknown."""
    window = TumblingWindow(profile, _settings(rows=4), now=0.0)
    keys = _keys(["a", "a", "b", None, "c", "c"], [0, 1, 0, 0, 3, 1])
    (first,) = window.add(_rows(0, 6), 6, *NO_FACTS, now=1.0, keys=keys)
    assert window.last_rows_window is first and set(window.last_rows) == {"x", "c"}
    assert window.last_keys.ids.tolist() == ["a", "a", "b", None]
    assert window.last_keys.positions.tolist() == [0, 1, 0, 0]
    (second,) = window.add(_rows(6, 2), 2, *NO_FACTS, now=2.0)  # a message without ids
    assert window.last_rows_window is second
    assert window.last_keys.ids.tolist() == ["c", "c", None, None]
    assert window.last_keys.positions.tolist() == [3, 1, -1, -1]
    keys.ids[:] = "changed"  # kept as copies
    assert window.last_keys.ids.tolist() == ["c", "c", None, None]
    with pytest.raises(ValueError, match="keys for"):
        window.add(_rows(0, 2), 2, *NO_FACTS, now=3.0, keys=_keys(["a"], [0]))


def test_row_keys_from_a_messages_run_length_form() -> None:
    keys = RowKeys.of_requests(("a", None, "b"), np.array([2, 1, 2]), np.array([0, 1, 0, 3, 4]))
    assert keys.ids.tolist() == ["a", "a", None, "b", "b"]
    assert keys.positions.tolist() == [0, 1, 0, 3, 4]
    assert RowKeys.of_requests((), None, None) is None
