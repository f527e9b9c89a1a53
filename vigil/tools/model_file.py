"""An ONNX file checked before it is published: its size, that onnx parses it and onnxruntime
loads it from its bytes alone (no external data), and its signature as onnxruntime reads it.

onnx and onnxruntime are imported when a file is checked, never when this module is imported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from vigil.core.tensors import ONNX_TO_V2, TensorSpec

if TYPE_CHECKING:
    import onnx


class PublishError(ValueError):
    """A file or an argument that cannot be published; the message says which and why."""


def read_model_file(source: Path, max_bytes: int) -> bytes:
    """The file's bytes; one over `max_bytes` is refused before it is read."""
    if not source.exists():
        raise PublishError(f"{source}: no such file")
    if not source.is_file():
        raise PublishError(f"{source} is not a file")
    size = source.stat().st_size
    if size > max_bytes:
        raise PublishError(
            f"{source} is {size} bytes, above the limit of {max_bytes} (--max-model-bytes)"
        )
    with source.open("rb") as f:
        data = f.read(max_bytes + 1)  # the file may have grown since stat
    if len(data) > max_bytes:
        raise PublishError(f"{source} grew above the limit of {max_bytes} bytes while being read")
    if not data:
        raise PublishError(f"{source} is empty, not an ONNX model")
    return data


def signature(
    source: Path, onnx_bytes: bytes
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the model as onnxruntime loads it, after refusing external data.
    Shapes use -1 for symbolic or unknown dimensions."""
    import onnx

    from serving.runtime import cpu_session

    try:
        proto: onnx.ModelProto | None = onnx.load_model_from_string(onnx_bytes)
        parse_error = ""
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        proto, parse_error = None, str(exc) or type(exc).__name__
    if proto is not None:
        _refuse_external_data(source, proto)
    try:
        # From the bytes, as serving/runtime.py loads a version: nothing else is read.
        session = cpu_session(onnx_bytes)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise PublishError(f"{source} is not a model onnxruntime can load: {exc}") from None
    if proto is None:
        raise PublishError(f"{source} is not an ONNX model onnx can parse: {parse_error}")
    declared = {v.name: v for v in (*proto.graph.input, *proto.graph.output)}
    return (
        tuple(_spec("input", a, declared) for a in session.get_inputs()),
        tuple(_spec("output", a, declared) for a in session.get_outputs()),
    )


def _spec(kind: str, arg: Any, declared: dict[str, onnx.ValueInfoProto]) -> TensorSpec:
    datatype = ONNX_TO_V2.get(arg.type)
    if datatype is None:
        raise PublishError(
            f"{kind} '{arg.name}' is {arg.type}; Vigil serves tensors of "
            f"{', '.join(sorted(ONNX_TO_V2.values()))} only"
        )
    info = declared.get(arg.name)
    if info is not None and not info.type.tensor_type.HasField("shape"):
        raise PublishError(
            f"{kind} '{arg.name}' has no shape in the graph (unknown rank): give it one, with "
            "symbolic names for the dimensions that vary"
        )
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _refuse_external_data(source: Path, proto: onnx.ModelProto) -> None:
    """Refuse tensors kept outside the file. Locations that leave the file's folder (absolute,
    '..', a link that resolves elsewhere) are named as such; the others are refused too, because
    a version is loaded from its model.onnx bytes alone, verified against their sha256."""
    import onnx

    base = source.parent
    external: list[tuple[str, str]] = []
    for tensor in _all_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            external.append((tensor.name, entries.get("location", "")))
    if not external:
        return
    for tensor_name, location in external:
        if _escapes(location, base):
            raise PublishError(
                f"{source}: tensor '{tensor_name}' keeps its data at '{location}', outside the "
                f"model file's folder {base.resolve()}; refused (a model must not read other "
                "files)"
            )
    shown = ", ".join(sorted({loc for _, loc in external}))
    raise PublishError(
        f"{source} keeps tensor data in external files ({shown}); Vigil loads a version from its "
        "model.onnx bytes alone, checked against the sha256 in model.yaml, so inline the data "
        "first: onnx.save(onnx.load(path), new_path, save_as_external_data=False) (a model above "
        "protobuf's 2 GiB limit cannot be inlined and cannot be served)"
    )


def _escapes(location: str, base: Path) -> bool:
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if not location or posix.is_absolute() or windows.is_absolute() or windows.drive:
        return True
    if ".." in posix.parts or ".." in windows.parts:
        return True
    return not (base / location).resolve().is_relative_to(base.resolve())


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the model: initializers, sparse ones, and node attributes in the
    graph, its subgraphs and the model's functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)
