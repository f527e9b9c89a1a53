"""Labels joined to predictions of the monitored versions, and each window's quality from them:
by prediction time (a late label improves its window), with coverage, the settled flag, the
gate's reference, the window JSON and the scrape (a real service over the example repository)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics

from monitoring.collector_labels import LabelCollector
from monitoring.label_join import LabelJoin
from monitoring.label_store import LabelStore
from monitoring.service import MonitorService
from monitoring.settings import MonitorAppSettings, MonitorSettings
from vigil.core.messages import SampleMessage
from vigil.core.prediction_messages import PredictionMessage
from vigil.core.repository import MANIFEST_FILE, read_manifest

SETTINGS = MonitorSettings(window={"rows": 100, "seconds": None})
PREDICTED = np.array([1, 0, 1, 1, 0, 1])
P1 = np.array([0.9, 0.2, 0.6, 0.8, 0.4, 0.7])


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    path = root / "breast_cancer" / "1"
    manifest = read_manifest(path)
    gate = {"validation": {"passed": True, "metrics": {"candidate": {"accuracy": 0.96,
                                                                     "auc": 0.99}}}}
    manifest = dataclasses.replace(manifest, lineage={**manifest.lineage, **gate})
    (path / MANIFEST_FILE).write_text(manifest.to_yaml())
    return root


@pytest.fixture
def join(repo: Path, tmp_path: Path) -> LabelJoin:
    service = MonitorService(MonitorAppSettings(model_repository=repo), SETTINGS, now=0.0)
    return LabelJoin(LabelStore(tmp_path / "labels.sqlite", 1000.0, 1000), service, 100.0)


def _predictions(model: str = "breast_cancer", version: str = "1") -> PredictionMessage:
    probabilities = np.stack([1 - P1, P1], axis=1).astype(np.float32)
    return PredictionMessage(model, version, tuple(f"r{i}" for i in range(6)),
                             np.arange(1.0, 7.0), np.ones(6, np.int64),
                             {"label": PREDICTED, "probabilities": probabilities})


def test_records_of_versions_without_a_prediction_to_join_are_counted(join) -> None:
    assert join.record([_predictions(), _predictions("mlp"), _predictions(version="9"),
                        "junk"], now=10.0) == 6
    assert join.store.skipped == {("mlp", "no_prediction"): 6,
                                  ("breast_cancer", "unknown_version"): 6,
                                  ("_unknown", "not_a_message"): 1}


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_window_quality_is_sklearns_on_the_joined_rows(join) -> None:
    join.record([_predictions()], now=10.0)
    truth = [1, 1, 0, 1]
    join.label("breast_cancer", [(f"r{i}", t) for i, t in enumerate(truth)], False, 10.0)
    state = join.service.state("breast_cancer", "1")
    doc = join.quality(state, 0.0, 100.0, now=150.0)
    assert (doc["labelled_rows"], doc["served_rows"], doc["coverage"]) == (4, 6, 4 / 6)
    assert doc["task"] == "classification" and doc["settled"] is False
    m = doc["metrics"]
    # the probabilities travelled as float32: sklearn gets the same values
    sent = np.stack([1 - P1, P1], axis=1).astype(np.float32).astype(np.float64)[:4]
    assert m["accuracy"] == metrics.accuracy_score(truth, PREDICTED[:4])
    assert m["f1_macro"] == metrics.f1_score(truth, PREDICTED[:4], average="macro")
    assert m["roc_auc"] == metrics.roc_auc_score(truth, sent[:, 1])
    assert m["log_loss"] == metrics.log_loss(truth, sent)
    assert doc["classes"]["1"]["support"] == 3
    assert doc["reference"] == {"accuracy": 0.96, "roc_auc": 0.99}
    assert join.quality(state, 0.0, 100.0, now=200.0)["settled"] is True


def test_a_late_label_improves_the_window_of_its_prediction(join) -> None:
    join.record([_predictions()], now=10.0)
    state = join.service.state("breast_cancer", "1")
    join.label("breast_cancer", [("r0", 1), ("r4", 1)], False, 10.0)
    early = join.quality(state, 0.0, 3.5, now=10.0)  # r0..r2 were answered in it
    late = join.quality(state, 3.5, 10.0, now=10.0)
    assert (early["labelled_rows"], early["metrics"]["accuracy"]) == (1, 1.0)
    assert (late["labelled_rows"], late["metrics"]["accuracy"]) == (1, 0.0)
    join.label("breast_cancer", [("r1", 1)], False, 500.0)  # days later
    early = join.quality(state, 0.0, 3.5, now=500.0)
    assert (early["labelled_rows"], early["metrics"]["accuracy"]) == (2, 0.5)
    assert join.quality(state, 20.0, 30.0, now=500.0) == {
        "labelled_rows": 0, "served_rows": 0, "coverage": None, "settled": True, "task": None,
        "metrics": {}, "classes": {}, "reference": {"accuracy": 0.96, "roc_auc": 0.99}}


def test_the_window_json_and_the_scrape_carry_the_quality(join, repo) -> None:
    frame = pd.read_parquet(repo / "breast_cancer" / "1" / "reference.parquet")
    x = frame.drop(columns=["target"]).to_numpy(np.float32)[:100]
    outputs = {"label": np.ones(100, np.int64),
               "probabilities": np.full((100, 2), 0.5, np.float32)}
    join.record([_predictions()], now=10.0)
    join.label("breast_cancer", [("r0", 1), ("r1", 0), ("r2", 0)], False, 10.0)
    join.service.ingest([SampleMessage("breast_cancer", "1", {"input": x}, outputs,
                                       np.full(100, 0.01), np.full(100, 200, np.int16))],
                        now=50.0)  # the window [0, 50) closes at 100 rows
    doc = join.add_to(join.service.drift_doc("breast_cancer", "1"), now=60.0)
    assert doc["latest"]["labels"]["labelled_rows"] == 3
    assert doc["windows"][-1]["labels"]["metrics"]["accuracy"] == 2 / 3
    families = {f.name: f for f in LabelCollector(join.store, lambda: join.latest(60.0)).collect()}
    quality = {s.labels["metric"]: s.value for s in families["vigil_quality"].samples}
    assert quality["accuracy"] == 2 / 3 and "mae" not in quality
    assert families["vigil_quality_labels"].samples[0].value == 3.0
    assert families["vigil_quality_label_coverage"].samples[0].value == 0.5
    reference = {s.labels["metric"]: s.value for s in families["vigil_quality_reference"].samples}
    assert reference == {"accuracy": 0.96, "roc_auc": 0.99}


def test_windows_carry_quality_estimated_before_labels(join, repo) -> None:
    from monitoring.cbpe import Calibration, estimate

    state = join.service.state("breast_cancer", "1")
    doc = state.profile.meta["calibration"]  # fitted on holdout.parquet when it was published
    assert (doc["data"], doc["rows"], doc["output"]) == ("holdout.parquet", 143, "probabilities")
    join.record([_predictions()], now=10.0)
    sent = np.stack([1 - P1, P1], axis=1).astype(np.float32).astype(np.float64)
    expected = estimate(Calibration.from_dict(doc), PREDICTED, sent)
    got = join.estimated(state, 0.0, 100.0)
    assert got == {"available": True, "reason": None, "rows": 6, "served_rows": 6,
                   "metrics": expected, "reference": doc["reference"]}
    assert 0.0 < expected["accuracy"] < 1.0 and set(expected) == {"accuracy", "f1", "f1_macro",
                                                                 "roc_auc"}
    # no label needed; a prediction recorded late in the window is counted when read again
    late = dataclasses.replace(_predictions(), ids=tuple(f"s{i}" for i in range(6)))
    join.record([late], now=20.0)
    assert join.estimated(state, 0.0, 100.0)["rows"] == 12
    assert join.estimated(state, 200.0, 300.0)["metrics"] == {}
    assert join.estimated_for("breast_cancer", "1", 0.0, 100.0)["rows"] == 12
    assert join.estimated_for("breast_cancer", "9", 0.0, 100.0) is None


def test_the_window_json_and_the_scrape_carry_the_estimate(join, repo) -> None:
    frame = pd.read_parquet(repo / "breast_cancer" / "1" / "reference.parquet")
    x = frame.drop(columns=["target"]).to_numpy(np.float32)[:100]
    outputs = {"label": np.ones(100, np.int64),
               "probabilities": np.full((100, 2), 0.5, np.float32)}
    join.record([_predictions()], now=10.0)
    join.service.ingest([SampleMessage("breast_cancer", "1", {"input": x}, outputs,
                                       np.full(100, 0.01), np.full(100, 200, np.int16))],
                        now=50.0)
    state = join.service.state("breast_cancer", "1")
    doc = join.add_to(join.service.drift_doc("breast_cancer", "1"), now=60.0)
    estimated = join.estimated(state, 0.0, 50.0)
    assert doc["latest"]["estimated"] == estimated and estimated["rows"] == 6
    assert doc["latest"]["labels"]["labelled_rows"] == 0  # beside the realised quality
    families = {f.name: f for f in LabelCollector(join.store, lambda: join.latest(60.0),
                                                  estimated=join.latest_estimated).collect()}
    scraped = {s.labels["metric"]: s.value for s in families["vigil_quality_estimated"].samples}
    assert scraped == estimated["metrics"]


def test_a_version_without_calibration_says_why(join, tmp_path) -> None:
    state = join.service.state("breast_cancer", "1")
    bare = dataclasses.replace(state, version="2", profile=dataclasses.replace(
        state.profile, meta={k: v for k, v in state.profile.meta.items()
                             if k != "calibration"}))
    doc = join.estimated(bare, 0.0, 100.0)
    assert doc["available"] is False and "no calibration" in doc["reason"]
    assert doc["metrics"] == {}
    mlp = join.service.state("mlp", "1")
    assert join.estimated(mlp, 0.0, 100.0)["reason"] == "no profile"


# --- the rows endpoint's labels: each sampled row's ground truth, when the join store has it ----


def _sampled(x: np.ndarray, ids: tuple, rows: list[int], positions: list[int]) -> SampleMessage:
    n = len(x)
    outputs = {"label": np.ones(n, np.int64), "probabilities": np.full((n, 2), 0.5, np.float32)}
    return SampleMessage("breast_cancer", "1", {"input": x}, outputs, np.full(len(ids), 0.01),
                         np.full(len(ids), 200, np.int16), request_ids=ids,
                         request_rows=np.array(rows), row_positions=np.array(positions))


def test_the_rows_document_gives_each_sampled_row_its_label(join, repo) -> None:
    """A label holds one value per row of its request; a sampled row gets the value at its own
    position. Rows without an id, of an unlabelled request, or of a request another version
    answered (its id served again) get null; a label that arrives after the window closed is
    there when the rows are read."""
    frame = pd.read_parquet(repo / "breast_cancer" / "1" / "reference.parquet")
    x = frame.drop(columns=["target"]).to_numpy(np.float32)[:100]
    three_rows = {"label": np.array([1, 0, 1]), "probabilities": np.full((3, 2), 0.5, np.float32)}
    join.record([
        PredictionMessage("breast_cancer", "1", ("multi", "one", "unlabelled"),
                          np.array([1.0, 2.0, 3.0]), np.array([3, 1, 1]),
                          {k: np.concatenate([v, v[:2]]) for k, v in three_rows.items()}),
        PredictionMessage("breast_cancer", "2", ("other",), np.array([4.0]), np.array([1]),
                          {k: v[:1] for k, v in three_rows.items()}),
    ], now=10.0)
    # 94 rows of one request, then "multi" (its rows 2 and 0), "one", "other", "unlabelled" and
    # a row without an id
    ids = ("bulk", "multi", "one", "other", "unlabelled", None)
    message = _sampled(x, ids, [94, 2, 1, 1, 1, 1], [*range(94), 2, 0, 0, 0, 0, 0])
    join.service.ingest([message], now=20.0)  # closes the window at 100 rows
    source = join.service.report_source("breast_cancer", "1", now=30.0)
    outcomes = join.label("breast_cancer", [("multi", [0, 1, 1]), ("one", 0), ("other", 1)],
                          False, 40.0)
    assert [o["outcome"] for o in outcomes] == ["joined", "joined", "unknown_id"]  # 2 not held

    doc = join.rows_doc(source)
    assert (doc["rows"], doc["labelled_rows"], doc["labelled"]) == (100, 3, "all")
    assert doc["label_of"] == "label" and doc["window"]["rows"] == 100
    assert doc["labels"] == [None] * 94 + [1, 0, 0, None, None, None]
    assert doc["request_ids"] == ["bulk"] * 94 + ["multi", "multi", "one", "other",
                                                  "unlabelled", None]
    assert "request_id" not in doc["columns"] and len(doc["columns"]["mean radius"]) == 100

    only = join.rows_doc(source, labelled_only=True)
    assert (only["rows"], only["labelled_rows"], only["labelled"]) == (3, 3, "only")
    assert only["labels"] == [1, 0, 0] and only["request_ids"] == ["multi", "multi", "one"]
    assert only["columns"]["mean radius"] == [float(v) for v in x[[94, 95, 96], 0]]
    assert all(len(v) == 3 for v in only["columns"].values())


def test_labels_of_reads_only_the_versions_labelled_requests(join) -> None:
    join.record([_predictions()], now=10.0)
    join.label("breast_cancer", [("r0", 1), ("r1", 0)], False, 10.0)
    store = join.store
    assert store.labels_of("breast_cancer", "1", ["r0", "r1", "r2", "nope", "r0"]) == {
        "r0": [1], "r1": [0]}
    assert store.labels_of("breast_cancer", "2", ["r0"]) == {}
    assert store.labels_of("breast_cancer", "1", []) == {}
    many = [f"x{i}" for i in range(1200)] + ["r1"]  # past one query's 500 parameters
    assert store.labels_of("breast_cancer", "1", many) == {"r1": [0]}
