"""The example's retraining job: breast_cancer retrained from a drifted version's reference data
and the monitor's window rows, and published as the next version through Vigil's publishing.

The window's rows come with the ground-truth labels posted for their requests through the
feedback route (the monitor's rows endpoint joins them). With at least ``min_labelled_rows``
(MIN_LABELLED_ROWS, 20) labelled rows, the job trains on those rows and their true labels alone,
leaving the unlabelled ones out. With fewer, a handful of true labels would hardly move a model
trained on the 426 reference rows, so it falls back to every row, labelled with its true label
where it has one and with the served model's own prediction elsewhere (pseudo-labels, which can
only confirm what the model believes); the version's metadata (``labels``, ``window_labels``)
and the job's outcome say which it was."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np

from examples.receiver_events import MODEL, EventStore, now
from vigil.core.repository import MANIFEST_FILE, ModelVersion, read_manifest
from vigil.tools.examples import (
    BREAST_CANCER_INPUTS,
    BREAST_CANCER_MAX_BATCH_ROWS,
    BREAST_CANCER_OUTPUTS,
    ML_OPSET,
    OPSET,
    REFERENCE_FILE,
    serialize,
)
from vigil.tools.publishing import PublishError, publish_file, next_version

if TYPE_CHECKING:
    import pandas as pd

    from examples.shipping import Shipping

logger = logging.getLogger("vigil.retrain_receiver")

TOKEN_ENV = "VIGIL_TOKEN"
TARGET = "target"  # the label column of reference.parquet
PREDICTED = "label"  # the model's predicted class in the monitor's rows
MIN_LABELLED_ROWS = 20  # labelled window rows needed to train on ground truth alone
# The training frame leans on recent traffic: window rows make at least RECENT_SHARE of it, and
# the parent's reference gives its most recent rows for the rest (at least MIN_HISTORY_ROWS, or
# all it has). A frame that kept every older row would leave the new version's reference a mix
# that the shifted traffic still drifts from, and it would grow with every retraining.
RECENT_SHARE = 0.9
MIN_HISTORY_ROWS = 100
MONITOR_TIMEOUT_S = 30.0
PUBLISH_TRIES = 5  # next versions tried when another publisher takes each one first


class RetrainError(Exception):
    """Retraining stopped before publishing; the message says why (stored with the event)."""


@dataclass(frozen=True)
class Parent:
    """The drifted version to start from: its feature names and reference data, checked."""

    version: str
    manifest_metadata: dict[str, Any]
    features: list[str]
    reference: pd.DataFrame


@dataclass(frozen=True)
class WindowRows:
    """The window's rows to train on: features (float32) and labels, and where the labels came
    from. `ground_truth`: every label is one posted through the feedback route; else the rows
    without one carry the served model's prediction (pseudo-labels)."""

    x: np.ndarray
    y: np.ndarray
    ground_truth: bool
    labelled: int  # rows used with a posted label
    dropped: int  # rows left out as unusable: a non-finite feature, a label that is no class
    unlabelled: int  # rows left out for having no label (when training on ground truth)
    min_labelled: int  # the threshold it was judged by

    @property
    def kind(self) -> str:
        return "ground_truth" if self.ground_truth else "pseudo"

    def describe(self, version: str) -> str:
        """What the window rows' labels are, in words (the version's `labels` metadata)."""
        if self.ground_truth:
            return (f"ground truth: the window's {self.labelled} labelled rows, with the labels "
                    f"posted through Vigil's feedback route ({self.unlabelled} unlabelled rows "
                    "left out)")
        return (f"pseudo-labels: window rows carry {MODEL}/{version}'s own predictions, not "
                f"ground truth, except {self.labelled} rows with posted labels (fewer than the "
                f"{self.min_labelled} needed to train on ground truth alone)")


@dataclass(frozen=True)
class Trained:
    """A retrained model: its ONNX bytes, the frame it was trained on and the figures."""

    onnx_bytes: bytes
    frame: pd.DataFrame
    metadata: dict[str, Any]
    outcome: dict[str, Any]


