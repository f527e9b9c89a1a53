"""The V2 vocabulary: the datatype table, safe casts, element sizes, errors, request shapes."""

from __future__ import annotations

import numpy as np
import pytest

from serving.protocol import (
    EXTRA_CASTS,
    NUMPY_TO_V2,
    ONNX_TO_V2,
    V2_TO_NUMPY,
    BadRequest,
    InferenceError,
    InferenceRequest,
    NotFound,
    NotReady,
    PayloadTooLarge,
    TensorSpec,
    can_cast,
    element_size,
)

ALL = sorted(V2_TO_NUMPY)


def test_datatype_tables_are_consistent() -> None:
    assert ALL == [
        "BOOL", "BYTES", "FP16", "FP32", "FP64", "INT16", "INT32", "INT64", "INT8",
        "UINT16", "UINT32", "UINT64", "UINT8",
    ]  # fmt: skip
    assert {NUMPY_TO_V2[dtype] for dtype in V2_TO_NUMPY.values()} == set(ALL)
    assert sorted(ONNX_TO_V2.values()) == ALL
    assert ONNX_TO_V2["tensor(float)"] == "FP32"
    assert ONNX_TO_V2["tensor(double)"] == "FP64"
    assert ONNX_TO_V2["tensor(string)"] == "BYTES"


@pytest.mark.parametrize(
    ("datatype", "size"),
    [
        ("BOOL", 1), ("INT8", 1), ("INT16", 2), ("INT32", 4), ("INT64", 8),
        ("UINT8", 1), ("UINT16", 2), ("UINT32", 4), ("UINT64", 8),
        ("FP16", 2), ("FP32", 4), ("FP64", 8), ("BYTES", None),
    ],
)  # fmt: skip
def test_element_size(datatype: str, size: int | None) -> None:
    assert element_size(datatype) == size


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("FP32", "FP32", True),
        ("BYTES", "BYTES", True),
        ("FP16", "FP32", True),  # widening float
        ("FP32", "FP64", True),
        ("FP64", "FP32", True),  # EXTRA_CASTS: the usual client default
        ("FP32", "FP16", False),
        ("FP64", "FP16", False),  # only FP64 -> FP32 is the extra
        ("INT32", "FP32", False),  # int32 does not fit a float32 mantissa
        ("INT32", "FP64", True),
        ("INT64", "FP64", True),  # numpy calls this safe, though it rounds above 2**53
        ("INT8", "FP16", True),
        ("INT16", "FP16", False),
        ("INT8", "INT16", True),
        ("INT64", "INT32", False),
        ("UINT8", "INT16", True),
        ("UINT8", "INT8", False),
        ("UINT64", "INT64", False),
        ("INT8", "UINT8", False),
        ("BOOL", "INT8", True),
        ("BOOL", "FP32", True),
        ("INT8", "BOOL", False),
        ("FP32", "INT64", False),
        ("BYTES", "FP32", False),
        ("FP32", "BYTES", False),
        ("UINT8", "BYTES", False),
    ],
)
def test_can_cast(source: str, target: str, allowed: bool) -> None:
    assert can_cast(source, target) is allowed


def test_extra_casts_are_exactly_fp64_to_fp32() -> None:
    assert EXTRA_CASTS == frozenset({("FP64", "FP32")})


def test_every_datatype_casts_to_itself_and_never_to_or_from_bytes() -> None:
    for datatype in ALL:
        assert can_cast(datatype, datatype)
        if datatype != "BYTES":
            assert not can_cast(datatype, "BYTES")
            assert not can_cast("BYTES", datatype)


def test_error_status_codes() -> None:
    assert BadRequest("x").status_code == 400
    assert NotFound("x").status_code == 404
    assert PayloadTooLarge("x").status_code == 413
    assert NotReady("x").status_code == 503
    assert InferenceError("x").status_code == 400
    assert InferenceError("x", status_code=409).status_code == 409
    assert BadRequest("x").status_code == 400  # an override does not leak to the class
    assert str(NotFound("model 'm' is not served")) == "model 'm' is not served"
    assert issubclass(PayloadTooLarge, InferenceError)


def test_request_rows() -> None:
    two = InferenceRequest(inputs={"a": np.zeros((2, 3)), "b": np.zeros((7,))})
    assert two.rows == 2
    assert InferenceRequest(inputs={"s": np.array(5)}).rows == 1
    assert InferenceRequest(inputs={}).rows == 0
    assert two.outputs is None and two.binary_output_default is False and two.parameters == {}


def test_tensor_spec_metadata() -> None:
    spec = TensorSpec("input", "FP32", (-1, 30), allow_non_finite=False)
    assert spec.to_metadata() == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}
    assert TensorSpec("x", "INT64", (-1,)).allow_non_finite is True
