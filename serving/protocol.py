"""The Open Inference Protocol (KServe V2) vocabulary: errors, request shapes and the binary
extension's header (the datatype tables are vigil.core.tensors', shared with every floor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import version as package_version
from typing import Any

import numpy as np

from vigil.core.tensors import V2_TO_NUMPY

# Binary tensor data extension header (KServe V2 / Triton).
HEADER_LENGTH = "inference-header-content-length"
SERVER_EXTENSIONS = ("binary_tensor_data", "model_repository_versions")
SERVER_NAME = "vigil"
SERVER_VERSION = package_version("vigil")


class Reason(StrEnum):
    """Why a request ended as it did: the `reason` label of the request metrics, a fixed set.
    A 4xx is the caller's doing; a 5xx the server's, and the model's own faults have their own
    reasons, so that a broken model shows in error ratios and is told apart from Vigil's bugs."""

    OK = "ok"
    CLIENT = "client"  # 4xx: the request was refused (bad input, unknown model, too large)
    NOT_READY = "not_ready"  # 503: the model or version is not served here now
    MODEL_RUN = "model_run"  # 502: the model failed while running on an accepted request
    MODEL_OUTPUT = "model_output"  # 502: the model answered what the protocol cannot carry
    SHADOW_REFUSED = "shadow_refused"  # 502: a shadow refused inputs its production took
    INTERNAL = "internal"  # 500: a fault of Vigil's own (a bug; logged with its traceback)
    CANCELLED = "cancelled"  # 499: the client went away, or Ray's request timeout ran out


class InferenceError(Exception):
    """An error with the HTTP status it maps to; the message is safe to return to the client."""

    status_code = 400
    reason = Reason.CLIENT

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
    reason = Reason.NOT_READY


class NotLoaded(NotReady):
    """A published version this replica has not loaded (no alias points at it): loadable on
    demand."""


class PayloadTooLarge(InferenceError):
    status_code = 413


class BodyTimeout(InferenceError):
    """The body did not arrive within its deadline (serving.pacing): 408, its slot freed."""

    status_code = 408


class ModelFault(InferenceError):
    """The model's doing, after the request was accepted: 502 Bad Gateway. The model is the
    replica's upstream: Vigil itself works, what it relies on answered badly. 500 stays for
    Vigil's own bugs, and 503 would say "try again later", wrong for a model that fails the same
    way every time. Any 5xx counts in the monitor's error_ratio."""

    status_code = 502
    reason = Reason.MODEL_RUN


class ModelRunFailed(ModelFault):
    """onnxruntime raised while running the model (the cause is chained, and logged)."""


class UnsendableOutput(ModelFault):
    """The model's output cannot travel as the client asked (NaN or Inf in JSON)."""

    reason = Reason.MODEL_OUTPUT


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


# The largest finite value of each float datatype (np.finfo costs a call per request).
_LARGEST = {t: np.finfo(t).max for t in V2_TO_NUMPY.values() if t.kind == "f"}


def fit_datatype(name: str, values: np.ndarray, datatype: str) -> np.ndarray:
    """`values` as the floating-point `datatype`, refusing finite values that the narrower type
    cannot hold (1e39 as FP32 would become inf): a BadRequest naming the input."""
    target = V2_TO_NUMPY[datatype]
    if values.dtype == target or not values.size:
        return values.astype(target, copy=False)
    if values.dtype.kind == "f" and values.dtype.itemsize <= target.itemsize:
        return values.astype(target)  # widening is exact
    if values.dtype.kind == "f" and abs(values).max() <= _LARGEST[target]:
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