class Retrainer:
    """Retrains breast_cancer from a drifted version's reference data and window rows. `actor`
    names the publisher in the audit log, with the event's id: '<actor>:<event id>'."""

    def __init__(self, models_dir: Path, monitor_url: str, token: str | None,
                 timeout_s: float = MONITOR_TIMEOUT_S, actor: str = "receiver",
                 shipper: Shipping | None = None, shuffle_labels: bool = False,
                 min_labelled_rows: int = MIN_LABELLED_ROWS,
                 recent_share: float = RECENT_SHARE) -> None:
        if min_labelled_rows < 1:
            raise ValueError(f"min_labelled_rows must be at least 1, got {min_labelled_rows}")
        if not 0 < recent_share <= 1:
            raise ValueError(f"recent_share must be in (0, 1], got {recent_share}")
        self.models_dir = Path(models_dir)
        self.min_labelled_rows = min_labelled_rows
        self.recent_share = recent_share
        self.shipper = shipper  # gates each published version and starts its rollout
        self.shuffle_labels = shuffle_labels  # a deliberately worse candidate (the demo's)
        self.monitor_url = monitor_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.actor = actor
        self._lock = threading.Lock()  # one job at a time: each takes the next version

    def run(self, event_id: str, parent: str, store: EventStore) -> dict[str, Any]:
        """One job (on a worker thread): retrain, and store and log the outcome."""
        with self._lock:
            started_at, started = now(), time.perf_counter()
            store.set_retrained(event_id, {"status": "running", "started_at": started_at})
            try:
                outcome: dict[str, Any] = {"status": "published", **self.retrain(event_id, parent)}
                logger.info("event %s: published %s/%s from %s/%s (%d reference + %d window "
                            "rows, labels: %s)", event_id, MODEL, outcome["version"], MODEL,
                            parent, outcome["reference_rows"], outcome["window_rows"],
                            outcome["labels_detail"])
            except RetrainError as exc:
                outcome = {"status": "failed", "error": str(exc)}
                logger.warning("event %s: %s/%s not retrained: %s", event_id, MODEL, parent, exc)
            except Exception as exc:
                logger.exception("event %s: retraining %s/%s failed", event_id, MODEL, parent)
                outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            outcome.update(started_at=started_at, finished_at=now(),
                           seconds=round(time.perf_counter() - started, 3))
            store.set_retrained(event_id, outcome)
            return outcome

    def retrain(self, event_id: str, parent: str) -> dict[str, Any]:
        """Retrain from `parent` and publish the next version; its outcome (RetrainError when
        nothing was published)."""
        start = self.parent(parent)
        doc = self.fetch_rows(parent)
        trained = retrained_model(start, doc, event_id, self.shuffle_labels,
                                  self.min_labelled_rows, self.recent_share)
        version = self.publish(trained, f"{self.actor}:{event_id}")
        outcome = {"version": version.manifest.version, **trained.outcome}
        if self.shipper is not None:
            outcome["shipped"] = self.shipper.ship(self.models_dir, MODEL,
                                                   version.manifest.version,
                                                   f"{self.actor}:{event_id}")
        return outcome

    def parent(self, version: str) -> Parent:
        """The drifted version, refused unless it has the example's signature, 30 feature names
        and its reference data beside it."""
        import pandas as pd

        version_dir = self.models_dir / MODEL / version
        if not (version_dir / MANIFEST_FILE).exists():
            raise RetrainError(f"{MODEL}/{version} is not in {self.models_dir}")
        manifest = read_manifest(version_dir)
        if (manifest.inputs, manifest.outputs) != (BREAST_CANCER_INPUTS, BREAST_CANCER_OUTPUTS):
            raise RetrainError(f"{MODEL}/{version} does not have the example's inputs and outputs")
        features = manifest.metadata.get("feature_names")
        width = BREAST_CANCER_INPUTS[0].shape[1]
        if not isinstance(features, list) or len(features) != width:
            raise RetrainError(f"{MODEL}/{version} has no {width} metadata.feature_names")
        try:
            reference = pd.read_parquet(version_dir / REFERENCE_FILE)
        except (OSError, ValueError) as exc:
            raise RetrainError(f"the reference data of {MODEL}/{version}: {exc}") from None
        missing = [c for c in (*features, TARGET) if c not in reference.columns]
        if missing:
            raise RetrainError(f"{version_dir / REFERENCE_FILE} lacks columns {missing[:3]}")
        return Parent(version, dict(manifest.metadata), [str(f) for f in features], reference)

    def fetch_rows(self, version: str) -> dict[str, Any]:
        """The monitor's rows of the version's last closed window, each with its label or
        null (monitoring.label_join.LabelJoin.rows_doc)."""
        url = f"{self.monitor_url}/v1/models/{MODEL}/rows"
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            with httpx.Client(timeout=self.timeout_s, follow_redirects=False) as client:
                answer = client.get(url, params={"version": version}, headers=headers)
        except httpx.HTTPError as exc:
            raise RetrainError(
                f"the monitor at {url} cannot be reached: {type(exc).__name__}: {exc}"
            ) from None
        if answer.status_code != 200:
            try:
                why = answer.json()["error"]
            except (ValueError, KeyError, TypeError):
                why = answer.text[:200]
            raise RetrainError(f"the monitor answered {answer.status_code} for the rows of "
                               f"{MODEL}/{version}: {why}")
        try:
            doc: dict[str, Any] = answer.json()
        except ValueError:
            raise RetrainError("the monitor's rows are not JSON") from None
        return doc

    def publish(self, trained: Trained, actor: str) -> ModelVersion:
        """Publish `trained` as the next whole-number version with vigil.tools.publishing
        (signature from onnxruntime, lineage, reference profile, audit entry by `actor`). A
        number another publisher takes first is skipped for the next one."""
        with tempfile.TemporaryDirectory(prefix="vigil-retrain-") as scratch:
            source, reference = Path(scratch) / "model.onnx", Path(scratch) / REFERENCE_FILE
            source.write_bytes(trained.onnx_bytes)
            trained.frame.to_parquet(reference, index=False, compression="snappy")
            for _ in range(PUBLISH_TRIES):
                version = next_version(self.models_dir, MODEL)
                try:
                    published = publish_file(
                        self.models_dir, source, MODEL, actor=actor, version=version,
                        reference=reference, outputs_from_model=True,
                        max_batch_rows=BREAST_CANCER_MAX_BATCH_ROWS, metadata=trained.metadata,
                        metrics={"training_accuracy": trained.outcome["training_accuracy"]},
                        progress=False, finite_inputs=["input"],
                    ).version
                except PublishError as exc:
                    if self._taken_by_another(version, trained.onnx_bytes):
                        logger.info("%s/%s was taken meanwhile: the next one", MODEL, version)
                        continue
                    raise RetrainError(f"publishing {MODEL}/{version}: {exc}") from None
                return published  # with the training frame inside it as reference.parquet
        raise RetrainError(f"{PUBLISH_TRIES} versions in a row were taken by other publishers")

    def _taken_by_another(self, version: str, onnx_bytes: bytes) -> bool:
        """Whether `version` now exists with other bytes (or as a folder without manifest)."""
        version_dir = self.models_dir / MODEL / version
        if not version_dir.exists():
            return False
        if not (version_dir / MANIFEST_FILE).exists():
            return True
        return read_manifest(version_dir).sha256 != hashlib.sha256(onnx_bytes).hexdigest()


