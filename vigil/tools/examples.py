"""Deterministic builder of the bundled example models."""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from monitoring.profile import Profile
from monitoring.profile_builder import reference_file
from vigil.core.repository import (
    MANIFEST_FILE,
    ModelVersion,
    VersionManifest,
    publish,
    read_manifest,
)
from vigil.core.tensors import TensorSpec
from vigil.tools.profiles import profile_version
from vigil.tools.publishing import write_version

VERSION = "1"
REFERENCE_FILE = reference_file(".parquet")  # the training split, as any version holds it
# The held-out rows (the test split) the model gate (vigil.tools.model_gate) judges versions by.
HOLDOUT_FILE = "holdout.parquet"
# Pinned so the bytes do not change with the installed onnx/skl2onnx defaults and so that
# onnxruntime releases back to 1.14 can load them (opset 17 <-> IR 8).
OPSET = 17
ML_OPSET = 3
IR_VERSION = 8
PRODUCER = "vigil.tools.examples"
# Both examples are row-wise (each output row depends only on its input row), so they declare
# batching; the deployment's user_config.max_batch_rows caps it further at run time.
BREAST_CANCER_MAX_BATCH_ROWS = 1024
MLP_MAX_BATCH_ROWS = 256

BREAST_CANCER_INPUTS = (TensorSpec("input", "FP32", (-1, 30), allow_non_finite=False),)
BREAST_CANCER_OUTPUTS = (
    TensorSpec("label", "INT64", (-1,)),
    TensorSpec("probabilities", "FP32", (-1, 2)),
)
MLP_IN, MLP_HIDDEN, MLP_OUT = 256, (1024, 1024, 1024), 10
MLP_INPUTS = (TensorSpec("input", "FP32", (-1, MLP_IN)),)
MLP_OUTPUTS = (
    TensorSpec("logits", "FP32", (-1, MLP_OUT)),
    TensorSpec("probabilities", "FP32", (-1, MLP_OUT)),
)


def build_examples(
    root: Path, force: bool = False, progress: bool | None = None
) -> list[ModelVersion]:
    """Build breast_cancer/1 (with its reference data, held-out set and reference profile, all
    inside the version) and mlp/1 (no profile: the monitor keeps only its latency and errors)
    under root; existing versions are kept unless force (a profile of an older format is
    rebuilt)."""
    root = Path(root)
    cancer = _breast_cancer(root, force, progress)
    if not _loads(cancer):
        profile_version(cancer.path, cancer.path / REFERENCE_FILE, outputs_from_model=True,
                        progress=progress)
    return [cancer, _mlp(root, force)]


def _loads(version: ModelVersion) -> bool:
    """Whether the version's profile can be used (one of an older format is rebuilt)."""
    if not version.has_profile:
        return False
    try:
        Profile.load(version.path)
    except (ValueError, OSError, KeyError):
        return False
    return True


def _existing(
    root: Path, name: str, force: bool, extra: tuple[str, ...] = ()
) -> ModelVersion | None:
    """The published version to reuse, or None after clearing the way for a rebuild: with
    `force`, or when an older build left the version without the `extra` files it now holds
    (they are written with the version, never added to one)."""
    version_dir = root / name / VERSION
    complete = all((version_dir / f).exists() for f in (MANIFEST_FILE, *extra))
    if force or not complete:
        shutil.rmtree(version_dir, ignore_errors=True)
        return None
    return ModelVersion(version_dir, read_manifest(version_dir))


@dataclass(frozen=True)
class _Trained:
    """The breast cancer classifier and the data it was trained and tested on."""

    onnx_bytes: bytes
    features: list[str]
    classes: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # file name -> (x, y): reference, held-out
    accuracy: float


