"""The join store: records in, labels joined with their outcomes, TTL and bound evictions counted,
and what survives a restart (a real SQLite file in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitoring.collector_labels import LabelCollector
from monitoring.columns import layout_for
from monitoring.label_store import LabelStore, Predictions, check_label
from vigil.core.prediction_messages import PredictionMessage

CLASSIFIER = Predictions("label", "probabilities")


def message(ids, at, rows=None, *, version="1", labels=None, probabilities=True):
    rows = rows or [1] * len(ids)
    total = sum(rows)
    outputs = {"label": np.asarray(labels if labels is not None else [i % 2 for i in range(total)],
                                   dtype=np.int64)}
    if probabilities:
        p = np.linspace(0.1, 0.9, total)
        outputs["probabilities"] = np.stack([1 - p, p], axis=1).astype(np.float32)
    return PredictionMessage("m", version, tuple(ids), np.asarray(at, dtype=np.float64),
                             np.asarray(rows, dtype=np.int64), outputs)


def store(tmp_path: Path, ttl_s: float = 100.0, max_pending: int = 1000) -> LabelStore:
    return LabelStore(tmp_path / "labels.sqlite", ttl_s, max_pending)


def outcomes(results) -> list[str]:
    return [r.outcome for r in results]


def test_each_label_is_joined_unknown_duplicate_or_invalid(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.record(message(["a", "b", "c"], [10.0, 11.0, 12.0], [1, 2, 1]), CLASSIFIER, 20.0) == 3
    got = s.label("m", [("a", 1), ("b", [0, 1]), ("zz", 1), ("a", 0), ("c", 2), ("c", "x"),
                        ("c", [1, 1]), ("c", True)], overwrite=False, now=20.0)
    assert outcomes(got) == ["joined", "joined", "unknown_id", "duplicate", "invalid", "invalid",
                             "invalid", "invalid"]
    assert [r.version for r in got] == ["1", "1", "", "1", "1", "1", "1", "1"]
    assert "class index" in got[4].detail and "2 label values" in got[6].detail
    assert s.labels == {("m", "1", "joined"): 2, ("m", "", "unknown_id"): 1,
                        ("m", "1", "duplicate"): 1, ("m", "1", "invalid"): 4}
    # overwrite replaces a label; a duplicate is not stored
    assert outcomes(s.label("m", [("a", 0)], overwrite=True, now=21.0)) == ["joined"]
    rows = s.joined("m", "1", 0.0, 100.0)
    assert rows.served_rows == 4 and rows.labelled_rows == 3
    assert rows.label.tolist() == [0, 0, 1] and rows.prediction.tolist() == [0, 1, 0]
    assert rows.probabilities is not None and rows.probabilities.shape == (3, 2)


def test_labels_of_another_model_do_not_join(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.record(message(["a"], [10.0]), CLASSIFIER, 10.0)
    assert outcomes(s.label("other", [("a", 1)], False, 10.0)) == ["unknown_id"]


@pytest.mark.parametrize(("value", "rows", "kind", "classes", "ok"), [
    (1, 1, "int", None, True), ([1, 2], 2, "int", None, True), (1.0, 1, "int", None, False),
    (True, 1, "int", None, False), ([1], 2, "int", None, False), (3, 1, "int", 3, False),
    (-1, 1, "int", 3, False), (2.5, 1, "float", None, True), (3, 1, "float", None, True),
    (float("nan"), 1, "float", None, False), ("1", 1, "float", None, False),
    (None, 1, "float", None, False), ("cat", 1, "str", None, True), (1, 1, "str", None, False),
    (True, 1, "bool", None, True), (1, 1, "bool", None, False), ({"a": 1}, 1, "int", None, False),
])
def test_a_label_must_fit_the_prediction_in_type_and_arity(value, rows, kind, classes, ok) -> None:
    assert (check_label(value, rows, kind, classes)[1] is None) is ok


def test_expired_predictions_are_evicted_and_counted(tmp_path: Path) -> None:
    s = store(tmp_path, ttl_s=10.0)
    s.record(message(["a", "b"], [100.0, 105.0]), CLASSIFIER, 105.0)
    assert s.evict(112.0) == 1 and s.size == 1
    assert s.evicted[("m", "ttl")] == 1
    assert outcomes(s.label("m", [("a", 1), ("b", 1)], False, 112.0)) == ["unknown_id", "joined"]
    # past its TTL but not yet swept: still unknown
    assert outcomes(s.label("m", [("b", 0)], True, 116.0)) == ["unknown_id"]


def test_the_bound_evicts_the_oldest_and_counts_them(tmp_path: Path) -> None:
    s = store(tmp_path, max_pending=10)
    for start in range(0, 25, 5):
        ids = [f"r{i}" for i in range(start, start + 5)]
        s.record(message(ids, [float(i) for i in range(start, start + 5)]), CLASSIFIER, 30.0)
        assert s.size <= 10
    assert s.size == 10 and s.evicted[("m", "bound")] == 15
    assert outcomes(s.label("m", [("r14", 1), ("r15", 1)], False, 30.0)) == ["unknown_id",
                                                                            "joined"]


def test_an_id_served_again_replaces_its_prediction(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.record(message(["a", "b"], [1.0, 2.0]), CLASSIFIER, 3.0)
    s.label("m", [("a", 1)], False, 3.0)
    s.record(message(["a", "a"], [4.0, 5.0], [2, 1]), CLASSIFIER, 5.0)
    assert s.size == 2 and s.evicted[("m", "replaced")] == 2
    # the newest 'a' (one row) waits for its label again
    assert outcomes(s.label("m", [("a", 0)], False, 6.0)) == ["joined"]


def test_the_store_survives_a_restart(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.record(message(["a", "b"], [1.0, 2.0]), CLASSIFIER, 3.0)
    s.label("m", [("a", 1)], False, 3.0)
    s.close()
    again = store(tmp_path)
    assert again.size == 2
    assert outcomes(again.label("m", [("a", 0), ("b", 0)], False, 4.0)) == ["duplicate", "joined"]
    assert again.joined("m", "1", 0.0, 10.0).label.tolist() == [1, 0]


def test_records_without_the_declared_prediction_are_skipped_and_counted(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.record(message(["a"], [1.0]), None, 1.0) == 0
    assert s.record(message(["a"], [1.0]), Predictions("missing"), 1.0) == 0
    assert s.skipped[("m", "no_prediction")] == 2 and s.size == 0


def test_a_regression_keeps_no_probabilities(tmp_path: Path) -> None:
    s = store(tmp_path)
    m = PredictionMessage("m", "1", ("a", "b"), np.array([1.0, 2.0]), np.array([1, 1]),
                          {"y": np.array([1.5, 2.5], dtype=np.float32)})
    s.record(m, Predictions("y"), 2.0)
    assert outcomes(s.label("m", [("a", 2), ("b", "2")], False, 3.0)) == ["joined", "invalid"]
    rows = s.joined("m", "1", 0.0, 10.0)
    assert rows.kind == "float" and rows.label.tolist() == [2.0] and rows.probabilities is None


def test_prediction_outputs_come_from_the_profiles_declared_outputs() -> None:
    layout = layout_for([("input", [-1, 3])], [("label", [-1]), ("probabilities", [-1, 2])])
    assert Predictions.of(layout, ["label", "probabilities_0", "probabilities_1"]) == CLASSIFIER
    assert Predictions.of(layout, ["label"]) == Predictions("label")
    assert Predictions.of(layout, ["probabilities_0", "probabilities_1"]) is None
    assert Predictions.of(None, ["label"]) is None


def test_the_collector_counts_every_outcome_and_eviction(tmp_path: Path) -> None:
    s = store(tmp_path, ttl_s=5.0)
    s.record(message(["a", "b"], [1.0, 2.0]), CLASSIFIER, 2.0)
    s.label("m", [("a", 1), ("x", 1)], False, 2.0)
    s.evict(6.5)
    families = {f.name: f for f in LabelCollector(s).collect()}
    labels = {(x.labels["version"], x.labels["outcome"]): x.value
              for x in families["vigil_feedback_labels"].samples if x.name.endswith("_total")}
    assert labels[("1", "joined")] == 1 and labels[("", "unknown_id")] == 1
    assert labels[("1", "duplicate")] == 0
    evicted = {x.labels["reason"]: x.value for x in families["vigil_feedback_evicted"].samples
               if x.name.endswith("_total")}
    assert evicted == {"ttl": 1.0, "bound": 0.0, "replaced": 0.0}
    assert families["vigil_feedback_predictions"].samples[0].value == 1.0
