"""Wire format <-> numpy: JSON tensors, the binary extension, requested outputs, every bad input.

The request bodies here are built and the responses parsed by small helpers written against the
KServe V2 text, not by the codec itself, so a codec bug cannot cancel itself out."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.codecs import (
    decode_inputs,
    decode_request,
    encode_response,
    parse_header,
    parse_header_length,
    parse_request,
)
from serving.protocol import (
    BadRequest,
    InferenceRequest,
    Reason,
    RequestedOutput,
    UnsendableOutput,
)
from vigil.core.tensors import V2_TO_NUMPY
from serving.runtime import _datatype_of

DATATYPES = sorted(V2_TO_NUMPY)
_LEN = struct.Struct("<I")


# ---------------------------------------------------------------- helpers (independent of codecs)


def _raw(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(_LEN.pack(len(v)) + v for v in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def _json_data(datatype: str, array: np.ndarray, nested: bool = False) -> Any:
    if datatype == "BYTES":
        flat = [v.decode() for v in array.ravel()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist() if nested else flat
    return array.tolist() if nested else array.ravel().tolist()


def request_body(
    tensors: list[tuple[str, str, np.ndarray, bool]], **extra: Any
) -> tuple[bytes, int | None]:
    """(name, datatype, array, binary) -> body and Inference-Header-Content-Length."""
    entries, tail = [], []
    for name, datatype, array, binary in tensors:
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype}
        if binary:
            raw = _raw(datatype, array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _json_data(datatype, array)
        entries.append(entry)
    header = orjson.dumps({"inputs": entries, **extra})
    if not tail:
        return header, None
    return header + b"".join(tail), len(header)


def parse_response(body: bytes, header_length: int | None) -> tuple[dict, dict[str, np.ndarray]]:
    """A V2 response -> its JSON header and name -> array (binary tail parsed by hand)."""
    header = orjson.loads(body if header_length is None else body[:header_length])
    tail = b"" if header_length is None else body[header_length:]
    arrays, offset = {}, 0
    for out in header["outputs"]:
        shape, datatype = tuple(out["shape"]), out["datatype"]
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            if datatype == "BYTES":
                flat = np.empty(len(out["data"]), dtype=object)
                flat[:] = [s.encode() for s in out["data"]]
            else:
                flat = np.array(out["data"], dtype=V2_TO_NUMPY[datatype])
            arrays[out["name"]] = flat.reshape(shape)
            continue
        chunk = tail[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            items, pos = [], 0
            while pos < len(chunk):
                (n,) = _LEN.unpack_from(chunk, pos)
                items.append(chunk[pos + 4 : pos + 4 + n])
                pos += 4 + n
            flat = np.empty(len(items), dtype=object)
            flat[:] = items
            arrays[out["name"]] = flat.reshape(shape)
        else:
            dtype = V2_TO_NUMPY[datatype].newbyteorder("<")
            arrays[out["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
    assert offset == len(tail), "response carries binary bytes that no output claims"
    return header, arrays


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Exactly equal: dtype, shape and every bit (NaN payloads and -0.0 included)."""
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.dtype == object
        assert all(type(v) is bytes for v in actual.ravel())
        assert actual.ravel().tolist() == expected.ravel().tolist()
    else:
        assert actual.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
        assert (
            actual.astype(actual.dtype.newbyteorder("<")).tobytes()
            == expected.astype(expected.dtype.newbyteorder("<")).tobytes()
        )


def _bytes_array(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


# One hand-built tensor per datatype, holding its extreme values.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, -1, 127], [0, 1, 2]], np.int8),
    "INT16": np.array([[-32768, -1, 32767], [0, 1, 2]], np.int16),
    "INT32": np.array([[-(2**31), -1, 2**31 - 1], [0, 1, 2]], np.int32),
    "INT64": np.array([[-(2**63), -1, 2**63 - 1], [0, 1, 2**53 + 1]], np.int64),
    "UINT8": np.array([[0, 1, 255], [2, 3, 4]], np.uint8),
    "UINT16": np.array([[0, 1, 65535], [2, 3, 4]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [2, 3, 4]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1], [2**63, 3, 2**53 + 1]], np.uint64),
    "FP16": np.array([[-65504.0, 0.1, 6e-8], [-0.0, 1.0, 0.333]], np.float16),
    "FP32": np.array([[3.4028235e38, -1.1754944e-38, 0.1], [1e-45, -0.0, 1 / 3]], np.float32),
    "FP64": np.array([[1.7976931348623157e308, 5e-324, 0.1], [-0.0, 1 / 3, -2.5]], np.float64),
    "BYTES": _bytes_array([b"", b"caf\xc3\xa9", b"a", b"{}", b"\xe2\x82\xac", b"x" * 300], (2, 3)),
}


def _decode_one(body: bytes, header_length: int | None = None) -> np.ndarray:
    (array,) = decode_request(body, header_length).inputs.values()
    return array