def retrained_model(parent: Parent, doc: Any, event_id: str, shuffle_labels: bool = False,
                    min_labelled_rows: int = MIN_LABELLED_ROWS,
                    recent_share: float = RECENT_SHARE) -> Trained:
    """The model trained on the window's rows (window_rows: with their true labels, or
    pseudo-labelled) and the parent's most recent reference rows (history_rows), with the
    metadata that says where it came from; `shuffle_labels`: on labels shuffled across rows, a
    model that has learnt nothing (the demo's bad candidate)."""
    import pandas as pd

    all_y = parent.reference[TARGET].to_numpy(np.int64)
    win = window_rows(doc, parent.features, parent.version, classes=np.unique(all_y),
                      min_labelled=min_labelled_rows)
    kept = history_rows(all_y, len(win.y), recent_share)
    ref_x = parent.reference[parent.features].iloc[len(all_y) - kept:].to_numpy(np.float32)
    ref_y = all_y[len(all_y) - kept:]
    x, y = np.concatenate([ref_x, win.x]), np.concatenate([ref_y, win.y])
    if shuffle_labels:
        seed = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big")
        y = np.random.default_rng(seed).permutation(y)
    onnx_bytes, accuracy = train(x, y)
    frame = pd.DataFrame(x, columns=parent.features)
    frame[TARGET] = y
    window = doc.get("window") or {}
    meta = parent.manifest_metadata
    metadata = {
        "task": meta.get("task", "binary classification"),
        "feature_names": parent.features,
        **({"classes": meta["classes"]} if "classes" in meta else {}),
        "training_rows": len(y),
        "training_accuracy": accuracy,  # on its training rows, pseudo-labels included if any
        "source": f"{MODEL}/{parent.version}'s most recent reference rows + monitor window rows, "
                  + ("with ground-truth labels" if win.ground_truth else "pseudo-labelled"),
        "labels": ("shuffled across rows: a deliberately worse candidate" if shuffle_labels else
                   win.describe(parent.version)),
        "window_labels": win.kind,
        "trained_from_event": event_id,
        "parent_version": parent.version,
        "window_index": window.get("index"),
        "reference_rows": len(ref_y),
        "parent_reference_rows": len(all_y),
        "window_rows": len(win.y),
        "window_rows_labelled": win.labelled,
        "window_rows_unlabelled": win.unlabelled,
        "window_rows_dropped": win.dropped,
    }
    outcome = {"reference_rows": len(ref_y), "reference_rows_left_out": len(all_y) - len(ref_y),
               "window_rows": len(win.y),
               "window_rows_dropped": win.dropped, "window_index": window.get("index"),
               "labels": win.kind, "labelled_rows": win.labelled,
               "unlabelled_rows_left_out": win.unlabelled,
               "labels_detail": win.describe(parent.version),
               "training_accuracy": accuracy}
    return Trained(onnx_bytes, frame, metadata, outcome)


