"""Deterministic builder of the bundled example models."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from monitoring.profile import Profile
from vigil.core.files import atomic_write
from vigil.tools.profiles import profile_version
from vigil.core.repository import MANIFEST_FILE, ModelVersion, publish, read_manifest
from vigil.core.tensors import TensorSpec

VERSION = "1"
REFERENCE_FILE = "reference.parquet"
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
    """Build breast_cancer/1 (with its reference profile) and mlp/1 (no profile: the monitor
    keeps only its latency and errors) under root; existing versions and profiles are kept
    unless force."""
    root = Path(root)
    cancer = _breast_cancer(root, force)
    _reference_profile(cancer, progress)
    return [cancer, _mlp(root, force)]


def _reference_profile(version: ModelVersion, progress: bool | None) -> None:
    """profile.json + profile.npz beside the version, from its reference.parquet (the `target`
    column is not an input, so it is left out) with the outputs the model gives on it."""
    if version.has_profile and _loads(version):
        return
    profile_version(
        version.path, version.path / REFERENCE_FILE, outputs_from_model=True, progress=progress
    )


def _loads(version: ModelVersion) -> bool:
    """Whether the version's profile can be used (one of an older format is rebuilt)."""
    try:
        Profile.load(version.path)
    except (ValueError, OSError, KeyError):
        return False
    return True


def _existing(
    root: Path, name: str, force: bool, extra: tuple[str, ...] = ()
) -> ModelVersion | None:
    """The published version to reuse, or None after clearing the way for a rebuild."""
    version_dir = root / name / VERSION
    if force:
        shutil.rmtree(version_dir, ignore_errors=True)
        return None
    complete = all((version_dir / f).exists() for f in (MANIFEST_FILE, *extra))
    return ModelVersion(version_dir, read_manifest(version_dir)) if complete else None


def _breast_cancer(root: Path, force: bool) -> ModelVersion:
    if (found := _existing(root, "breast_cancer", force, (REFERENCE_FILE, HOLDOUT_FILE))) is not None:
        return found
    # Imported here: the serving path must not need the training stack.
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    features = [str(n) for n in data.feature_names]
    # Train on float32 so the reference set is exactly what the model saw and what it serves.
    x = data.data.astype(np.float32)
    y = data.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    clf = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("scaler", StandardScaler()), ("classifier", clf)]).fit(x_train, y_train)
    accuracy = float(round(pipe.score(x_test, y_test), 4))

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
    version = publish(
        root,
        "breast_cancer",
        VERSION,
        _serialize(proto),
        BREAST_CANCER_INPUTS,
        BREAST_CANCER_OUTPUTS,
        metadata={
            "task": "binary classification",
            "feature_names": features,
            "classes": [str(c) for c in data.target_names],
            "training_rows": len(y_train),
            "test_accuracy": accuracy,
            "source": "sklearn.datasets.load_breast_cancer",
            "evaluation": {"data": HOLDOUT_FILE, "target": "target", "task": "classification",
                           "output": "probabilities", "margin": 0.01},
        },
        max_batch_rows=BREAST_CANCER_MAX_BATCH_ROWS,
    )
    # Written beside model.onnx after publish, atomically: never a half-written file.
    for file_name, (x_part, y_part) in {REFERENCE_FILE: (x_train, y_train),
                                        HOLDOUT_FILE: (x_test, y_test)}.items():
        frame = pd.DataFrame(x_part, columns=features)
        frame["target"] = y_part
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink,
                       compression="snappy")
        atomic_write(version.path / file_name, sink.getvalue().to_pybytes())
    return version


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
        _serialize(proto),
        MLP_INPUTS,
        MLP_OUTPUTS,
        metadata={"task": "synthetic throughput benchmark", "hidden_layers": list(MLP_HIDDEN)},
        max_batch_rows=MLP_MAX_BATCH_ROWS,
    )


def _serialize(proto: onnx.ModelProto) -> bytes:
    # Pin the header fields that otherwise follow the installed library versions.
    proto.ir_version = IR_VERSION
    proto.producer_name = PRODUCER
    proto.producer_version = "1"
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(deterministic=True)