# ---------------------------------------------------------------- JSON tensors


def test_json_flat_data() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4.5, 5, 6]}]}'
    request = decode_request(body)
    x = request.inputs["x"]
    assert x.dtype == np.float32 and x.shape == (2, 3)
    np.testing.assert_array_equal(x, np.array([[1, 2, 3], [4.5, 5, 6]], np.float32))
    assert request.id is None and request.outputs is None
    assert request.binary_output_default is False and request.parameters == {}


def test_json_nested_data_equals_flat() -> None:
    nested = b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, -2], [3, 4]]}]}'
    flat = (
        b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, -2, 3, 4]}]}'
    )
    assert_same(_decode_one(nested), np.array([[1, -2], [3, 4]], np.int64))
    assert_same(_decode_one(flat), np.array([[1, -2], [3, 4]], np.int64))


def test_json_nested_bytes_and_scalar() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "s", "shape": [2, 1], "datatype": "BYTES", "data": [["ab"], ["€"]]},
                {"name": "k", "shape": [], "datatype": "FP64", "data": 2.5},
            ]
        }
    )
    inputs = decode_request(body).inputs
    assert_same(inputs["s"], _bytes_array([b"ab", "€".encode()], (2, 1)))
    assert_same(inputs["k"], np.array(2.5))


def test_json_ints_and_bools_where_allowed() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "f", "shape": [3], "datatype": "FP32", "data": [1, -2, 3]},
                {"name": "b", "shape": [3], "datatype": "BOOL", "data": [1, 0, 1]},
                {"name": "t", "shape": [2], "datatype": "BOOL", "data": [True, False]},
            ]
        }
    )
    inputs = decode_request(body).inputs
    assert_same(inputs["f"], np.array([1, -2, 3], np.float32))
    assert_same(inputs["b"], np.array([True, False, True]))
    assert_same(inputs["t"], np.array([True, False]))


def test_json_empty_tensors_of_every_numeric_datatype() -> None:
    for datatype in DATATYPES:
        body = orjson.dumps(
            {"inputs": [{"name": "e", "shape": [2, 0], "datatype": datatype, "data": [[], []]}]}
        )
        array = _decode_one(body)
        assert array.shape == (2, 0), datatype
        assert array.dtype == V2_TO_NUMPY[datatype], datatype


def test_json_uint64_above_int64_mixed_with_small_values() -> None:
    # numpy alone would read [1, 2**64 - 1] as float64 and lose the value.
    body = orjson.dumps(
        {"inputs": [{"name": "u", "shape": [3], "datatype": "UINT64", "data": [1, 2**64 - 1, 0]}]}
    )
    assert_same(_decode_one(body), np.array([1, 2**64 - 1, 0], np.uint64))


# ---------------------------------------------------------------- every datatype round trips


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_round_trip_every_datatype(datatype: str, binary: bool) -> None:
    expected = SAMPLES[datatype]
    body, header_length = request_body([("t", datatype, expected, binary)], id="req-1")
    request = decode_request(body, header_length)
    assert request.id == "req-1"
    assert_same(request.inputs["t"], expected)

    payload, json_length = encode_response(
        "m", "3", request.id, [("t", datatype, request.inputs["t"], binary)]
    )
    header, arrays = parse_response(payload, json_length)
    assert header["model_name"] == "m" and header["model_version"] == "3"
    assert header["id"] == "req-1"
    assert header["outputs"][0]["shape"] == list(expected.shape)
    assert header["outputs"][0]["datatype"] == datatype
    assert_same(arrays["t"], expected)
    if binary:
        assert json_length is not None
        assert orjson.loads(payload[:json_length]) == header
        assert header["outputs"][0]["parameters"]["binary_data_size"] == len(payload) - json_length
    else:
        assert json_length is None


@pytest.mark.parametrize("datatype", DATATYPES)
def test_nested_json_round_trip(datatype: str) -> None:
    expected = SAMPLES[datatype]
    entry = {"name": "t", "shape": list(expected.shape), "datatype": datatype}
    entry["data"] = _json_data(datatype, expected, nested=True)
    assert_same(_decode_one(orjson.dumps({"inputs": [entry]})), expected)


def test_binary_bytes_hold_any_bytes() -> None:
    expected = _bytes_array([b"\x00\xff\xfe", b"", b"\x80" * 5, b"ok"], (4,))
    body, header_length = request_body([("b", "BYTES", expected, True)])
    assert_same(_decode_one(body, header_length), expected)
    payload, json_length = encode_response("m", "1", None, [("b", "BYTES", expected, True)])
    assert json_length is not None
    # The tail is 4-byte little-endian lengths, each followed by its bytes.
    assert payload[json_length:] == (
        b"\x03\x00\x00\x00\x00\xff\xfe" + b"\x00\x00\x00\x00"
        + b"\x05\x00\x00\x00" + b"\x80" * 5 + b"\x02\x00\x00\x00ok"
    )  # fmt: skip
    _, arrays = parse_response(payload, json_length)
    assert_same(arrays["b"], expected)


