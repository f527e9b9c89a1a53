"""The V2 vocabulary (vigil.core.tensors' datatype tables, safe casts, element sizes; serving.protocol's
errors and fitting), one table each."""

from __future__ import annotations

import numpy as np
import pytest

from serving.protocol import BadRequest, fit_datatype
from vigil.core.tensors import NUMPY_TO_V2, ONNX_TO_V2, V2_TO_NUMPY, TensorSpec, can_cast

ALL = sorted(V2_TO_NUMPY)


def test_datatype_tables_invert_each_other_and_cover_onnx() -> None:
    assert {NUMPY_TO_V2[dtype] for dtype in V2_TO_NUMPY.values()} == set(ALL)
    assert sorted(ONNX_TO_V2.values()) == ALL


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


def test_every_datatype_casts_to_itself_and_never_to_or_from_bytes() -> None:
    for datatype in ALL:
        assert can_cast(datatype, datatype)
        if datatype != "BYTES":
            assert not can_cast(datatype, "BYTES")
            assert not can_cast("BYTES", datatype)


@pytest.mark.parametrize(
    ("values", "datatype", "message"),
    [
        (np.array([1.0, 1e39]), "FP32", "input 'x': value 1e+39 overflows FP32"),
        (np.array([-3.5e38]), "FP32", "input 'x': value -3.5e+38 overflows FP32"),
        (np.array([1e300]), "FP32", "input 'x': value 1e+300 overflows FP32"),
        (np.array([65520.0], np.float32), "FP16", "input 'x': value 65520 overflows FP16"),
        (np.array([1, 70000]), "FP16", "input 'x': value 70000 overflows FP16"),
    ],
)
def test_fit_datatype_refuses_overflow(values, datatype, message) -> None:
    with pytest.raises(BadRequest) as info:
        fit_datatype("x", values, datatype)
    assert str(info.value) == message


def test_fit_datatype_keeps_what_fits_and_what_was_already_infinite() -> None:
    got = fit_datatype("x", np.array([3.4028234e38, np.inf, -np.inf, np.nan, 1e-50]), "FP32")
    assert got.dtype == np.float32
    assert np.isinf(got[1:3]).all() and np.isnan(got[3]) and got[4] == 0.0
    assert np.isfinite(got[0])
    assert fit_datatype("x", np.array([1, 2], np.int64), "FP64").dtype == np.float64


def test_tensor_spec_metadata() -> None:
    spec = TensorSpec("input", "FP32", (-1, 30), allow_non_finite=False)
    assert spec.to_metadata() == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}
    assert TensorSpec("x", "INT64", (-1,)).allow_non_finite is True
