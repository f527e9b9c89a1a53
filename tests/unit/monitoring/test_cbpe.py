"""monitoring.cbpe: the isotonic calibrator against scikit-learn's, the estimates pinned on tiny
hand-built inputs, and the calibration's round trip through its profile form."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from monitoring.cbpe import (
    Calibration,
    Isotonic,
    estimate,
    expected_auc,
    fit_calibration,
    fit_isotonic,
)


@pytest.mark.parametrize("rows", [1, 2, 7, 60, 2000])
def test_isotonic_is_scikit_learns(rows: int) -> None:
    rng = np.random.default_rng(rows)
    scores = rng.random(rows).astype(np.float32).astype(np.float64)
    scores[: rows // 3] = np.round(scores[: rows // 3], 2)  # ties, pooled as scikit-learn does
    truth = (rng.random(rows) < scores).astype(np.float64)
    theirs = IsotonicRegression(out_of_bounds="clip").fit(scores, truth)
    ours = fit_isotonic(scores, truth)
    np.testing.assert_array_equal(ours.x, theirs.X_thresholds_)
    np.testing.assert_allclose(ours.y, theirs.y_thresholds_, rtol=0, atol=1e-15)
    probe = np.linspace(-0.5, 1.5, 1001)
    np.testing.assert_allclose(ours(probe), theirs.predict(probe), rtol=0, atol=1e-15)


def test_isotonic_pins_a_hand_built_fit() -> None:
    # 0.1:0  0.2:1  0.3:0  0.4:1 -> pool 0.2 and 0.3 into 0.5; breakpoints only
    fitted = fit_isotonic(np.array([0.4, 0.1, 0.3, 0.2]), np.array([1, 0, 0, 1]))
    assert fitted.x.tolist() == [0.1, 0.2, 0.3, 0.4]
    assert fitted.y.tolist() == [0.0, 0.5, 0.5, 1.0]
    assert fitted(np.array([0.0, 0.15, 0.25, 0.35, 9.0])).tolist() == pytest.approx(
        [0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-15)
    constant = fit_isotonic(np.array([0.3, 0.3]), np.array([1, 0]))
    assert constant(np.array([0.0, 1.0])).tolist() == [0.5, 0.5]


def test_binary_estimates_pinned_by_hand() -> None:
    # identity calibration: the probabilities are taken as they are
    identity = Calibration(2, (Isotonic(np.array([0.0, 1.0]), np.array([0.0, 1.0])),), {})
    p1 = np.array([0.9, 0.8, 0.4, 0.1])
    pred = np.array([1, 1, 0, 0])
    got = estimate(identity, pred, np.column_stack([1 - p1, p1]))
    # right with 0.9, 0.8, 0.6, 0.9
    assert got["accuracy"] == pytest.approx(3.2 / 4, abs=1e-15)
    tp, fp, fn = 1.7, 0.3, 0.5
    assert got["f1"] == pytest.approx(tp / (tp + (fp + fn) / 2), abs=1e-15)
    tn, fn0, fp0 = 1.5, 0.3, 0.5  # class 0's own counts
    f1_0 = tn / (tn + (fn0 + fp0) / 2)
    assert got["f1_macro"] == pytest.approx((got["f1"] + f1_0) / 2, abs=1e-15)
    # ranked 0.9, 0.8, 0.4, 0.1: expected curve through (0,0) (.1/1.8, .9/2.2) (.3/1.8, 1.7/2.2)
    # (.9/1.8, 2.1/2.2) (1, 1)
    fpr = np.array([0, 0.1, 0.3, 0.9, 1.8]) / 1.8
    tpr = np.array([0, 0.9, 1.7, 2.1, 2.2]) / 2.2
    assert got["roc_auc"] == pytest.approx(float(np.trapezoid(tpr, fpr)), abs=1e-15)


def test_calibration_changes_the_estimate() -> None:
    # the model says 0.9 where only half are right: calibrated, it is 0.5
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.1, 0.1])
    labels = np.array([1, 0, 1, 0, 0, 0])
    calibration = fit_calibration(np.column_stack([1 - scores, scores]), labels)
    got = estimate(calibration, np.array([1, 1]), np.array([[0.1, 0.9], [0.1, 0.9]]))
    assert got["accuracy"] == 0.5 and got["roc_auc"] is not None


def test_ties_are_one_threshold_and_undefined_auc_is_none() -> None:
    assert expected_auc(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == 0.5
    assert expected_auc(np.array([0.2, 0.7]), np.array([1.0, 1.0])) is None  # no negative
    identity = Calibration(2, (Isotonic(np.array([0.0, 1.0]), np.array([0.0, 1.0])),), {})
    assert estimate(identity, np.array([], np.int64), np.empty((0, 2))) == {
        "accuracy": None, "f1": None, "f1_macro": None, "roc_auc": None}


def test_multiclass_calibrates_each_column_and_renormalises() -> None:
    rng = np.random.default_rng(3)
    raw = rng.dirichlet([1, 1, 1], size=300)
    labels = np.array([rng.choice(3, p=row) for row in raw])
    calibration = fit_calibration(raw, labels)
    assert calibration.classes == 3 and len(calibration.calibrators) == 3
    calibrated = calibration.calibrate(raw)
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0)
    pred = raw.argmax(axis=1)
    got = estimate(calibration, pred, raw)
    assert got["f1"] is None
    assert got["accuracy"] == pytest.approx(float(np.mean(calibrated[np.arange(300), pred])))
    assert 0 < got["f1_macro"] < 1 and 0.5 < got["roc_auc"] < 1


def test_calibration_round_trips_through_json_and_refuses_bad_points() -> None:
    scores = np.linspace(0.05, 0.95, 40)
    labels = (np.arange(40) % 3 == 0).astype(np.int64)
    calibration = fit_calibration(np.column_stack([1 - scores, scores]), labels,
                                  {"output": "probabilities", "rows": 40})
    doc = json.loads(json.dumps(calibration.to_dict(), allow_nan=False))
    again = Calibration.from_dict(doc)
    assert again.meta == {"output": "probabilities", "rows": 40}
    np.testing.assert_array_equal(again.calibrators[0].x, calibration.calibrators[0].x)
    for bad in ({**doc, "method": "sigmoid"}, {**doc, "classes": 3},
                {**doc, "points": [{"x": [0.2, 0.1], "y": [0.0, 1.0]}]},
                {**doc, "points": [{"x": [0.1, 0.2], "y": [1.0, 0.0]}]}):
        with pytest.raises(ValueError):
            Calibration.from_dict(bad)
    with pytest.raises(ValueError, match="class indices"):
        fit_calibration(np.column_stack([1 - scores, scores]), labels + 5)
