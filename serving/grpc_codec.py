"""gRPC ModelInferRequest and ModelInferResponse <-> numpy, by the rules of the HTTP codecs.

A request is described first (its inputs named, typed and shaped, raw sizes checked against shape
x datatype) without decoding any tensor data, so that the model's signature can judge it as it
judges a JSON header; the data is then decoded by serving.tensor_data, the same element rules as
HTTP's (counts, integer ranges, float overflow, BOOL values, BYTES element bounds). Outputs go
back as `raw_output_contents`, as Triton answers them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from serving import codecs, tensor_data
from serving.proto import wire
from serving.protocol import BadRequest, DeclaredInput, ParsedRequest, RequestedOutput
from vigil.core.tensors import V2_TO_NUMPY

# The typed field of InferTensorContents for each datatype (INT8 and INT16 travel widened in
# int_contents, UINT8 and UINT16 in uint_contents); FP16 and BF16 have none: raw bytes only.
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def describe(request: Any) -> ParsedRequest:
    """The request's inputs and requested outputs, checked as codecs.parse_header checks a JSON
    header; an input's `data` is its raw bytes or its InferTensorContents, not yet decoded."""
    inputs = request.inputs
    if not inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    raw = request.raw_input_contents
    if raw and len(raw) != len(inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; send one per "
            "input, in the order of 'inputs'")
    seen: set[str] = set()
    declared: list[DeclaredInput] = []
    for position, tensor in enumerate(inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if not name:
            raise BadRequest(f"inputs[{position}] needs a non-empty 'name'")
        if name in seen:
            raise BadRequest(f"input '{name}' appears more than once")
        seen.add(name)
        if datatype not in V2_TO_NUMPY:
            raise BadRequest(
                f"input '{name}': unknown datatype {datatype!r}; expected one of "
                f"{sorted(V2_TO_NUMPY)}")
        if len(shape) > codecs.MAX_DIMS or any(d < 0 for d in shape):
            raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
        if raw:
            if tensor.HasField("contents"):
                raise BadRequest(f"input '{name}' has both 'contents' and raw_input_contents")
            size = len(raw[position])
            codecs.check_binary_size(name, shape, datatype, size, size)
            declared.append(DeclaredInput(name, datatype, shape, raw[position], (0, size)))
        elif not tensor.HasField("contents"):
            raise BadRequest(f"input '{name}' has neither 'contents' nor raw_input_contents")
        else:
            declared.append(DeclaredInput(name, datatype, shape, tensor.contents))
    return ParsedRequest(inputs=declared, id=request.id or None,
                         outputs=_requested_outputs(request.outputs),
                         binary_output_default=True)


def _requested_outputs(outputs: Any) -> list[RequestedOutput] | None:
    if not outputs:
        return None  # every output
    requested = []
    seen: set[str] = set()
    for position, output in enumerate(outputs):
        if not output.name:
            raise BadRequest(f"outputs[{position}] needs a non-empty 'name'")
        if output.name in seen:
            raise BadRequest(f"output '{output.name}' is requested more than once")
        seen.add(output.name)
        requested.append(RequestedOutput(output.name, True))
    return requested


def decode(parsed: ParsedRequest, max_bytes_elements: int | None = None
           ) -> dict[str, np.ndarray]:
    """The described inputs as arrays of their request datatypes."""
    out: dict[str, np.ndarray] = {}
    for declared in parsed.inputs:
        name, datatype, shape = declared.name, declared.datatype, declared.shape
        if datatype == "BYTES" and max_bytes_elements is not None:
            codecs.check_bytes_count(name, shape, max_bytes_elements)
        if declared.binary is not None:
            out[name] = tensor_data.from_binary(name, memoryview(declared.data), shape, datatype)
        else:
            out[name] = from_contents(name, declared.data, shape, datatype)
    return out


def from_contents(name: str, contents: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """An input's InferTensorContents as an array: only the field of its datatype may be set,
    and its values are judged as JSON `data` is (serving.tensor_data.from_json)."""
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadRequest(f"input '{name}': {datatype} has no typed contents field; send it as "
                         "raw_input_contents")
    others = sorted(f.name for f, _ in contents.ListFields() if f.name != field)
    if others:
        raise BadRequest(f"input '{name}': datatype {datatype} takes {field}, not {others}")
    values = getattr(contents, field)
    if datatype != "BYTES":
        return tensor_data.from_json(name, list(values), shape, datatype)
    expected = math.prod(shape)
    if len(values) != expected:
        raise BadRequest(f"input '{name}': {len(values)} elements given, shape {list(shape)} "
                         f"needs {expected}")
    array = np.empty(expected, dtype=object)
    array[:] = list(values)
    return array.reshape(shape)


def encode(model_name: str, model_version: str, request_id: str | None,
           outputs: list[tuple[str, str, np.ndarray]]) -> Any:
    """A ModelInferResponse with each (name, datatype, array) output as raw little-endian bytes."""
    response = wire.ModelInferResponse(model_name=model_name, model_version=model_version,
                                       id=request_id or "")
    for name, datatype, array in outputs:
        response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        response.raw_output_contents.append(tensor_data.to_binary(array, datatype))
    return response


def model_metadata(doc: dict[str, Any]) -> Any:
    """A ModelMetadataResponse from the V2 metadata that HTTP answers as JSON."""
    return wire.ModelMetadataResponse(
        name=doc["name"], versions=doc["versions"], platform=doc["platform"],
        inputs=[_tensor(t) for t in doc["inputs"]], outputs=[_tensor(t) for t in doc["outputs"]])


def _tensor(doc: dict[str, Any]) -> dict[str, Any]:
    return {"name": doc["name"], "datatype": doc["datatype"], "shape": doc["shape"]}
