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
)
from serving import tensor_data
from vigil.core.tensors import V2_TO_NUMPY, element_size

MAX_DIMS = 16  # dimensions of one tensor's shape
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
        check_binary_size(name, shape, datatype, binary_size, binary_length - offset)
        inputs.append(DeclaredInput(name, datatype, shape, None, (offset, binary_size)))
        offset += binary_size
    if offset != binary_length:
        raise BadRequest(
            f"body has {binary_length - offset} bytes of binary data that no input claims"
        )
    return inputs


def check_binary_size(
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
            check_bytes_count(name, shape, max_bytes_elements)
        if declared.binary is not None:
            start, size = declared.binary
            out[name] = tensor_data.from_binary(name, view[start : start + size], shape, datatype)
        else:
            out[name] = tensor_data.from_json(name, declared.data, shape, datatype)
    return out


def check_bytes_count(name: str, shape: tuple[int, ...], max_bytes_elements: int) -> None:
    """413 for a BYTES tensor of more elements than the server takes (each becomes a Python
    object)."""
    count = math.prod(shape)
    if count > max_bytes_elements:
        raise BadRequest(
            f"input '{name}' has {count} BYTES elements; this server takes at most "
            f"{max_bytes_elements} per tensor (max_bytes_elements)",
            status_code=413,
        )


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
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not _sizes(shape):
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
            raw = tensor_data.to_binary(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise UnsendableOutput(
                    f"output '{name}' holds NaN or Inf, which JSON cannot carry; ask for it as "
                    f'binary data: "outputs": [{{"name": "{name}", "parameters": '
                    '{"binary_data": true}}], or "parameters": {"binary_data_output": true}'
                )
            entry["data"] = tensor_data.to_json_data(array, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=_JSON_OPTIONS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
