"""Wire format <-> numpy: V2 JSON tensors and the binary tensor data extension, no I/O.

Decoding is two steps so that a request can be checked against a model's signature before any
tensor data is touched: ``parse_header`` reads the JSON header and describes each input (name,
datatype, shape, where its data is), checking only what the request says of itself (binary sizes
against the binary part's length and against shape x datatype); ``decode_inputs`` then builds
the arrays from the header and the binary part. The binary part need not even have arrived when
the header is judged: a server can refuse a request from its first bytes.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np
import orjson

from serving.protocol import (
    BadRequest,
    DeclaredInput,
    InferenceRequest,
    ParsedRequest,
    RequestedOutput,
    UnsendableOutput,
    fit_datatype,
)
from vigil.core.tensors import V2_TO_NUMPY, element_size

_MAX_DIMS = 16
_LENGTH_PREFIX = struct.Struct("<I")
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
_MISSING = object()


# ---------------------------------------------------------------- decoding


def parse_header_length(raw: str | None) -> int | None:
    """The Inference-Header-Content-Length header: ASCII digits only (no sign, no spaces)."""
    if raw is None:
        return None
    if not _ASCII_DIGITS.fullmatch(raw):
        raise BadRequest(f"Inference-Header-Content-Length {raw[:40]!r} is not a decimal integer")
    return int(raw)


def split_body(
    body: bytes | bytearray, header_length: int | None
) -> tuple[bytes | bytearray, memoryview]:
    """(JSON header, binary part) of a body, by its Inference-Header-Content-Length."""
    if header_length is None:
        return body, memoryview(b"")
    if header_length < 0 or header_length > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length {header_length} is outside the body "
            f"of {len(body)} bytes"
        )
    return body[:header_length], memoryview(body)[header_length:]


def parse_request(body: bytes, header_length: int | None = None) -> tuple[ParsedRequest, memoryview]:
    """The whole body's header, parsed and checked, and its binary part."""
    header, binary = split_body(body, header_length)
    return parse_header(header, len(binary)), binary


def parse_header(
    header_bytes: bytes | bytearray | memoryview, binary_length: int = 0
) -> ParsedRequest:
    """The request's JSON header, checked, with each input described but not decoded; the
    binary tensor data that follows it is `binary_length` bytes long."""
    try:
        doc = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    if not _REQUEST_KEYS.issuperset(doc):
        raise BadRequest(f"request has unknown fields {sorted(doc.keys() - _REQUEST_KEYS)[:8]}")
    inputs = _declared_inputs(doc.get("inputs"), binary_length)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    parameters = _parameters(doc)
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise BadRequest("parameters.binary_data_output must be a boolean")
    return ParsedRequest(
        inputs=inputs,
        id=request_id,
        outputs=_requested_outputs(doc.get("outputs", _MISSING), binary_default),
        binary_output_default=binary_default,
        parameters=parameters,
        binary_length=binary_length,
    )


