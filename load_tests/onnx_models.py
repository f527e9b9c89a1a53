"""Bare onnxruntime models for the comparison servers: load a repository, answer one V2 infer body."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from serving import codecs
from serving.protocol import BadRequest, InferenceError
from vigil.core.tensors import ONNX_TO_V2


@dataclass(frozen=True)
class BareModel:
    """One InferenceSession (intra_op_threads=1, like Vigil's replicas) and its signature."""

    name: str
    version: str
    session: ort.InferenceSession
    input_name: str
    outputs: tuple[tuple[str, str], ...]  # (name, V2 datatype)


class NotFound(InferenceError):
    status_code = 404


def _latest_version(model_dir: Path) -> Path | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and (p / "model.onnx").is_file()]
    if not versions:
        return None
    return max(versions, key=lambda p: (p.name.isdigit(), int(p.name) if p.name.isdigit() else 0))


def load_repository(repository: str | Path, intra_op_threads: int = 1) -> dict[str, BareModel]:
    """Load the newest version of every model under `repository` (<name>/<version>/model.onnx).
    No manifest checks, no sha256: the point of these servers is to be bare."""
    models = {}
    for model_dir in sorted(Path(repository).iterdir()):
        if not model_dir.is_dir() or (chosen := _latest_version(model_dir)) is None:
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(
            str(chosen / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        models[model_dir.name] = BareModel(
            name=model_dir.name,
            version=chosen.name,
            session=session,
            input_name=session.get_inputs()[0].name,
            outputs=tuple((o.name, ONNX_TO_V2[o.type]) for o in session.get_outputs()),
        )
    return models


def infer(
    models: dict[str, BareModel], name: str, body: bytes, header_length: int | None
) -> tuple[bytes, int | None]:
    """Decode a V2 request (JSON or binary extension), run it, encode every output.
    Returns the body and the JSON header length when outputs travel as binary."""
    model = models.get(name)
    if model is None:
        raise NotFound(f"unknown model '{name}'")
    request = codecs.decode_request(body, header_length)
    tensor = request.inputs.get(model.input_name)
    if tensor is None:
        raise BadRequest(f"model '{name}' needs input '{model.input_name}'")
    results = model.session.run([n for n, _ in model.outputs], {model.input_name: tensor})
    binary = request.binary_output_default
    return codecs.encode_response(
        model.name,
        model.version,
        request.id,
        [(n, dt, r, binary) for (n, dt), r in zip(model.outputs, results, strict=True)],
    )