def test_binary_encoding_is_little_endian_row_major() -> None:
    array = np.array([[1, 2], [3, 256]], np.int16)
    payload, json_length = encode_response("m", "1", None, [("x", "INT16", array, True)])
    assert payload[json_length:] == b"\x01\x00\x02\x00\x03\x00\x00\x01"
    big_endian = array.astype(">i2")
    payload, json_length = encode_response("m", "1", None, [("x", "INT16", big_endian, True)])
    assert payload[json_length:] == b"\x01\x00\x02\x00\x03\x00\x00\x01"


# ---------------------------------------------------------------- binary extension


def test_binary_header_length_and_several_inputs_in_order() -> None:
    a = np.array([1, -2, 3], np.int32)
    b = np.array([[0.5, -1.5]], np.float64)
    c = np.array([7], np.uint8)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [3], "datatype": "INT32",
                 "parameters": {"binary_data_size": 12}},
                {"name": "b", "shape": [1, 2], "datatype": "FP64",
                 "parameters": {"binary_data_size": 16}},
                {"name": "c", "shape": [1], "datatype": "UINT8",
                 "parameters": {"binary_data_size": 1}},
            ]
        }
    )  # fmt: skip
    body = header + a.tobytes() + b.tobytes() + c.tobytes()
    inputs = decode_request(body, len(header)).inputs
    assert list(inputs) == ["a", "b", "c"]
    assert_same(inputs["a"], a)
    assert_same(inputs["b"], b)
    assert_same(inputs["c"], c)


def test_binary_mixed_with_json_inputs() -> None:
    tensors = [
        ("j1", "FP32", np.array([[1.5, 2.5]], np.float32), False),
        ("b1", "INT64", np.array([[9, 8]], np.int64), True),
        ("j2", "BYTES", _bytes_array([b"hi"], (1,)), False),
        ("b2", "BYTES", _bytes_array([b"\x00", b"yo"], (1, 2)), True),
        ("b3", "FP16", np.array([0.5, -2.0], np.float16), True),
    ]
    body, header_length = request_body(tensors)
    inputs = decode_request(body, header_length).inputs
    assert list(inputs) == ["j1", "b1", "j2", "b2", "b3"]
    for name, _, expected, _ in tensors:
        assert_same(inputs[name], expected)


def test_zero_sized_binary_tensor() -> None:
    body, header_length = request_body(
        [
            ("e", "FP32", np.zeros((0, 3), np.float32), True),
            ("x", "INT8", np.array([1], np.int8), True),
        ]
    )
    inputs = decode_request(body, header_length).inputs
    assert_same(inputs["e"], np.zeros((0, 3), np.float32))
    assert_same(inputs["x"], np.array([1], np.int8))


def test_header_length_equal_to_body_means_no_binary() -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [5]}]}'
    assert_same(_decode_one(body, len(body)), np.array([5], np.int8))


def test_requested_outputs_binary_flags() -> None:
    body, _ = request_body(
        [("x", "FP32", np.zeros((1, 2), np.float32), False)],
        outputs=[
            {"name": "p", "parameters": {"binary_data": True}},
            {"name": "q"},
            {"name": "r", "parameters": {"binary_data": False}},
        ],
    )
    request = decode_request(body)
    assert request.outputs == [
        RequestedOutput("p", True),
        RequestedOutput("q", False),
        RequestedOutput("r", False),
    ]
    assert request.binary_output_default is False


def test_request_level_binary_data_output_is_the_default() -> None:
    body, _ = request_body(
        [("x", "FP32", np.zeros((1, 2), np.float32), False)],
        outputs=[{"name": "p"}, {"name": "q", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True, "trace": "abc"},
    )
    request = decode_request(body)
    assert request.binary_output_default is True
    assert request.outputs == [RequestedOutput("p", True), RequestedOutput("q", False)]
    assert request.parameters == {"binary_data_output": True, "trace": "abc"}
    without_outputs, _ = request_body(
        [("x", "FP32", np.zeros((1, 2), np.float32), False)],
        parameters={"binary_data_output": True},
    )
    request = decode_request(without_outputs)
    assert request.outputs is None and request.binary_output_default is True


def test_encode_response_mixes_json_and_binary_outputs() -> None:
    label = np.array([1, 0], np.int64)
    proba = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    names = _bytes_array([b"benign", b"malignant"], (2,))
    payload, json_length = encode_response(
        "breast_cancer",
        "1",
        None,
        [
            ("label", "INT64", label, False),
            ("probabilities", "FP32", proba, True),
            ("names", "BYTES", names, True),
        ],
    )
    assert json_length is not None
    header = orjson.loads(payload[:json_length])
    assert header == {
        "model_name": "breast_cancer",
        "model_version": "1",
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 2],
             "parameters": {"binary_data_size": 16}},
            {"name": "names", "datatype": "BYTES", "shape": [2],
             "parameters": {"binary_data_size": 23}},
        ],
    }  # fmt: skip
    assert len(payload) == json_length + 16 + 23
    assert payload[json_length : json_length + 16] == proba.tobytes()
    _, arrays = parse_response(payload, json_length)
    assert_same(arrays["label"], label)
    assert_same(arrays["probabilities"], proba)
    assert_same(arrays["names"], names)


