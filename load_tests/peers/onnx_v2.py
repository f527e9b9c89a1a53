"""What every peer shares: one onnxruntime session per model (1 intra-op thread, as Vigil's
replicas) and the V2 JSON tensors in and out, with numpy only (no Vigil imports)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPOSITORY_ENV = "BENCH_MODEL_REPOSITORY"
_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(int64)": "INT64",
       "tensor(int32)": "INT32"}  # fmt: skip
_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    session: ort.InferenceSession
    input_name: str
    width: int
    outputs: tuple[tuple[str, str], ...]  # (name, V2 datatype)

    def run(self, rows: np.ndarray) -> list[np.ndarray]:
        return self.session.run([n for n, _ in self.outputs], {self.input_name: rows})


def open_model(name: str, repository: str | None = None) -> Model:
    """The newest numbered version of `name` under the repository (BENCH_MODEL_REPOSITORY)."""
    root = Path(repository or os.environ[REPOSITORY_ENV]) / name
    versions = [p for p in root.iterdir() if p.name.isdigit() and (p / "model.onnx").is_file()]
    chosen = max(versions, key=lambda p: int(p.name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(chosen / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    first = session.get_inputs()[0]
    return Model(name, chosen.name, session, first.name, int(first.shape[1]),
                 tuple((o.name, _V2[o.type]) for o in session.get_outputs()))  # fmt: skip


def model_names(repository: str | None = None) -> list[str]:
    root = Path(repository or os.environ[REPOSITORY_ENV])
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/model.onnx")))


class BadInput(ValueError):
    """The request's tensor does not fit the model."""


def decode(model: Model, inputs: Any) -> np.ndarray:
    """The one FP32 [N, width] input of a V2 JSON request's `inputs` list, checked."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadInput("expected one input tensor")
    tensor = inputs[0]
    if tensor.get("name") != model.input_name or tensor.get("datatype") != "FP32":
        raise BadInput(f"expected FP32 input '{model.input_name}'")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 2 or shape[1] != model.width:
        raise BadInput(f"expected shape [N, {model.width}], got {shape}")
    data = np.asarray(tensor.get("data"), dtype=np.float32)
    if data.size != shape[0] * shape[1]:
        raise BadInput(f"{data.size} values for shape {shape}")
    return data.reshape(shape)


def encode(model: Model, results: list[np.ndarray]) -> dict[str, Any]:
    """A V2 JSON response body (as a dict) for one request's outputs."""
    return {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [
            {"name": name, "datatype": dt, "shape": list(r.shape), "data": r.ravel().tolist()}
            for (name, dt), r in zip(model.outputs, results, strict=True)
        ],
    }


def to_numpy_dtype(datatype: str) -> type:
    return _NUMPY[datatype]
