"""Model quality from ground-truth labels (the labels' quality, not the data's: that is
monitoring.quality): classification and regression metrics over joined rows, computed as
scikit-learn computes them, to the last bit (tests compare with `==`).

Pure functions over numpy arrays. Undefined values are None, never NaN: ROC AUC with one class
present, R² of a constant target with errors, any metric of no rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.integrate import trapezoid

CLASSIFICATION = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss", "roc_auc")
REGRESSION = ("mae", "rmse", "mape", "r2")
LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse", "mape"})


def classification_quality(label: np.ndarray, prediction: np.ndarray,
                           probabilities: np.ndarray | None = None) -> dict[str, Any]:
    """accuracy, precision/recall/F1 (macro over the classes seen in labels or predictions, and
    per class under "classes", with scikit-learn's zero_division=0), and, with probabilities
    (rows x classes, class c in column c), log loss and ROC AUC (binary: of column 1; more
    classes: one-vs-rest, macro)."""
    label, prediction = np.asarray(label), np.asarray(prediction)
    if not label.size:
        return {name: None for name in CLASSIFICATION} | {"classes": {}}
    classes = np.unique(np.concatenate([label, prediction]))
    tp = np.array([np.sum((label == c) & (prediction == c)) for c in classes])
    predicted = np.array([np.sum(prediction == c) for c in classes])
    true = np.array([np.sum(label == c) for c in classes])
    precision, recall = _divide(tp, predicted), _divide(tp, true)
    f1 = _divide(2.0 * tp.astype(np.float64), true.astype(np.float64) + predicted)
    result: dict[str, Any] = {
        "accuracy": float(np.average(label == prediction)),
        "precision_macro": float(np.average(precision)),
        "recall_macro": float(np.average(recall)),
        "f1_macro": float(np.average(f1)),
        "log_loss": None,
        "roc_auc": None,
        "classes": {_name(c): {"precision": float(p), "recall": float(r), "f1": float(f),
                               "support": int(n)}
                    for c, p, r, f, n in zip(classes, precision, recall, f1, true, strict=True)},
    }
    if probabilities is not None and label.dtype.kind in "iu":
        probabilities = np.asarray(probabilities, dtype=np.float64)
        result["log_loss"] = log_loss(label, probabilities)
        result["roc_auc"] = roc_auc(label, probabilities)
    return result


def _name(value: Any) -> str:
    """A class as a JSON key: 1, not 'np.int64(1)'."""
    return str(value.item() if isinstance(value, np.generic) else value)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0.0 where the denominator is 0 (sklearn's _prf_divide)."""
    zero = denominator == 0.0
    denominator = np.where(zero, 1, denominator)
    result = numerator / denominator
    result[zero] = 0.0
    return result


def log_loss(label: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean negative log-likelihood of each row's true class, probabilities clipped to
    [eps, 1 - eps] as sklearn's log_loss(labels=range(classes)) does."""
    eps = np.finfo(probabilities.dtype).eps
    clipped = np.clip(probabilities, eps, 1 - eps)
    return float(np.average(-np.log(clipped[np.arange(label.size), label])))


def roc_auc(label: np.ndarray, probabilities: np.ndarray) -> float | None:
    """sklearn's roc_auc_score: binary on column 1 with two columns, else one-vs-rest macro over
    the columns; None when a class (binary) or any column's class (one-vs-rest) has no row of
    its own or of the rest."""
    if probabilities.shape[1] == 2:
        return _binary_auc(label == 1, probabilities[:, 1])
    scores = [_binary_auc(label == c, probabilities[:, c]) for c in range(probabilities.shape[1])]
    if any(s is None for s in scores):
        return None
    return float(np.average(np.asarray(scores, dtype=np.float64)))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """The area under the ROC curve as sklearn's roc_curve (drop_intermediate) and auc make it."""
    if positive.all() or not positive.any():
        return None
    order = np.argsort(score, kind="stable")[::-1]
    score, truth = score[order], positive[order].astype(np.float64)
    thresholds = np.concatenate([np.nonzero(np.diff(score))[0], [truth.size - 1]])
    tps = np.cumsum(truth, dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    if fps.shape[0] > 2:
        keep = np.nonzero(np.concatenate(
            [[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]]))[0]
        fps, tps = fps[keep], tps[keep]
    tps, fps = np.concatenate([[0.0], tps]), np.concatenate([[0.0], fps])
    return float(trapezoid(tps / tps[-1], fps / fps[-1]))


def regression_quality(label: np.ndarray, prediction: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE, MAPE (relative to max(|label|, float64 eps), as a fraction) and R², as
    sklearn's single-output metrics compute them; R² of a constant label is 1.0 when every
    prediction is exact and None otherwise (sklearn's force_finite gives 0.0)."""
    if not np.asarray(label).size:
        return {name: None for name in REGRESSION}
    y = np.asarray(label, dtype=np.float64).reshape(-1, 1)
    p = np.asarray(prediction, dtype=np.float64).reshape(-1, 1)
    mae = np.average(np.average(np.abs(p - y), axis=0))
    rmse = np.average(np.sqrt(np.average((y - p) ** 2, axis=0)))
    mape = np.average(np.average(np.abs(p - y) / np.maximum(np.abs(y), np.finfo(np.float64).eps),
                                 axis=0))
    numerator = (1.0 * (y - p) ** 2).sum(axis=0)
    denominator = (1.0 * (y - np.average(y, axis=0)) ** 2).sum(axis=0)
    r2: float | None
    if denominator[0] != 0:
        r2 = float(np.average(1 - numerator / denominator))
    else:
        r2 = 1.0 if numerator[0] == 0 else None
    return {"mae": float(mae), "rmse": float(rmse), "mape": float(mape), "r2": r2}
