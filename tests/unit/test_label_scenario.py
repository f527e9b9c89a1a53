"""The label scenario's judgement (load_tests.label_scenario): it passes only when quality_drop
fired after the labelling rule flipped and no drift rule fired; its windows are phased by the
flip."""

from __future__ import annotations

import numpy as np

from load_tests.label_scenario import Traffic, monitor_user_config, verdict, window_rows
from monitoring.settings import MonitorSettings


def _states(quality: float | None, drift: float | None = None, prediction: float | None = None):
    return {"quality-drop": {"last_fired_at": quality},
            "dataset-drift": {"last_fired_at": drift},
            "prediction-drift": {"last_fired_at": prediction}}


def test_it_passes_only_on_a_quality_drop_after_the_flip_with_quiet_drift_rules() -> None:
    assert verdict(_states(110.0), flipped_at=100.0) == (
        True, "quality-drop fired on concept drift; the drift rules stayed quiet")
    assert not verdict(_states(None), 100.0)[0]
    assert "after the flip" in verdict(_states(90.0), 100.0)[1]  # fired on clean labels
    assert "dataset-drift" in verdict(_states(110.0, drift=50.0), 100.0)[1]
    assert "prediction-drift" in verdict(_states(110.0, prediction=120.0), 100.0)[1]
    assert "never flipped" in verdict(_states(110.0), None)[1]


def test_windows_are_phased_by_the_flip() -> None:
    doc = {"windows": [
        {"index": 2, "opened_at": 15.0, "closed_at": 30.0, "rows": 300,
         "drift": {"share_drifted": 0.1, "dataset_drift": False, "prediction_drift": False},
         "labels": {"labelled_rows": 250, "served_rows": 300, "settled": True,
                    "metrics": {"accuracy": 0.6}, "reference": {"accuracy": 0.96}}},
        {"index": 1, "opened_at": 0.0, "closed_at": 15.0, "rows": 300, "drift": None,
         "labels": None},
        {"index": 3, "opened_at": 30.0, "closed_at": 45.0, "rows": 10, "drift": None},
    ]}
    rows = window_rows(doc, flipped_at=20.0)
    assert [(r["window"], r["phase"]) for r in rows] == [(1, "clean"), (2, "mixed"),
                                                         (3, "flipped")]
    assert (rows[1]["accuracy"], rows[1]["reference_accuracy"]) == (0.6, 0.96)
    assert rows[0]["accuracy"] is None and rows[2]["labelled_rows"] is None


def test_the_flip_changes_the_truth_of_the_subpopulation_only() -> None:
    traffic = Traffic("http://127.0.0.1:9")
    rows = np.arange(len(traffic.x))
    clean = np.array(traffic.truth(rows))
    traffic.flipped = True
    flipped = np.array(traffic.truth(rows))
    inside = traffic.x[:, 0] > traffic.flip_from
    assert (flipped[inside] == 1 - clean[inside]).all() and (flipped[~inside] == clean[~inside]).all()
    assert 0.3 < inside.mean() < 0.5


def test_its_monitor_config_is_valid() -> None:
    settings = MonitorSettings(**monitor_user_config())
    assert [r.when.family for r in settings.alerts] == ["labels", "drift", "drift"]
