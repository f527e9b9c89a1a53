"""gRPC tensors <-> numpy (serving.grpc_codec): typed contents judged by the JSON data rules,
raw bytes by the binary extension's, and the answers as raw little-endian bytes."""

from __future__ import annotations

import numpy as np
import pytest

from serving import grpc_codec
from serving.proto import wire
from serving.protocol import BadRequest


def _request(*inputs, raw=(), outputs=()):
    request = wire.ModelInferRequest(model_name="m")
    for name, datatype, shape, contents in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if contents is not None:
            tensor.contents.CopyFrom(contents)
    request.raw_input_contents.extend(raw)
    for name in outputs:
        request.outputs.add(name=name)
    return request


def _contents(**fields):
    return wire.message("InferTensorContents")(**fields)


def _decode(request, max_bytes_elements=None):
    return grpc_codec.decode(grpc_codec.describe(request), max_bytes_elements)


@pytest.mark.parametrize(("datatype", "field", "values", "dtype"), [
    ("BOOL", "bool_contents", [True, False], np.bool_),
    ("INT8", "int_contents", [-128, 127], np.int8),
    ("INT16", "int_contents", [-3, 4], np.int16),
    ("INT32", "int_contents", [-(2**31), 2**31 - 1], np.int32),
    ("INT64", "int64_contents", [-(2**63), 2**63 - 1], np.int64),
    ("UINT8", "uint_contents", [0, 255], np.uint8),
    ("UINT16", "uint_contents", [0, 65535], np.uint16),
    ("UINT32", "uint_contents", [0, 2**32 - 1], np.uint32),
    ("UINT64", "uint64_contents", [0, 2**64 - 1], np.uint64),
    ("FP32", "fp32_contents", [1.5, -0.25], np.float32),
    ("FP64", "fp64_contents", [1e300, -2.5], np.float64),
])
def test_typed_contents_become_exact_arrays_of_their_datatype(datatype, field, values, dtype):
    out = _decode(_request(("x", datatype, [2], _contents(**{field: values}))))
    assert out["x"].dtype == dtype and out["x"].tolist() == values


def test_raw_contents_are_the_binary_extensions_bytes():
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    strings = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b""))
    out = _decode(_request(("x", "FP32", [2, 3], None), ("s", "BYTES", [2], None),
                           raw=[x.tobytes(), strings]))
    np.testing.assert_array_equal(out["x"], x)
    assert out["s"].tolist() == [b"ab", b""]


@pytest.mark.parametrize(("what", "request_", "says"), [
    ("INT8 out of range", _request(("x", "INT8", [1], _contents(int_contents=[300]))),
     "values out of range for INT8"),
    ("UINT16 out of range", _request(("x", "UINT16", [1], _contents(uint_contents=[70000]))),
     "values out of range for UINT16"),
    ("BOOL as ints", _request(("x", "BOOL", [1], _contents(int_contents=[1]))),
     "takes bool_contents, not ['int_contents']"),
    ("FP16 typed", _request(("x", "FP16", [1], _contents())),
     "FP16 has no typed contents field"),
    ("count", _request(("x", "FP32", [3], _contents(fp32_contents=[1.0]))),
     "1 elements given, shape [3] needs 3"),
    ("BYTES count", _request(("x", "BYTES", [2], _contents(bytes_contents=[b"a"]))),
     "1 elements given, shape [2] needs 2"),
    ("BOOL raw byte 2", _request(("x", "BOOL", [1], None), raw=[b"\x02"]),
     "BOOL binary data must be bytes 0 or 1"),
    ("BYTES raw prefix past its end", _request(("x", "BYTES", [1], None),
                                               raw=[(9).to_bytes(4, "little") + b"ab"]),
     "runs past its binary_data_size"),
    ("too many dimensions", _request(("x", "FP32", [1] * 17, _contents(fp32_contents=[1.0]))),
     "non-negative integers"),
    ("empty name", _request(("", "FP32", [1], _contents(fp32_contents=[1.0]))),
     "needs a non-empty 'name'"),
    ("empty output name", _request(("x", "FP32", [1], _contents(fp32_contents=[1.0])),
                                   outputs=[""]), "outputs[0] needs a non-empty 'name'"),
])
def test_each_bad_tensor_is_a_400_naming_it(what, request_, says):
    with pytest.raises(BadRequest) as refused:
        _decode(request_)
    assert refused.value.status_code == 400 and says in str(refused.value), what


def test_too_many_bytes_elements_is_a_413():
    request = _request(("s", "BYTES", [3], _contents(bytes_contents=[b"a"] * 3)))
    with pytest.raises(BadRequest) as refused:
        _decode(request, max_bytes_elements=2)
    assert refused.value.status_code == 413 and "at most 2 per tensor" in str(refused.value)


def test_outputs_go_back_as_raw_little_endian_bytes():
    label = np.array([1, 0], np.int64)
    words = np.array([b"a", b"bc"], dtype=object)
    response = grpc_codec.encode("m", "2", "id-1", [("label", "INT64", label),
                                                    ("words", "BYTES", words)])
    assert (response.model_name, response.model_version, response.id) == ("m", "2", "id-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("label", "INT64", [2]), ("words", "BYTES", [2])]
    assert response.raw_output_contents[0] == label.astype("<i8").tobytes()
    assert response.raw_output_contents[1] == b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"