def history_rows(parent_y: np.ndarray, window: int, recent_share: float = RECENT_SHARE) -> int:
    """How many of the parent's reference rows (its last ones: each retraining appends its
    window) join `window` window rows: so many that the window makes `recent_share` of the
    frame, at least MIN_HISTORY_ROWS, at most all of them; and, should that tail hold one class
    only while the parent has more, all of them (a classifier needs every class)."""
    wanted = max(MIN_HISTORY_ROWS, round(window * (1 - recent_share) / recent_share))
    kept = min(len(parent_y), wanted)
    if len(np.unique(parent_y[len(parent_y) - kept:])) < len(np.unique(parent_y)):
        return len(parent_y)
    return kept


def window_rows(doc: Any, features: Sequence[str], version: str, classes: np.ndarray,
                min_labelled: int = MIN_LABELLED_ROWS) -> WindowRows:
    """The rows to train on from the monitor's rows document. Its `labels` (one per row, null
    where the request was not labelled; absent from a monitor before labels) decide: with at
    least `min_labelled` usable labelled rows, those rows with their true labels; else every
    usable row, with its true label where it has one and the served model's prediction (its
    `label` column) elsewhere. A row with a non-finite feature, or a label that is not one of
    `classes`, is dropped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), dict):
        raise RetrainError("the monitor's rows have no 'columns'")
    if (doc.get("model"), doc.get("version")) != (MODEL, version):
        raise RetrainError(f"the monitor sent rows of {doc.get('model')}/{doc.get('version')}, "
                           f"not {MODEL}/{version}")
    columns = doc["columns"]
    missing = [c for c in (*features, PREDICTED) if c not in columns]
    if missing:
        raise RetrainError(f"the window's rows lack the columns {missing[:3]}")
    wanted = [columns[c] for c in (*features, PREDICTED)]
    if not all(isinstance(v, list) for v in wanted) or len({len(v) for v in wanted}) != 1:
        raise RetrainError("the window's columns are not lists of one length")
    try:
        # None (a non-finite value in JSON) becomes NaN here and drops its row below.
        x = np.array(wanted[:-1], dtype=np.float64).T
        predicted = np.array(wanted[-1], dtype=np.float64)
    except (TypeError, ValueError):
        raise RetrainError("the window's columns are not numeric") from None
    truth = _labels(doc.get("labels"), len(predicted))
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
    finite = np.isfinite(x32).all(axis=1)
    has_label = ~np.isnan(truth)
    usable_truth = finite & np.isin(truth, classes)
    labelled = int(usable_truth.sum())
    if labelled >= min_labelled:
        return WindowRows(x32[usable_truth], truth[usable_truth].astype(np.int64), True,
                          labelled, int((has_label & ~usable_truth).sum()),
                          int((~has_label).sum()), min_labelled)
    y = np.where(has_label, truth, predicted)
    keep = finite & np.isin(y, classes)
    if not keep.any():
        raise RetrainError(f"the window has no usable rows ({len(predicted)} rows, none finite "
                           f"with a label or predicted class in {classes.tolist()})")
    return WindowRows(x32[keep], y[keep].astype(np.int64), False, labelled,
                      int((~keep).sum()), 0, min_labelled)


def _labels(raw: Any, rows: int) -> np.ndarray:
    """The document's labels as floats, NaN where a row has none (null) or where the document
    has no `labels` at all; a value that is not a number is no class (-1)."""
    if raw is None:
        return np.full(rows, np.nan)
    if not isinstance(raw, list) or len(raw) != rows:
        raise RetrainError("the window's labels are not a list of one label per row")
    return np.array([np.nan if v is None else float(v)
                     if isinstance(v, int | float) and not isinstance(v, bool) else -1.0
                     for v in raw], dtype=np.float64)


def train(x: np.ndarray, y: np.ndarray) -> tuple[bytes, float]:
    """The ONNX bytes of StandardScaler + LogisticRegression fitted on (x, y), converted as
    vigil.tools.examples converts breast_cancer/1, and its accuracy on (x, y)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    clf = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("scaler", StandardScaler()), ("classifier", clf)]).fit(x, y)
    proto = convert_sklearn(
        pipe,
        name=MODEL,
        initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
        final_types=[("label", Int64TensorType([None])),
                     ("probabilities", FloatTensorType([None, 2]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    return serialize(proto), float(round(pipe.score(x, y), 4))
