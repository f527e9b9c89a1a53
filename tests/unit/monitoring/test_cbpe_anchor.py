"""The anchor of quality estimated before labels: NannyML's CBPE on the same reference (the
held-out set) and analysis data (the served windows) as Vigil's, through Vigil's whole path: a
classifier published with its held-out set (calibrated then, in its profile), its predictions
recorded by the join store window by window, the estimate read as the window JSON reads it.

The windows shift the traffic towards a subpopulation the model is unsure of (the cases near its
decision boundary), so accuracy really falls; every window's estimate must be within 0.01 of
NannyML's, and once the labels are in, it must track the realised accuracy (the test prints both).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML reports usage otherwise
import nannyml as nml  # noqa: E402 - a test dependency (the dev extra): missing, the test fails

from monitoring.label_join import LabelJoin
from monitoring.label_store import LabelStore
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings
from vigil.core.prediction_messages import PredictionMessage
from vigil.core.repository import ModelVersion, VersionManifest
from vigil.core.tensors import TensorSpec
from vigil.tools.examples import _parquet, serialize
from vigil.tools.publishing import write_version


FEATURES = [1, 4, 8, 9]  # mean texture, smoothness, symmetry, fractal dimension: a weak model
WINDOW_ROWS = 200
HARD_SHARES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # each window's share of the unsure subpopulation
WINDOW_S = 100.0
TOLERANCE = 0.01  # the bound on |Vigil - NannyML|, every window, every metric
METRICS = {"accuracy": "accuracy", "f1": "f1", "roc_auc": "roc_auc"}  # Vigil's -> NannyML's


@dataclass(frozen=True)
class Case:
    version: ModelVersion
    holdout: tuple[np.ndarray, np.ndarray]
    analysis: tuple[np.ndarray, np.ndarray]  # the served windows' rows, one after another


def _publish(root: Path) -> Case:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x = data.data[:, FEATURES].astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.6, random_state=0,
                                                        stratify=y)
    x_hold, x_pool, y_hold, y_pool = train_test_split(x_rest, y_rest, test_size=0.5,
                                                      random_state=0, stratify=y_rest)
    clf = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    onnx_bytes = serialize(convert_sklearn(
        clf, name="weak_cancer", initial_types=[("input", FloatTensorType([None, 4]))],
        final_types=[("label", Int64TensorType([None])),
                     ("probabilities", FloatTensorType([None, 2]))],
        options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}))
    names = [str(data.feature_names[i]) for i in FEATURES]
    manifest = VersionManifest(
        name="weak_cancer", version="1", sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        inputs=(TensorSpec("input", "FP32", (-1, 4)),),
        outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32",
                                                                  (-1, 2))),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        metadata={"feature_names": names, "evaluation": {"data": "holdout.parquet",
                                                         "target": "target"}},
    )
    with tempfile.TemporaryDirectory() as scratch:
        reference = Path(scratch) / "reference.parquet"
        reference.write_bytes(_parquet(names, x_train, y_train))
        version = write_version(root, manifest, onnx_bytes, reference=reference,
                                outputs_from_model=True,
                                extra_files={"holdout.parquet": _parquet(names, x_hold, y_hold)}
                                ).version
    # The served traffic: windows drawn from the pool, more and more of them from the cases
    # the model is unsure of (its probability within 0.25 of 0.5).
    proba = clf.predict_proba(x_pool)[:, 1]
    unsure = np.abs(proba - 0.5) < 0.25
    rng = np.random.default_rng(1)
    rows = []
    for share in HARD_SHARES:
        hard = int(WINDOW_ROWS * share)
        rows.append(rng.choice(np.nonzero(~unsure)[0], WINDOW_ROWS - hard))
        rows.append(rng.choice(np.nonzero(unsure)[0], hard))
    index = np.concatenate(rows)
    return Case(version, (x_hold, y_hold), (x_pool[index], y_pool[index]))


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    return _publish(tmp_path_factory.mktemp("cbpe") / "models")


def _outputs(version: ModelVersion, x: np.ndarray) -> dict[str, np.ndarray]:
    model = OnnxModel(version, RuntimeSettings())
    ready, _ = model.validate({"input": x})
    return model.run(ready)


def _nannyml(case: Case, served: dict[str, np.ndarray]) -> pd.DataFrame:
    """NannyML's CBPE fitted on the held-out set (the model's answers and the truth) and run
    on the served rows in chunks of one window."""
    held = _outputs(case.version, case.holdout[0])
    # float32 probabilities as float64, as they reach Vigil's store
    reference = pd.DataFrame({"y_true": case.holdout[1], "y_pred": held["label"],
                              "p": held["probabilities"][:, 1].astype(np.float64)})
    analysis = pd.DataFrame({"y_pred": served["label"],
                             "p": served["probabilities"][:, 1].astype(np.float64)})
    estimator = nml.CBPE(y_pred_proba="p", y_pred="y_pred", y_true="y_true",
                         problem_type="classification_binary", metrics=list(METRICS.values()),
                         chunk_size=WINDOW_ROWS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(reference)
        # Vigil always calibrates; NannyML does when calibration lowers the calibration error
        # on its own splits. Compared like with like only when it does.
        assert estimator.needs_calibration
        result = estimator.estimate(analysis).filter(period="analysis").to_df()
    return pd.DataFrame({ours: result[(theirs, "value")].to_numpy()
                         for ours, theirs in METRICS.items()})


def test_estimates_match_nannyml_and_track_realised_accuracy(case: Case, tmp_path: Path) -> None:
    x, y = case.analysis
    served = _outputs(case.version, x)
    service = MonitorService(MonitorAppSettings(model_repository=case.version.path.parent.parent),
                             MonitorSettings(), now=0.0)
    join = LabelJoin(LabelStore(tmp_path / "labels.sqlite", 1e9, 10**6), service, 0.0)
    windows = len(HARD_SHARES)
    for k in range(windows):
        rows = slice(k * WINDOW_ROWS, (k + 1) * WINDOW_ROWS)
        ids = tuple(f"w{k}-{i}" for i in range(WINDOW_ROWS))
        join.record([PredictionMessage(
            "weak_cancer", "1", ids, k * WINDOW_S + np.linspace(1, 90, WINDOW_ROWS),
            np.ones(WINDOW_ROWS, np.int64),
            {name: served[name][rows] for name in ("label", "probabilities")})], now=1.0)
    state = service.state("weak_cancer", "1")
    before = [join.estimated(state, k * WINDOW_S, (k + 1) * WINDOW_S) for k in range(windows)]
    # the labels arrive later: the estimates do not depend on them
    outcomes = join.label("weak_cancer", [(f"w{k}-{i}", int(y[k * WINDOW_ROWS + i]))
                                          for k in range(windows) for i in range(WINDOW_ROWS)],
                          False, 2.0)
    assert {o["outcome"] for o in outcomes} == {"joined"}
    theirs = _nannyml(case, served)
    print(f"\n{'window':>6} {'unsure':>6}  {'metric':<8} {'vigil':>7} {'nannyml':>7} "
          f"{'|diff|':>7}  {'realised':>8}")
    worst = 0.0
    realised, estimated = [], []
    for k in range(windows):
        doc = join.estimated(state, k * WINDOW_S, (k + 1) * WINDOW_S)
        assert doc == before[k] and doc["rows"] == doc["served_rows"] == WINDOW_ROWS
        quality = join.quality(state, k * WINDOW_S, (k + 1) * WINDOW_S, now=3.0)
        labels = {**quality["metrics"], "f1": quality["classes"]["1"]["f1"]}
        realised.append(labels["accuracy"])
        estimated.append(doc["metrics"]["accuracy"])
        for metric in METRICS:
            ours, nanny = doc["metrics"][metric], float(theirs[metric][k])
            worst = max(worst, abs(ours - nanny))
            print(f"{k + 1:>6} {HARD_SHARES[k]:>6.0%}  {metric:<8} {ours:>7.4f} {nanny:>7.4f} "
                  f"{abs(ours - nanny):>7.1e}  {labels[metric]:>8.4f}")
            assert abs(ours - nanny) <= TOLERANCE, (k, metric, ours, nanny)
    print(f"max |vigil - nannyml| over {windows} windows x {len(METRICS)} metrics: {worst:.2e}")
    # accuracy really falls, and the estimate sees it coming before any label
    assert realised[-1] < realised[0] - 0.2
    assert estimated[-1] < estimated[0] - 0.2
    # ... and tracks the realised accuracy once the labels are in
    gaps = np.abs(np.asarray(estimated) - np.asarray(realised))
    print("accuracy estimated / realised: " + ", ".join(
        f"{e:.3f}/{r:.3f}" for e, r in zip(estimated, realised)))
    assert gaps.max() <= 0.1, gaps
    assert np.corrcoef(estimated, realised)[0, 1] > 0.9


def test_multiclass_estimates_match_nannyml() -> None:
    """Three classes (wine, a weak model on magnesium and hue), pure functions: each column
    calibrated one-vs-rest and renormalised, as NannyML's multiclass CBPE does when it calibrates
    every class (asserted: it skips a class whose calibration does not help)."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from monitoring.cbpe import estimate, fit_calibration

    data = load_wine()
    x, y = data.data[:, [4, 10]], data.target
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.66, random_state=0,
                                                        stratify=y)
    x_hold, x_pool, y_hold, _ = train_test_split(x_rest, y_rest, test_size=0.5, random_state=0,
                                                 stratify=y_rest)
    model = LogisticRegression(max_iter=5000).fit(x_train, y_train)
    held, pool = model.predict_proba(x_hold), model.predict_proba(x_pool)
    unsure = pool.max(axis=1) < 0.7
    rng = np.random.default_rng(2)
    rows = 60
    index = np.concatenate([np.concatenate([
        rng.choice(np.nonzero(~unsure)[0], rows - int(rows * share)),
        rng.choice(np.nonzero(unsure)[0], int(rows * share))]) for share in (0.3, 0.6, 1.0)])
    columns = {c: f"p{c}" for c in range(3)}
    reference = pd.DataFrame({"y_true": y_hold, "y_pred": held.argmax(1),
                              **{f"p{c}": held[:, c] for c in range(3)}})
    analysis = pd.DataFrame({"y_pred": pool[index].argmax(1),
                             **{f"p{c}": pool[index, c] for c in range(3)}})
    estimator = nml.CBPE(y_pred_proba=columns, y_pred="y_pred", y_true="y_true",
                         problem_type="classification_multiclass",
                         metrics=["accuracy", "f1", "roc_auc"], chunk_size=rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(reference)
        assert {type(c).__name__ for c in estimator._calibrators.values()} == {
            "IsotonicCalibrator"}
        theirs = estimator.estimate(analysis).filter(period="analysis").to_df()
    calibration = fit_calibration(held, y_hold)
    worst = 0.0
    for k in range(3):
        window = index[k * rows:(k + 1) * rows]
        ours = estimate(calibration, pool[window].argmax(1), pool[window])
        for metric, their_name in (("accuracy", "accuracy"), ("f1_macro", "f1"),
                                   ("roc_auc", "roc_auc")):
            diff = abs(ours[metric] - float(theirs[(their_name, "value")].iloc[k]))
            worst = max(worst, diff)
            assert diff <= TOLERANCE, (k, metric, ours[metric])
    print(f"\nmulticlass: max |vigil - nannyml| over 3 windows x 3 metrics: {worst:.2e}")