def test_encode_response_json_only_exact_body() -> None:
    payload, json_length = encode_response(
        "m", "2", "abc", [("y", "FP32", np.array([[0.5, -1.0]], np.float32), False)]
    )
    assert json_length is None
    assert payload == (
        b'{"model_name":"m","model_version":"2","id":"abc","outputs":'
        b'[{"name":"y","datatype":"FP32","shape":[1,2],"data":[0.5,-1.0]}]}'
    )


def test_encode_response_non_contiguous_output() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4)[:, ::2]  # a strided view
    payload, _ = encode_response("m", "1", None, [("v", "INT32", array, False)])
    assert orjson.loads(payload)["outputs"][0]["data"] == [0, 2, 4, 6, 8, 10]
    payload, json_length = encode_response("m", "1", None, [("v", "INT32", array, True)])
    _, arrays = parse_response(payload, json_length)
    assert_same(arrays["v"], np.ascontiguousarray(array))


# ---------------------------------------------------------------- bad input


def _one(**entry: Any) -> bytes:
    base = {"name": "feat_x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    base.update(entry)
    return orjson.dumps({"inputs": [{k: v for k, v in base.items() if v is not _DROP}]})


_DROP = object()


def _binary_one(size: int, tail: bytes, **entry: Any) -> tuple[bytes, int]:
    base = {
        "name": "feat_x",
        "shape": [2],
        "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }
    base.update(entry)
    header = orjson.dumps({"inputs": [base]})
    return header + tail, len(header)


_DEEP: Any = [0.0]
for _ in range(70):
    _DEEP = [_DEEP]

BAD_REQUESTS: list[tuple[str, bytes, int | None, str]] = [
    ("malformed json", b'{"inputs": [', None, "not valid JSON"),
    ("not utf-8", b'{"inputs": "\xff"}', None, "not valid JSON"),
    ("empty body", b"", None, "not valid JSON"),
    ("array body", b"[1, 2]", None, "must be a JSON object"),
    ("string body", b'"inputs"', None, "must be a JSON object"),
    ("no inputs", b"{}", None, "'inputs' must be a non-empty list"),
    ("empty inputs", b'{"inputs": []}', None, "'inputs' must be a non-empty list"),
    ("inputs object", b'{"inputs": {"x": 1}}', None, "'inputs' must be a non-empty list"),
    ("input not object", b'{"inputs": [3]}', None, "inputs[0] must be an object"),
    ("no name", _one(name=_DROP), None, "inputs[0] needs a non-empty string 'name'"),
    ("empty name", _one(name=""), None, "inputs[0] needs a non-empty string 'name'"),
    ("int name", _one(name=3), None, "inputs[0] needs a non-empty string 'name'"),
    (
        "duplicate",
        orjson.dumps(
            {"inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}
        ),
        None,
        "input 'feat_x' appears more than once",
    ),
    ("unknown field", _one(contents=[1]), None, "input 'feat_x' has unknown fields ['contents']"),
    ("no shape", _one(shape=_DROP), None, "input 'feat_x': 'shape' must be a list"),
    ("negative dim", _one(shape=[-1]), None, "input 'feat_x': 'shape' must be a list"),
    ("float dim", _one(shape=[2.0]), None, "input 'feat_x': 'shape' must be a list"),
    ("bool dim", _one(shape=[True, 2]), None, "input 'feat_x': 'shape' must be a list"),
    ("string shape", _one(shape="2"), None, "input 'feat_x': 'shape' must be a list"),
    ("17 dims", _one(shape=[1] * 17), None, "input 'feat_x': 'shape' must be a list"),
    ("unknown datatype", _one(datatype="FLOAT32"), None, "input 'feat_x': unknown datatype 'FLOAT32'"),
    ("lowercase datatype", _one(datatype="fp32"), None, "input 'feat_x': unknown datatype 'fp32'"),
    ("list datatype", _one(datatype=["FP32"]), None, "input 'feat_x': unknown datatype ['FP32']"),
    ("no datatype", _one(datatype=_DROP), None, "input 'feat_x': unknown datatype None"),
    ("params list", _one(parameters=[1]), None, "input 'feat_x': 'parameters' must be an object"),
    ("too few", _one(data=[1.0]), None, "input 'feat_x': 1 elements given, shape [2] needs 2"),
    ("too many", _one(shape=[1, 2], data=[[1, 2], [3, 4]]), None,
     "input 'feat_x': 4 elements given, shape [1, 2] needs 2"),
    ("scalar for [2]", _one(data=1.0), None, "input 'feat_x': 1 elements given, shape [2] needs 2"),
    ("ragged", _one(shape=[3], data=[[1, 2], [3]]), None, "input 'feat_x': 'data' is ragged"),
    ("too deep", _one(shape=[1], data=_DEEP), None, "input 'feat_x': 'data' is ragged"),
    ("floats for INT32", _one(datatype="INT32", data=[1.5, 2.0]), None,
     "input 'feat_x': non-integer values in 'data' for datatype INT32"),
    ("whole floats for INT64", _one(datatype="INT64", data=[1.0, 2.0]), None,
     "input 'feat_x': non-integer values in 'data' for datatype INT64"),
    ("floats for BOOL", _one(datatype="BOOL", data=[1.0, 0.0]), None,
     "input 'feat_x': non-integer values in 'data' for datatype BOOL"),
    ("int out of range", _one(datatype="BOOL", data=[1, 2]), None,
     "input 'feat_x': BOOL data must be true/false or 0/1"),
    ("INT8 too big", _one(datatype="INT8", data=[127, 128]), None,
     "input 'feat_x': values out of range for INT8"),
    ("INT8 too small", _one(datatype="INT8", data=[-129, 0]), None,
     "input 'feat_x': values out of range for INT8"),
    ("UINT8 negative", _one(datatype="UINT8", data=[-1, 0]), None,
     "input 'feat_x': values out of range for UINT8"),
    ("UINT8 too big", _one(datatype="UINT8", data=[255, 256]), None,
     "input 'feat_x': values out of range for UINT8"),
    ("INT64 too big", _one(datatype="INT64", data=[0, 2**63]), None,
     "input 'feat_x': values out of range for INT64"),
    ("UINT64 negative", _one(datatype="UINT64", data=[-1, 2**64 - 1]), None,
     "input 'feat_x': values out of range for UINT64"),
    ("past UINT64", _one(datatype="UINT64", data=[0, 1]).replace(b"[0,1]", b"[0,18446744073709551616]"), None,
     "input 'feat_x': non-integer values in 'data' for datatype UINT64"),
    ("bools for FP32", _one(data=[True, False]), None,
     "input 'feat_x': boolean values in 'data' for datatype FP32"),
    ("bools for INT32", _one(datatype="INT32", data=[True, False]), None,
     "input 'feat_x': boolean values in 'data' for datatype INT32"),
    ("strings for FP32", _one(data=["1.0", "2.0"]), None,
     "input 'feat_x': non-numeric values in 'data' for datatype FP32"),
    ("nulls for FP32", _one(data=[None, 1.0]), None,
     "input 'feat_x': non-numeric values in 'data' for datatype FP32"),
    ("object for FP32", _one(data={"a": 1}), None,
     "input 'feat_x': non-numeric values in 'data' for datatype FP32"),
    ("numbers for BYTES", _one(datatype="BYTES", data=[1, 2]), None,
     "input 'feat_x': BYTES data must be strings"),
    ("BYTES count", _one(datatype="BYTES", data=["a"]), None,
     "input 'feat_x': 1 elements given, shape [2] needs 2"),
    ("both data and binary", _one(parameters={"binary_data_size": 8}), None,
     "input 'feat_x' has both 'data' and binary_data_size"),
    ("neither", _one(data=_DROP), None, "input 'feat_x' has neither 'data' nor binary_data_size"),
    ("size disagrees", *_binary_one(12, bytes(12)),
     "input 'feat_x': binary_data_size 12 does not match shape [2] x FP32 (8 bytes)"),
    ("size too small", *_binary_one(4, bytes(4)),
     "input 'feat_x': binary_data_size 4 does not match shape [2] x FP32 (8 bytes)"),
    ("size past end", *_binary_one(8, bytes(7)),
     "input 'feat_x': binary_data_size 8 runs past the end of the body (7 bytes left)"),
    ("binary without header length", _binary_one(8, b"")[0], None,
     "input 'feat_x': binary_data_size 8 runs past the end of the body (0 bytes left)"),
    ("negative size", *_binary_one(-8, bytes(8)),
     "input 'feat_x': binary_data_size must be a non-negative integer"),
    ("string size", *_binary_one("8", bytes(8)),  # type: ignore[arg-type]
     "input 'feat_x': binary_data_size must be a non-negative integer"),
    ("bool size", *_binary_one(True, bytes(1)),  # type: ignore[arg-type]
     "input 'feat_x': binary_data_size must be a non-negative integer"),
    ("trailing bytes", *_binary_one(8, bytes(11)),
     "body has 3 bytes of binary data that no input claims"),
    ("BYTES truncated prefix", *_binary_one(8, b"\x01\x00\x00\x00a\x00\x00\x00", datatype="BYTES"),
     "input 'feat_x': truncated BYTES length prefix"),
    ("BYTES element too long", *_binary_one(8, b"\x05\x00\x00\x00ab\x00\x00", datatype="BYTES"),
     "input 'feat_x': BYTES element runs past its binary_data_size"),
    ("BYTES binary count", *_binary_one(8, b"\x04\x00\x00\x00abcd", datatype="BYTES"),
     "input 'feat_x': 1 elements given, shape [2] needs 2"),
    ("BYTES binary too small", *_binary_one(5, b"\x01\x00\x00\x00a", datatype="BYTES"),
     "input 'feat_x': binary_data_size 5 is too small for 2 BYTES elements"),
    ("BYTES binary extra element", *_binary_one(10, b"\x01\x00\x00\x00a" * 2, datatype="BYTES", shape=[1]),
     "input 'feat_x': 5 bytes of binary data left after the 1 BYTES elements that shape [1] holds"),
    ("BOOL binary 2", *_binary_one(2, b"\x01\x02", datatype="BOOL"),
     "input 'feat_x': BOOL binary data must be bytes 0 or 1"),
    ("BOOL binary 255", *_binary_one(2, b"\xff\x00", datatype="BOOL"),
     "input 'feat_x': BOOL binary data must be bytes 0 or 1"),
    ("ragged nested BYTES", _one(datatype="BYTES", shape=[2, 2], data=[["a", "b"], ["c"]]), None,
     "input 'feat_x': 'data' is ragged"),
    ("ragged nested BYTES, leaf beside a list", _one(datatype="BYTES", shape=[2, 2], data=[["a", "b"], "c"]), None,
     "input 'feat_x': 'data' is ragged"),
    ("nested BYTES deeper than the shape", _one(datatype="BYTES", shape=[2, 1], data=[[["a"]], [["b"]]]), None,
     "input 'feat_x': nested 'data' has shape [2, 1, 1] but the input declares [2, 1]"),
    ("nested BYTES of another shape", _one(datatype="BYTES", shape=[4], data=[["a", "b"], ["c", "d"]]), None,
     "input 'feat_x': nested 'data' has shape [2, 2] but the input declares [4]"),
    ("nested numbers of another shape", _one(shape=[2, 2], data=[[1, 2, 3, 4]]), None,
     "input 'feat_x': nested 'data' has shape [1, 4] but the input declares [2, 2]"),
    ("FP32 overflow", _one(data=[1.0, 1e39]), None, "input 'feat_x': value 1e+39 overflows FP32"),
    ("FP16 overflow", _one(datatype="FP16", data=[1, 70000]), None,
     "input 'feat_x': value 70000 overflows FP16"),
    ("FP16 float overflow", _one(datatype="FP16", data=[-1e5, 1.0]), None,
     "input 'feat_x': value -100000 overflows FP16"),
    ("request parameters null", orjson.dumps({"parameters": None, "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "'parameters' must be an object"),
    ("request parameters false", orjson.dumps({"parameters": False, "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "'parameters' must be an object"),
    ("input parameters null", _one(parameters=None), None, "input 'feat_x': 'parameters' must be an object"),
    ("input parameters empty list", _one(parameters=[]), None, "input 'feat_x': 'parameters' must be an object"),
    ("unknown request field", orjson.dumps({"input": [], "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "request has unknown fields ['input']"),
    ("header length past body", b'{"inputs": []}', 15,
     "Inference-Header-Content-Length 15 is outside the body of 14 bytes"),
    ("header length negative", b'{"inputs": []}', -1,
     "Inference-Header-Content-Length -1 is outside the body of 14 bytes"),
    ("header length cuts the JSON", _one(), 10, "not valid JSON"),
    ("int id", orjson.dumps({"id": 5, "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "'id' must be a string"),
    ("parameters list", orjson.dumps({"parameters": [1], "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "'parameters' must be an object"),
    ("binary_data_output string", orjson.dumps({"parameters": {"binary_data_output": "yes"}, "inputs": [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
     None, "parameters.binary_data_output must be a boolean"),
]  # fmt: skip

_OK_INPUT = [{"name": "feat_x", "shape": [1], "datatype": "FP32", "data": [1]}]
BAD_OUTPUTS: list[tuple[str, Any, str]] = [
    ("object", {"name": "y"}, "'outputs' must be a list"),
    ("string", "y", "'outputs' must be a list"),
    ("item not object", ["y"], "outputs[0] needs a string 'name'"),
    ("no name", [{"name": "y"}, {"parameters": {}}], "outputs[1] needs a string 'name'"),
    ("int name", [{"name": 1}], "outputs[0] needs a string 'name'"),
    ("params list", [{"name": "y", "parameters": [True]}], "output 'y': 'parameters' must be an object"),
    ("binary_data int", [{"name": "y", "parameters": {"binary_data": 1}}], "output 'y': binary_data must be a boolean"),
    ("empty list", [], "'outputs' must not be empty; leave it out to get every output"),
    ("null", None, "'outputs' must be a list"),
    ("duplicate", [{"name": "y"}, {"name": "z"}, {"name": "y"}], "output 'y' is requested more than once"),
    ("params null", [{"name": "y", "parameters": None}], "output 'y': 'parameters' must be an object"),
    ("params empty list", [{"name": "y", "parameters": []}], "output 'y': 'parameters' must be an object"),
    ("unknown field", [{"name": "y", "binary_data": True}], "output 'y' has unknown fields ['binary_data']"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(body, header_length)
    assert info.value.status_code == 400
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("outputs", "message"), [c[1:] for c in BAD_OUTPUTS], ids=[c[0] for c in BAD_OUTPUTS]
)
def test_bad_outputs(outputs: Any, message: str) -> None:
    body = orjson.dumps({"inputs": _OK_INPUT, "outputs": outputs})
    with pytest.raises(BadRequest) as info:
        decode_request(body)
    assert info.value.status_code == 400
    assert message in str(info.value)


@pytest.mark.parametrize("raw", ["12a", " 12", "+12", "-1", "1_2", "\u0661\u0662", "", "1e3", "0x10"])
def test_header_length_must_be_ascii_digits(raw: str) -> None:
    with pytest.raises(BadRequest, match="is not a decimal integer"):
        parse_header_length(raw)


def test_header_length_digits() -> None:
    assert parse_header_length("0") == 0 and parse_header_length("0123") == 123
    assert parse_header_length(None) is None


def test_the_header_is_judged_before_the_binary_part_is_even_there() -> None:
    # 1 MiB of garbage declared as BYTES: parse_header reads only the JSON header and checks the
    # sizes against the binary part's length, so a server can refuse the request by its
    # declaration before the rest of the body arrives, and long before it is decoded.
    tail = b"\xff" * (1 << 20)
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES",
                                       "parameters": {"binary_data_size": len(tail)}}]})
    parsed = parse_header(header, binary_length=len(tail))
    (declared,) = parsed.inputs
    assert (declared.name, declared.datatype, declared.shape, declared.binary) == (
        "x", "BYTES", (1,), (0, len(tail))
    )
    assert parsed.binary_length == len(tail)
    with pytest.raises(BadRequest, match="binary_data_size 1048576 runs past the end of the body "
                                         "\\(1048575 bytes left\\)"):
        parse_header(header, binary_length=len(tail) - 1)
    with pytest.raises(BadRequest, match="BYTES element runs past"):
        decode_inputs(parsed, tail)
    with pytest.raises(BadRequest, match="the body holds 0 bytes of binary data, the header 1048576"):
        decode_inputs(parsed, b"")
    assert parse_request(header + tail, len(header))[0] == parsed


def test_bytes_tensors_are_bounded_by_element_count() -> None:
    body = orjson.dumps({"inputs": [{"name": "s", "shape": [5], "datatype": "BYTES",
                                     "data": ["a", "b", "c", "d", "e"]}]})
    parsed = parse_header(body)
    assert decode_inputs(parsed, max_bytes_elements=5)["s"].shape == (5,)
    with pytest.raises(BadRequest) as info:
        decode_inputs(parsed, max_bytes_elements=4)
    assert info.value.status_code == 413
    assert str(info.value) == (
        "input 's' has 5 BYTES elements; this server takes at most 4 per tensor (max_bytes_elements)"
    )


def test_non_finite_outputs_are_refused_as_json_and_sent_as_binary() -> None:
    """NaN or Inf that a model answers cannot travel as JSON: the model's fault on an accepted
    request (502, reason model_output), never the client's 400; binary carries them."""
    y = np.array([1.0, np.nan, np.inf], np.float32)
    with pytest.raises(UnsendableOutput) as info:
        encode_response("m", "1", None, [("ok", "FP32", np.ones(2, np.float32), False),
                                         ("y", "FP32", y, False)])
    assert (info.value.status_code, info.value.reason) == (502, Reason.MODEL_OUTPUT)
    assert not isinstance(info.value, BadRequest)
    assert str(info.value).startswith("output 'y' holds NaN or Inf, which JSON cannot carry; ask "
                                      "for it as binary data")
    assert '"binary_data": true' in str(info.value)
    body, length = encode_response("m", "1", None, [("y", "FP32", y, True)])
    _, arrays = parse_response(body, length)
    assert_same(arrays["y"], y)


def test_unknown_datatype_message_lists_the_known_ones() -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(_one(datatype="FLOAT32"))
    assert str(info.value) == (
        "input 'feat_x': unknown datatype 'FLOAT32'; expected one of " + str(DATATYPES)
    )


def test_the_offending_input_is_named_among_good_ones() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "good", "shape": [1], "datatype": "INT8", "data": [1]},
                {"name": "bad_one", "shape": [1], "datatype": "INT8", "data": [1000]},
            ]
        }
    )
    with pytest.raises(BadRequest, match=r"^input 'bad_one': values out of range for INT8$"):
        decode_request(body)


# ---------------------------------------------------------------- properties

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)


def _elements(datatype: str, binary: bool) -> st.SearchStrategy:
    if datatype == "BOOL":
        return st.booleans()
    if datatype == "BYTES":
        return st.binary(max_size=8) if binary else _TEXT.map(str.encode)
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "f":
        # JSON has no NaN or Infinity; the binary extension carries every bit pattern.
        return st.floats(width=8 * dtype.itemsize, allow_nan=binary, allow_infinity=binary)
    info = np.iinfo(dtype)
    return st.integers(int(info.min), int(info.max))


@st.composite
def _tensor(draw: st.DrawFn) -> tuple[str, np.ndarray, bool, bool]:
    """A random tensor and whether it travels binary in the request and in the response."""
    datatype = draw(st.sampled_from(DATATYPES))
    binary_in, binary_out = draw(st.booleans()), draw(st.booleans())
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    # Only UTF-8 BYTES and finite floats can travel as JSON, one way or the other.
    elements = _elements(datatype, binary_in and binary_out)
    items = draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))
    if datatype == "BYTES":
        array = _bytes_array(items, shape)
    else:
        array = np.array(items, dtype=V2_TO_NUMPY[datatype]).reshape(shape)
    return datatype, array, binary_in, binary_out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(_tensor(), min_size=1, max_size=4))
def test_property_round_trip(tensors: list[tuple[str, np.ndarray, bool, bool]]) -> None:
    named = [(f"in{i}", d, a, b_in) for i, (d, a, b_in, _) in enumerate(tensors)]
    body, header_length = request_body(named)
    inputs = decode_request(body, header_length).inputs
    assert list(inputs) == [n for n, *_ in named]
    for name, _, expected, _ in named:
        assert_same(inputs[name], expected)
    payload, json_length = encode_response(
        "m", "1", None, [(f"in{i}", t[0], inputs[f"in{i}"], t[3]) for i, t in enumerate(tensors)]
    )
    assert (json_length is None) == (not any(t[3] for t in tensors))
    _, arrays = parse_response(payload, json_length)
    for name, _, expected, _ in named:
        assert_same(arrays[name], expected)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(_tensor(), min_size=1, max_size=4))
def test_property_decoded_arrays_are_exactly_what_the_header_declared(
    tensors: list[tuple[str, np.ndarray, bool, bool]],
) -> None:
    """The server checks a request's signature once, from its header, and only conforms the
    decoded arrays: each must carry the declared datatype and shape, as the check saw them."""
    named = [(f"in{i}", d, a, b_in) for i, (d, a, b_in, _) in enumerate(tensors)]
    body, header_length = request_body(named)
    parsed, binary = parse_request(body, header_length)
    arrays = decode_inputs(parsed, binary)
    assert list(arrays) == [d.name for d in parsed.inputs]
    for declared in parsed.inputs:
        assert arrays[declared.name].shape == tuple(declared.shape)
        assert _datatype_of(arrays[declared.name]) == declared.datatype


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), header_length=st.none() | st.integers(-4, 310))
def test_property_garbage_bytes_only_raise_bad_request(
    body: bytes, header_length: int | None
) -> None:
    try:
        decoded = decode_request(body, header_length)
    except BadRequest as exc:
        assert exc.status_code == 400 and str(exc)
    else:  # garbage that happens to be a valid request decodes to one
        assert isinstance(decoded, InferenceRequest) and decoded.inputs


_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
)
_JSON = st.recursive(
    _JSON_LEAF, lambda c: st.lists(c, max_size=4) | st.dictionaries(_TEXT, c, max_size=3),
    max_leaves=12,
)  # fmt: skip
_SHAPE = st.lists(st.integers(0, 3), max_size=3) | _JSON
_PARAMS = st.none() | st.fixed_dictionaries({"binary_data_size": st.integers(-2, 40) | _JSON})
_INPUT = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["a", "b"]) | _JSON,
        "shape": _SHAPE,
        "datatype": st.sampled_from(DATATYPES) | _JSON,
    },
    optional={"data": _JSON, "parameters": _PARAMS | _JSON, "extra": _JSON},
)
_DOC = st.fixed_dictionaries(
    {"inputs": st.lists(_INPUT, max_size=3) | _JSON},
    optional={"id": _JSON, "outputs": _JSON, "parameters": _JSON},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_DOC, tail=st.binary(max_size=48), binary=st.booleans())
def test_property_structured_garbage_only_raises_bad_request(
    doc: dict, tail: bytes, binary: bool
) -> None:
    header = orjson.dumps(doc)
    try:
        request = decode_request(
            header + tail if binary else header, len(header) if binary else None
        )
    except BadRequest:
        return
    assert all(isinstance(a, np.ndarray) for a in request.inputs.values())
