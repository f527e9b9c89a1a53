"""Quality before labels: a classifier's accuracy, F1 and ROC AUC estimated from its own class
probabilities, once they are calibrated (confidence-based performance estimation, CBPE, as
NannyML defines it).

The calibration is fitted where true labels exist, on the version's held-out set at publish time
(vigil.tools.profiles), and stored in its profile as the points of an isotonic regression:
`fit_calibration` there, `Calibration.from_dict` in the monitor, never a fit at serving time.
With calibrated probabilities p, a row predicted as class c is right with probability p[c], so
the expected confusion matrix of a window, and every metric built from it, follow from the
probabilities alone:

- accuracy: the mean of p[predicted class];
- F1 of class c: TP / (TP + (FP + FN) / 2) with the expected TP = sum of p[c] over the rows
  predicted c, FP = sum of 1 - p[c] over them, FN = sum of p[c] over the others; `f1` is the
  positive class's (binary only, class 1), `f1_macro` the mean over the classes;
- ROC AUC: rows ranked by the model's own (uncalibrated) score for the class, each counting p[c]
  of a positive and 1 - p[c] of a negative; the area under the expected curve (binary: of class 1;
  more classes: the mean one-vs-rest area). Tied scores are one threshold.

Binary models calibrate the positive column only (p[0] = 1 - p[1]); with more classes each
column is calibrated one-vs-rest and the rows renormalised (uniform where all are 0). Class c is
column c of the probabilities and the prediction's value c.

Pure functions over numpy arrays; a metric that cannot be estimated (no rows, a class that no row
can be) is None, never NaN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ESTIMATED = ("accuracy", "f1", "f1_macro", "roc_auc")
METHOD = "isotonic"


@dataclass(frozen=True)
class Isotonic:
    """A fitted isotonic regression: increasing breakpoints, linear between them, clipped to the
    first and last beyond them (scikit-learn's IsotonicRegression(out_of_bounds="clip"))."""

    x: np.ndarray
    y: np.ndarray

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.x.size == 1:
            return np.full(scores.shape, self.y[0])
        return np.interp(np.clip(scores, self.x[0], self.x[-1]), self.x, self.y)

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": self.x.tolist(), "y": self.y.tolist()}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Isotonic:
        x, y = (np.asarray(doc[k], dtype=np.float64) for k in ("x", "y"))
        if x.ndim != 1 or x.shape != y.shape or not x.size:
            raise ValueError("isotonic points: x and y must be equal-length, non-empty lists")
        if np.any(np.diff(x) <= 0) or np.any(np.diff(y) < 0):
            raise ValueError("isotonic points must increase in x and not decrease in y")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("isotonic points must be finite")
        return cls(x, y)


def fit_isotonic(scores: np.ndarray, truth: np.ndarray) -> Isotonic:
    """The increasing isotonic regression of `truth` (0/1) on `scores`, as scikit-learn fits it:
    equal scores pooled into their mean, pool-adjacent-violators, and only the breakpoints kept
    (the first and last of each flat run)."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(truth, dtype=np.float64).ravel()
    if not x.size or x.size != y.size:
        raise ValueError("isotonic regression needs as many truths as scores, at least one")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("isotonic regression needs finite scores and truths")
    order = np.lexsort((y, x))
    x, y = x[order], y[order]
    # Pool equal scores (scikit-learn's _make_unique: a new value from float64 resolution on).
    eps = np.finfo(np.float64).resolution
    starts = [0]
    for i in range(1, x.size):
        if x[i] - x[starts[-1]] >= eps:
            starts.append(i)
    bounds = np.asarray([*starts, x.size])
    weight = np.diff(bounds).astype(np.float64)
    unique_x = x[bounds[:-1]]
    mean_y = np.add.reduceat(y, bounds[:-1]) / weight
    fitted = _pool_adjacent_violators(mean_y, weight)
    keep = np.ones(fitted.size, dtype=bool)
    if fitted.size > 2:
        keep[1:-1] = (fitted[:-2] != fitted[1:-1]) | (fitted[1:-1] != fitted[2:])
    return Isotonic(unique_x[keep], fitted[keep])


def _pool_adjacent_violators(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The weighted least-squares non-decreasing fit of `y`."""
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, w in zip(y.tolist(), weight.tolist()):
        means.append(value)
        weights.append(w)
        sizes.append(1)
        while len(means) > 1 and means[-2] >= means[-1]:
            w2 = weights[-2] + weights[-1]
            means[-2] = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w2
            weights[-2] = w2
            sizes[-2] += sizes[-1]
            del means[-1], weights[-1], sizes[-1]
    return np.repeat(np.asarray(means), sizes)


@dataclass(frozen=True)
class Calibration:
    """A version's calibrators: binary, one for the positive column; else one per column."""

    classes: int
    calibrators: tuple[Isotonic, ...]
    meta: Mapping[str, Any]  # where it was fitted: output, data, rows, reference quality

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, rows x classes."""
        p = np.asarray(probabilities, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != self.classes:
            raise ValueError(f"probabilities of shape {p.shape}: the calibration is for "
                             f"{self.classes} classes")
        if self.classes == 2:
            positive = self.calibrators[0](p[:, 1])
            return np.column_stack([1.0 - positive, positive])
        calibrated = np.column_stack([c(p[:, k]) for k, c in enumerate(self.calibrators)])
        total = calibrated.sum(axis=1, keepdims=True)
        uniform = np.full_like(calibrated, 1.0 / self.classes)
        return np.divide(calibrated, total, out=uniform, where=total != 0)

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "classes": self.classes,
                "points": [c.to_dict() for c in self.calibrators], **self.meta}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Calibration:
        if doc.get("method") != METHOD:
            raise ValueError(f"calibration method {doc.get('method')!r}: only {METHOD!r} is known")
        classes = int(doc["classes"])
        points = tuple(Isotonic.from_dict(p) for p in doc["points"])
        if classes < 2 or len(points) != (1 if classes == 2 else classes):
            raise ValueError(f"{len(points)} calibrators for {classes} classes")
        meta = {k: v for k, v in doc.items() if k not in ("method", "classes", "points")}
        return cls(classes, points, meta)


def fit_calibration(probabilities: np.ndarray, labels: np.ndarray,
                    meta: Mapping[str, Any] | None = None) -> Calibration:
    """Calibrators fitted on held-out rows: the model's probabilities (rows x classes, class c in
    column c) and the true class indices."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2 or p.shape[0] != y.size or not y.size:
        raise ValueError(f"probabilities of shape {p.shape} and {y.size} labels: a calibration "
                         "needs rows x classes (2 or more) and one label per row")
    if y.dtype.kind not in "iub" or y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices 0 to {p.shape[1] - 1}")
    columns = [1] if p.shape[1] == 2 else range(p.shape[1])
    fitted = tuple(fit_isotonic(p[:, k], y == k) for k in columns)
    return Calibration(p.shape[1], fitted, dict(meta or {}))


