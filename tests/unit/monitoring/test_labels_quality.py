"""Quality from labels equals scikit-learn's, exactly (`==` on floats), on many random sets of
rows: binary and multiclass classifiers with probabilities, regressions; plus the cases sklearn
leaves undefined, which are None here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics

from monitoring.labels_quality import classification_quality, regression_quality


def _probabilities(rng: np.random.Generator, rows: int, classes: int) -> np.ndarray:
    raw = rng.random((rows, classes))
    if classes == 2:  # p and 1 - p: rows that sum to 1 exactly, as sklearn checks
        raw[:, 0] = 1.0 - raw[:, 1]
        return raw
    raw /= raw.sum(axis=1, keepdims=True)
    return raw


def _sk_classification(y, pred, proba, classes):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, n = metrics.precision_recall_fscore_support(y, pred, average=None,
                                                             zero_division=0)
        expected = {
            "accuracy": metrics.accuracy_score(y, pred),
            "precision_macro": metrics.precision_score(y, pred, average="macro", zero_division=0),
            "recall_macro": metrics.recall_score(y, pred, average="macro", zero_division=0),
            "f1_macro": metrics.f1_score(y, pred, average="macro", zero_division=0),
            "log_loss": metrics.log_loss(y, proba, labels=list(range(classes))),
            "roc_auc": (metrics.roc_auc_score(y, proba[:, 1]) if classes == 2 else
                        metrics.roc_auc_score(y, proba, multi_class="ovr",
                                              labels=list(range(classes)))),
        }
    return expected, (p, r, f, n)


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("seed", range(12))
def test_classification_equals_scikit_learn_exactly(classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(5, 400))
    y = rng.integers(0, classes, rows)
    y[:classes] = np.arange(classes)  # every class present: AUC is defined
    proba = _probabilities(rng, rows, classes)
    if seed % 3 == 0:  # tied scores: thresholds that group rows
        proba = np.round(proba, 1)
        if classes == 2:
            proba[:, 0] = 1.0 - proba[:, 1]
        else:
            proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    if seed % 4 == 1:  # a class predicted that no label has, and one never predicted
        pred[pred == 0] = 1
    got = classification_quality(y, pred, proba)
    expected, (p, r, f, n) = _sk_classification(y, pred, proba, classes)
    for name, value in expected.items():
        assert got[name] == value, (name, got[name], value)
    seen = np.unique(np.concatenate([y, pred]))
    assert list(got["classes"]) == [str(c) for c in seen]
    for i, c in enumerate(seen):
        per = got["classes"][str(c)]
        assert (per["precision"], per["recall"], per["f1"], per["support"]) == (p[i], r[i], f[i],
                                                                               n[i])


def test_classification_edge_cases() -> None:
    empty = classification_quality(np.array([], int), np.array([], int))
    assert empty["accuracy"] is None and empty["classes"] == {}
    one_class = classification_quality(np.array([1, 1]), np.array([1, 0]),
                                       np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert one_class["roc_auc"] is None  # sklearn: undefined with one class present
    assert one_class["accuracy"] == 0.5
    # probabilities of exactly 0 or 1 are clipped, as sklearn clips them
    sure = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert classification_quality(np.array([1, 1]), np.array([0, 1]), sure)["log_loss"] == (
        metrics.log_loss([1, 1], sure, labels=[0, 1]))
    # strings: no probabilities
    words = classification_quality(np.array(["a", "b"], object), np.array(["a", "a"], object))
    assert words["accuracy"] == 0.5 and words["log_loss"] is None


@pytest.mark.parametrize("seed", range(20))
def test_regression_equals_scikit_learn_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(2, 500))
    y = rng.normal(10.0 * seed, 1.0 + seed, rows)
    if seed % 5 == 0:
        y[0] = 0.0  # MAPE's epsilon
    pred = (y + rng.normal(0.0, 1.0, rows)).astype(np.float32).astype(np.float64)
    got = regression_quality(y, pred)
    assert got["mae"] == metrics.mean_absolute_error(y, pred)
    assert got["rmse"] == metrics.root_mean_squared_error(y, pred)
    assert got["mape"] == metrics.mean_absolute_percentage_error(y, pred)
    assert got["r2"] == metrics.r2_score(y, pred)


def test_regression_edge_cases() -> None:
    assert regression_quality(np.array([]), np.array([]))["mae"] is None
    assert regression_quality(np.array([2.0, 2.0]), np.array([2.0, 2.0]))["r2"] == 1.0
    assert regression_quality(np.array([2.0, 2.0]), np.array([1.0, 2.0]))["r2"] is None