def _breast_cancer(root: Path, force: bool, progress: bool | None) -> ModelVersion:
    if (found := _existing(root, "breast_cancer", force, (REFERENCE_FILE, HOLDOUT_FILE))) is not None:
        return found
    trained = _train_breast_cancer()
    manifest = VersionManifest(
        name="breast_cancer", version=VERSION, sha256=hashlib.sha256(trained.onnx_bytes).hexdigest(),
        inputs=BREAST_CANCER_INPUTS, outputs=BREAST_CANCER_OUTPUTS,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        metadata={
            "task": "binary classification",
            "feature_names": trained.features,
            "classes": trained.classes,
            "training_rows": len(trained.splits[REFERENCE_FILE][1]),
            "test_accuracy": trained.accuracy,
            "source": "sklearn.datasets.load_breast_cancer",
            "evaluation": {"data": HOLDOUT_FILE, "target": "target", "task": "classification",
                           "output": "probabilities", "margin": 0.01},
        },
        max_batch_rows=BREAST_CANCER_MAX_BATCH_ROWS,
    )
    frames = {name: _parquet(trained.features, x, y) for name, (x, y) in trained.splits.items()}
    # The version appears whole: model, reference data, held-out set and profile at once.
    with tempfile.TemporaryDirectory(prefix="vigil-examples-") as scratch:
        reference = Path(scratch) / REFERENCE_FILE
        reference.write_bytes(frames[REFERENCE_FILE])
        return write_version(
            root, manifest, trained.onnx_bytes, reference=reference, outputs_from_model=True,
            progress=progress, extra_files={HOLDOUT_FILE: frames[HOLDOUT_FILE]},
        ).version


def _train_breast_cancer() -> _Trained:
    # Imported here: the serving path must not need the training stack.
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    # Train on float32 so the reference set is exactly what the model saw and what it serves.
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    clf = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("scaler", StandardScaler()), ("classifier", clf)]).fit(x_train, y_train)
    proto = convert_sklearn(
        pipe,
        name="breast_cancer",  # skl2onnx names the graph with a random uuid otherwise
        initial_types=[("input", FloatTensorType([None, 30]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, 2])),
        ],
        options={id(clf): {"zipmap": False}},
        # A ceiling: skl2onnx emits the lowest opsets the graph needs (today 9 and ml 1).
        target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET},
    )
    return _Trained(
        serialize(proto), [str(n) for n in data.feature_names],
        [str(c) for c in data.target_names],
        {REFERENCE_FILE: (x_train, y_train), HOLDOUT_FILE: (x_test, y_test)},
        float(round(pipe.score(x_test, y_test), 4)),
    )


def _parquet(features: list[str], x: np.ndarray, y: np.ndarray) -> bytes:
    """Features and `target` as snappy parquet bytes (the same rows, the same bytes)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame(x, columns=features)
    frame["target"] = y
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink, compression="snappy")
    return bytes(sink.getvalue().to_pybytes())


def _mlp(root: Path, force: bool) -> ModelVersion:
    if (found := _existing(root, "mlp", force)) is not None:
        return found
    rng = np.random.default_rng(0)
    widths = (MLP_IN, *MLP_HIDDEN, MLP_OUT)
    initializers, nodes = [], []
    current = "input"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}"),
        ]
        last = i == len(widths) - 2
        gemm_out = "logits" if last else f"gemm{i}"
        nodes.append(
            helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out], name=f"gemm{i}")
        )
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"relu{i}"], name=f"relu{i}"))
            current = f"relu{i}"
    nodes.append(
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1, name="softmax")
    )

    def tensor(name: str, width: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    graph = helper.make_graph(
        nodes,
        "mlp",
        [tensor("input", MLP_IN)],
        [tensor("logits", MLP_OUT), tensor("probabilities", MLP_OUT)],
        initializer=initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return publish(
        root,
        "mlp",
        VERSION,
        serialize(proto),
        MLP_INPUTS,
        MLP_OUTPUTS,
        metadata={"task": "synthetic throughput benchmark", "hidden_layers": list(MLP_HIDDEN)},
        max_batch_rows=MLP_MAX_BATCH_ROWS,
    )


def serialize(proto: onnx.ModelProto) -> bytes:
    """The model's bytes, checked, with the header fields that otherwise follow the installed
    library versions pinned: the same graph, the same bytes."""
    proto.ir_version = IR_VERSION
    proto.producer_name = PRODUCER
    proto.producer_version = "1"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(deterministic=True)


