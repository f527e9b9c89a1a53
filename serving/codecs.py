"""Wire format <-> numpy: V2 JSON tensors and the binary tensor data extension, no I/O."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from serving.protocol import (
    V2_TO_NUMPY,
    BadRequest,
    InferenceRequest,
    RequestedOutput,
    element_size,
)

_MAX_DIMS = 16
_LENGTH_PREFIX = struct.Struct("<I")
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})


# ---------------------------------------------------------------- decoding


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """Decode an infer request body. `header_length` is the Inference-Header-Content-Length
    header: the JSON header is body[:header_length] and binary tensor data follows it."""
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise BadRequest(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        doc = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")

    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, raw in enumerate(raw_inputs):
        name, shape, datatype, params = _input_header(raw, position)
        if name in inputs:
            raise BadRequest(f"input '{name}' appears more than once")
        binary_size = params.get("binary_data_size")
        if binary_size is not None:
            if "data" in raw:
                raise BadRequest(f"input '{name}' has both 'data' and binary_data_size")
            if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
                raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + binary_size > len(binary):
                raise BadRequest(
                    f"input '{name}': binary_data_size {binary_size} runs past the end of the "
                    f"body ({len(binary) - offset} bytes left)"
                )
            chunk = binary[offset : offset + binary_size]
            offset += binary_size
            inputs[name] = _from_binary(name, chunk, shape, datatype)
        else:
            if "data" not in raw:
                raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs[name] = _from_json(name, raw["data"], shape, datatype)
    if offset != len(binary):
        raise BadRequest(
            f"body has {len(binary) - offset} bytes of binary data that no input claims"
        )

    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = doc.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be a boolean")
    return InferenceRequest(
        inputs=inputs,
        id=request_id,
        outputs=_requested_outputs(doc.get("outputs"), binary_default),
        binary_output_default=binary_default,
        parameters=parameters,
    )


def _input_header(raw: Any, position: int) -> tuple[str, tuple[int, ...], str, dict]:
    if not isinstance(raw, dict):
        raise BadRequest(f"inputs[{position}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{position}] needs a non-empty string 'name'")
    unknown = raw.keys() - _INPUT_KEYS
    if unknown:
        raise BadRequest(f"input '{name}' has unknown fields {sorted(unknown)}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise BadRequest(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}"
        )
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(f"input '{name}': 'parameters' must be an object")
    return name, tuple(shape), datatype, params


def _from_json(name: str, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    expected = math.prod(shape)
    if datatype == "BYTES":
        flat = _flatten(data) if isinstance(data, list) else [data]
        if not all(isinstance(v, str) for v in flat):
            raise BadRequest(f"input '{name}': BYTES data must be strings")
        if len(flat) != expected:
            raise _count_error(name, len(flat), shape)
        out = np.empty(expected, dtype=object)
        out[:] = [v.encode() for v in flat]
        return out.reshape(shape)
    try:
        values = np.asarray(data)
    except ValueError:
        raise BadRequest(f"input '{name}': 'data' is ragged") from None
    kind = values.dtype.kind
    target = V2_TO_NUMPY[datatype]
    if not values.size:
        kind = target.kind  # numpy reads [] as float64; there are no values to judge
    elif kind == "f" and target.kind in "iu" and _all_ints(data):
        # Ints that share no numpy int type (e.g. [1, 2**64 - 1]) come back as float64,
        # rounded: keep the exact Python ints and let the range check below judge them.
        values, kind = np.array(data, dtype=object), "i"
    if kind not in "biuf" or (kind == "f" and target.kind in "biu") or (
        kind == "b" and target.kind != "b"
    ):
        what = {"f": "non-integer", "b": "boolean"}.get(kind, "non-numeric")
        raise BadRequest(f"input '{name}': {what} values in 'data' for datatype {datatype}")
    if values.size != expected:
        raise _count_error(name, values.size, shape)
    if target.kind in "iu" and values.size and kind in "iu":
        info = np.iinfo(target)
        if values.min() < info.min or values.max() > info.max:
            raise BadRequest(f"input '{name}': values out of range for {datatype}")
    if target.kind == "b" and kind != "b" and values.size and not np.isin(values, (0, 1)).all():
        raise BadRequest(f"input '{name}': BOOL data must be true/false or 0/1")
    return values.astype(target, copy=False).reshape(shape)


def _all_ints(data: Any) -> bool:
    return all(type(v) is int for v in (_flatten(data) if isinstance(data, list) else [data]))


def _flatten(data: list) -> list:
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _from_binary(name: str, chunk: memoryview, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    expected = math.prod(shape)
    size = element_size(datatype)
    if size is None:
        return _bytes_from_binary(name, chunk, shape, expected)
    if len(chunk) != expected * size:
        raise BadRequest(
            f"input '{name}': binary_data_size {len(chunk)} does not match shape {list(shape)} "
            f"x {datatype} ({expected * size} bytes)"
        )
    return np.frombuffer(chunk, dtype=V2_TO_NUMPY[datatype].newbyteorder("<")).reshape(shape)


def _bytes_from_binary(
    name: str, chunk: memoryview, shape: tuple[int, ...], expected: int
) -> np.ndarray:
    # BYTES elements are each a 4-byte little-endian length followed by that many bytes.
    items = []
    pos, end = 0, len(chunk)
    while pos < end:
        if pos + 4 > end:
            raise BadRequest(f"input '{name}': truncated BYTES length prefix")
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, pos)
        pos += 4
        if pos + length > end:
            raise BadRequest(f"input '{name}': BYTES element runs past its binary_data_size")
        items.append(bytes(chunk[pos : pos + length]))
        pos += length
    if len(items) != expected:
        raise _count_error(name, len(items), shape)
    out = np.empty(expected, dtype=object)
    out[:] = items
    return out.reshape(shape)


def _count_error(name: str, got: int, shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"input '{name}': {got} elements given, shape {list(shape)} needs {math.prod(shape)}"
    )


def _requested_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    requested = []
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{position}] needs a string 'name'")
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BadRequest(f"output '{item['name']}': 'parameters' must be an object")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output '{item['name']}': binary_data must be a boolean")
        requested.append(RequestedOutput(item["name"], binary))
    return requested


# ---------------------------------------------------------------- encoding

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def encode_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, str, np.ndarray, bool]],
) -> tuple[bytes, int | None]:
    """Encode (name, datatype, array, binary) outputs. Returns the body and, when any output
    travels as binary data, the length of the JSON header that precedes it."""
    entries = []
    chunks: list[bytes] = []
    for name, datatype, array, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json_data(array, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=_JSON_OPTIONS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _to_json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()
        ]
    # orjson writes native-endian C-contiguous arrays directly, without Python floats.
    return np.ascontiguousarray(array).ravel()


def _to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in array.ravel():
            raw = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype].newbyteorder("<")).tobytes()


def encode_error(message: str) -> bytes:
    return orjson.dumps({"error": message})
