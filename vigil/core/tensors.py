"""The tensor vocabulary every floor shares: V2 datatype names, their numpy and ONNX types, which
casts are safe, and tensor specs. One table each; no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# One table: V2 datatype name -> numpy dtype. BYTES tensors are numpy object arrays of bytes.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}

# ONNX tensor element types as onnxruntime names them -> V2 datatype.
ONNX_TO_V2: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Casts accepted beyond an exact match: numpy's "safe" casts (no value can change), plus
# FP64 -> FP32, because most clients produce float64 by default for float32 models.
EXTRA_CASTS: frozenset[tuple[str, str]] = frozenset({("FP64", "FP32")})


def element_size(datatype: str) -> int | None:
    """Bytes per element for fixed-size datatypes; None for BYTES."""
    if datatype == "BYTES":
        return None
    return V2_TO_NUMPY[datatype].itemsize


def can_cast(source: str, target: str) -> bool:
    """Whether a tensor of `source` datatype may be fed to an input declared as `target`."""
    if source == target:
        return True
    if source == "BYTES" or target == "BYTES":
        return False
    if (source, target) in EXTRA_CASTS:
        return True
    return bool(np.can_cast(V2_TO_NUMPY[source], V2_TO_NUMPY[target], casting="safe"))


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model signature. -1 marks a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    allow_non_finite: bool = True

    def to_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @property
    def has_batch_axis(self) -> bool:
        """A dynamic leading dimension: rows of several requests can be stacked along it."""
        return len(self.shape) >= 1 and self.shape[0] == -1
