"""The tensor vocabulary both sides share: V2 datatype names, their numpy dtypes, tensor specs."""

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
