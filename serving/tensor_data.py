"""Tensor data of the wire format, element by element: a V2 JSON `data` value (flat or nested
lists) or the binary extension's little-endian bytes into a numpy array of the declared datatype
and shape, and an array back into either. codecs says where in a request or response they go."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from serving.protocol import BadRequest, fit_datatype
from vigil.core.tensors import V2_TO_NUMPY

_LENGTH_PREFIX = struct.Struct("<I")  # each BYTES element's length, little-endian


def from_json(name: str, data: Any, shape: tuple[int, ...], datatype: str) -> np.ndarray:
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


def from_binary(name: str, chunk: memoryview, shape: tuple[int, ...], datatype: str) -> np.ndarray:
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


def to_json_data(array: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in array.ravel()
        ]
    # orjson writes native-endian C-contiguous arrays directly, without Python floats.
    return np.ascontiguousarray(array).ravel()


def to_binary(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for v in array.ravel():
            raw = v if isinstance(v, bytes) else str(v).encode()
            parts.append(_LENGTH_PREFIX.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=V2_TO_NUMPY[datatype].newbyteorder("<")).tobytes()
