"""The Open Inference Protocol (KServe V2) vocabulary: datatypes, errors and request shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vigil.tensors import V2_TO_NUMPY
from vigil.tensors import TensorSpec as TensorSpec  # re-exported: part of the wire vocabulary

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

# Binary tensor data extension header (KServe V2 / Triton).
HEADER_LENGTH = "inference-header-content-length"
SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository_versions")


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


class InferenceError(Exception):
    """An error with the HTTP status it maps to; the message is safe to return to the client."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        if status_code is not None:
            self.status_code = status_code


class BadRequest(InferenceError):
    status_code = 400


class NotFound(InferenceError):
    status_code = 404


class NotReady(InferenceError):
    status_code = 503


class PayloadTooLarge(InferenceError):
    status_code = 413


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class DeclaredInput:
    """An input as the request declares it, before its data is decoded: `data` is the parsed
    JSON value, or, for binary data, `binary` is its (offset, size) in the binary part."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None
    binary: tuple[int, int] | None = None


@dataclass(slots=True)
class ParsedRequest:
    """A request whose JSON header is read and checked, its tensor data not yet decoded."""

    inputs: list[DeclaredInput]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_length: int = 0  # bytes of binary tensor data after the JSON header


@dataclass(slots=True)
class InferenceRequest:
    """A decoded request: named numpy tensors plus what the client asked to get back."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def fit_datatype(name: str, values: np.ndarray, datatype: str) -> np.ndarray:
    """`values` as the floating-point `datatype`, refusing finite values that the narrower type
    cannot hold (1e39 as FP32 would become inf): a BadRequest naming the input."""
    target = V2_TO_NUMPY[datatype]
    if values.dtype == target or not values.size:
        return values.astype(target, copy=False)
    if values.dtype.kind == "f" and values.dtype.itemsize <= target.itemsize:
        return values.astype(target)  # widening is exact
    if values.dtype.kind == "f" and abs(values).max() <= np.finfo(target).max:
        return values.astype(target)  # all finite and in range: the common case, one pass
    with np.errstate(over="ignore"):
        out = values.astype(target)
    overflow = np.isinf(out)
    if values.dtype.kind == "f":
        overflow &= np.isfinite(values)  # an Inf sent as Inf is no overflow
    if overflow.any():
        bad = values.ravel()[int(np.flatnonzero(overflow.ravel())[0])]
        shown = f"{float(bad):g}" if values.dtype.kind == "f" else str(int(bad))
        raise BadRequest(f"input '{name}': value {shown} overflows {datatype}")
    return out