def estimate(calibration: Calibration, prediction: np.ndarray,
             probabilities: np.ndarray) -> dict[str, float | None]:
    """The estimated accuracy, f1 (binary: class 1; else None), f1_macro and roc_auc of rows
    with these predictions (class indices) and uncalibrated probabilities."""
    pred = np.asarray(prediction).ravel()
    raw = np.asarray(probabilities, dtype=np.float64)
    if not pred.size:
        return {name: None for name in ESTIMATED}
    if raw.shape[0] != pred.size:
        raise ValueError(f"{pred.size} predictions and {raw.shape[0]} rows of probabilities")
    p = calibration.calibrate(raw)
    predicted = pred[:, None] == np.arange(calibration.classes)[None, :]  # rows x classes
    f1s = [expected_f1(predicted[:, k], p[:, k]) for k in range(calibration.classes)]
    if calibration.classes == 2:
        auc = expected_auc(raw[:, 1], p[:, 1])
    else:
        aucs = [expected_auc(raw[:, k], p[:, k]) for k in range(calibration.classes)]
        auc = None if any(a is None for a in aucs) else float(np.mean(np.asarray(aucs)))
    return {
        "accuracy": float(np.mean(np.sum(np.where(predicted, p, 0.0), axis=1))),
        "f1": f1s[1] if calibration.classes == 2 else None,
        "f1_macro": float(np.mean(f1s)),
        "roc_auc": auc,
    }


def expected_f1(predicted: np.ndarray, p: np.ndarray) -> float:
    """F1 of one class from whether each row is predicted as it and its calibrated
    probability of being it (0.0 when nothing is expected of it, as scikit-learn's
    zero_division=0)."""
    tp = float(np.sum(p[predicted]))
    fp = float(np.sum(1.0 - p[predicted]))
    fn = float(np.sum(p[~predicted]))
    denominator = tp + 0.5 * (fp + fn)
    return tp / denominator if denominator else 0.0


def expected_auc(score: np.ndarray, p: np.ndarray) -> float | None:
    """The area under the ROC curve expected when the rows, ranked by `score` (highest first),
    are positive with probability `p`; None when no row can be positive, or none negative."""
    order = np.argsort(score, kind="stable")[::-1]
    score, p = score[order], p[order]
    ends = np.concatenate([np.nonzero(np.diff(score))[0], [score.size - 1]])
    tps = np.cumsum(p)[ends]
    fps = np.cumsum(1.0 - p)[ends]
    if tps[-1] <= 0 or fps[-1] <= 0:
        return None
    tpr = np.concatenate([[0.0], tps / tps[-1]])
    fpr = np.concatenate([[0.0], fps / fps[-1]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