def _declared_inputs(raw_inputs: Any, binary_length: int) -> list[DeclaredInput]:
    """Each input of `inputs` described, its binary data placed in the binary part, which the
    inputs must claim exactly."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    inputs: list[DeclaredInput] = []
    seen: set[str] = set()
    offset = 0
    for position, raw in enumerate(raw_inputs):
        name, shape, datatype, params = _input_header(raw, position)
        if name in seen:
            raise BadRequest(f"input '{name}' appears more than once")
        seen.add(name)
        binary_size = params.get("binary_data_size")
        if binary_size is None:
            if "data" not in raw:
                raise BadRequest(f"input '{name}' has neither 'data' nor binary_data_size")
            inputs.append(DeclaredInput(name, datatype, shape, raw["data"]))
            continue
        if "data" in raw:
            raise BadRequest(f"input '{name}' has both 'data' and binary_data_size")
        _check_binary_size(name, shape, datatype, binary_size, binary_length - offset)
        inputs.append(DeclaredInput(name, datatype, shape, None, (offset, binary_size)))
        offset += binary_size
    if offset != binary_length:
        raise BadRequest(
            f"body has {binary_length - offset} bytes of binary data that no input claims"
        )
    return inputs


def _check_binary_size(
    name: str, shape: tuple[int, ...], datatype: str, binary_size: Any, left: int
) -> None:
    """An input's binary_data_size: a size that fits the `left` bytes of the binary part and
    agrees with shape x datatype (for BYTES, at least a length prefix per element)."""
    if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
        raise BadRequest(f"input '{name}': binary_data_size must be a non-negative integer")
    if binary_size > left:
        raise BadRequest(
            f"input '{name}': binary_data_size {binary_size} runs past the end of the "
            f"body ({left} bytes left)"
        )
    size = element_size(datatype)
    expected = math.prod(shape)
    if size is not None and binary_size != expected * size:
        raise BadRequest(
            f"input '{name}': binary_data_size {binary_size} does not match shape "
            f"{list(shape)} x {datatype} ({expected * size} bytes)"
        )
    if size is None and binary_size < 4 * expected:
        raise BadRequest(
            f"input '{name}': binary_data_size {binary_size} is too small for {expected} "
            "BYTES elements (4 bytes of length prefix each)"
        )


def decode_inputs(
    request: ParsedRequest,
    binary: memoryview | bytes = b"",
    max_bytes_elements: int | None = None,
) -> dict[str, np.ndarray]:
    """The declared inputs as arrays of their request datatypes, binary ones read from `binary`
    (the part after the JSON header). `max_bytes_elements` bounds the elements of one BYTES
    tensor (each becomes a Python object)."""
    if len(binary) != request.binary_length:
        raise BadRequest(
            f"the body holds {len(binary)} bytes of binary data, the header {request.binary_length}"
        )
    view = memoryview(binary)
    out: dict[str, np.ndarray] = {}
    for declared in request.inputs:
        name, datatype, shape = declared.name, declared.datatype, declared.shape
        if datatype == "BYTES" and max_bytes_elements is not None:
            count = math.prod(shape)
            if count > max_bytes_elements:
                raise BadRequest(
                    f"input '{name}' has {count} BYTES elements; this server takes at most "
                    f"{max_bytes_elements} per tensor (max_bytes_elements)",
                    status_code=413,
                )
        if declared.binary is not None:
            start, size = declared.binary
            out[name] = _from_binary(name, view[start : start + size], shape, datatype)
        else:
            out[name] = _from_json(name, declared.data, shape, datatype)
    return out


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """parse_request and decode_inputs in one, for callers with no signature to check first."""
    parsed, binary = parse_request(body, header_length)
    return InferenceRequest(
        inputs=decode_inputs(parsed, binary),
        id=parsed.id,
        outputs=parsed.outputs,
        binary_output_default=parsed.binary_output_default,
        parameters=parsed.parameters,
    )


def _parameters(doc: dict, kind: str = "", name: str = "") -> dict:
    """`parameters`, which when present must be an object (null and lists are not); the error
    names the input or output (`kind` `name`) they belong to."""
    params = doc.get("parameters", _MISSING)
    if params is _MISSING:
        return {}
    if not isinstance(params, dict):
        raise BadRequest(f"{kind} '{name}': 'parameters' must be an object" if kind
                         else "'parameters' must be an object")
    return params


def _input_header(raw: Any, position: int) -> tuple[str, tuple[int, ...], str, dict]:
    if not isinstance(raw, dict):
        raise BadRequest(f"inputs[{position}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{position}] needs a non-empty string 'name'")
    if not _INPUT_KEYS.issuperset(raw):
        raise BadRequest(
            f"input '{name}' has unknown fields {sorted(raw.keys() - _INPUT_KEYS)[:8]}")
    shape = raw.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS or not _sizes(shape):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise BadRequest(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {sorted(V2_TO_NUMPY)}"
        )
    return name, tuple(shape), datatype, _parameters(raw, "input", name)


def _sizes(shape: list) -> bool:
    """Whether every dimension is a non-negative int (not a bool). A plain loop: it runs for
    every input of every request."""
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            return False
    return True


def _from_json(name: str, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    expected = math.prod(shape)
    if datatype == "BYTES":
        flat = _regular_flatten(name, data, shape) if isinstance(data, list) else [data]
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
    if values.ndim > 1 and values.shape != shape:
        raise _nesting_error(name, values.shape, shape)
    if target.kind in "iu" and values.size and kind in "iu":
        info = np.iinfo(target)
        if values.min() < info.min or values.max() > info.max:
            raise BadRequest(f"input '{name}': values out of range for {datatype}")
    if target.kind == "b" and kind != "b" and values.size and not np.isin(values, (0, 1)).all():
        raise BadRequest(f"input '{name}': BOOL data must be true/false or 0/1")
    if target.kind == "f":
        return fit_datatype(name, values, datatype).reshape(shape)
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


def _regular_flatten(name: str, data: list, shape: tuple[int, ...]) -> list:
    """Flat data as is; nested data only when it is a regular array of exactly `shape`."""
    if not any(isinstance(v, list) for v in data):
        return data
    dims: list[int] = []
    level: list = data
    while isinstance(level, list):  # the shape the first path through the nesting says
        dims.append(len(level))
        if not level:
            break
        level = level[0]
    if tuple(dims) != shape:
        raise _nesting_error(name, tuple(dims), shape)
    rows: list = [data]
    for depth, width in enumerate(dims):
        last = depth == len(dims) - 1
        next_rows: list = []
        for row in rows:
            if not isinstance(row, list) or len(row) != width:
                raise BadRequest(f"input '{name}': 'data' is ragged")
            if last and any(isinstance(v, list) for v in row):
                raise BadRequest(f"input '{name}': 'data' is ragged")
            next_rows.extend(row)
        rows = next_rows
    return rows


def _nesting_error(name: str, got: tuple[int, ...], shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"input '{name}': nested 'data' has shape {list(got)} but the input declares "
        f"{list(shape)}; send it flat or nested exactly as the shape"
    )


def _from_binary(name: str, chunk: memoryview, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return _bytes_from_binary(name, chunk, shape)
    array = np.frombuffer(chunk, dtype=V2_TO_NUMPY[datatype].newbyteorder("<")).reshape(shape)
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and raw.max() > 1:
            raise BadRequest(f"input '{name}': BOOL binary data must be bytes 0 or 1")
    return array


def _bytes_from_binary(name: str, chunk: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    # Each element is a 4-byte little-endian length followed by that many bytes. The loop runs
    # at most once per declared element, and stops at the first inconsistency.
    expected = math.prod(shape)
    out = np.empty(expected, dtype=object)
    pos, end = 0, len(chunk)
    unpack = _LENGTH_PREFIX.unpack_from
    for i in range(expected):
        if pos + 4 > end:
            if pos == end:
                raise _count_error(name, i, shape)
            raise BadRequest(f"input '{name}': truncated BYTES length prefix")
        (length,) = unpack(chunk, pos)
        pos += 4
        if pos + length > end:
            raise BadRequest(f"input '{name}': BYTES element runs past its binary_data_size")
        out[i] = bytes(chunk[pos : pos + length])
        pos += length
    if pos != end:
        raise BadRequest(
            f"input '{name}': {end - pos} bytes of binary data left after the {expected} "
            f"BYTES elements that shape {list(shape)} holds"
        )
    return out.reshape(shape)


def _count_error(name: str, got: int, shape: tuple[int, ...]) -> BadRequest:
    return BadRequest(
        f"input '{name}': {got} elements given, shape {list(shape)} needs {math.prod(shape)}"
    )


def _requested_outputs(raw: Any, binary_default: bool) -> list[RequestedOutput] | None:
    if raw is _MISSING:
        return None
    if not isinstance(raw, list):
        raise BadRequest("'outputs' must be a list")
    if not raw:
        raise BadRequest("'outputs' must not be empty; leave it out to get every output")
    requested = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequest(f"outputs[{position}] needs a string 'name'")
        name = item["name"]
        unknown = item.keys() - _OUTPUT_KEYS
        if unknown:
            raise BadRequest(f"output '{name}' has unknown fields {sorted(unknown)[:8]}")
        if name in seen:
            raise BadRequest(f"output '{name}' is requested more than once")
        seen.add(name)
        params = _parameters(item, "output", name)
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise BadRequest(f"output '{name}': binary_data must be a boolean")
        requested.append(RequestedOutput(name, binary))
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
    travels as binary data, the length of the JSON header that precedes it. JSON has no NaN or
    Inf: a non-finite value in an output sent as JSON is UnsendableOutput (502: the model
    answered it, after the request was accepted), whose message says how to ask for binary
    output instead (it would otherwise become null)."""
    entries = []
    chunks: list[bytes] = []
    for name, datatype, array, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise UnsendableOutput(
                    f"output '{name}' holds NaN or Inf, which JSON cannot carry; ask for it as "
                    f'binary data: "outputs": [{{"name": "{name}", "parameters": '
                    '{"binary_data": true}}], or "parameters": {"binary_data_output": true}'
                )
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

