"""Shared unit fixtures: the example models built once per session, tiny hand-built ONNX graphs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.examples import build_examples
from serving.protocol import TensorSpec
from serving.repository import ModelVersion, publish, scan
from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings

OPSET = 17
IR_VERSION = 8

# V2 datatype -> ONNX element type, for the tiny graphs below.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


@pytest.fixture(scope="session")
def example_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast_cancer/1 and mlp/1, built once for the whole unit session. Treat as read-only."""
    root = tmp_path_factory.mktemp("example_models")
    build_examples(root)
    return root


@pytest.fixture(scope="session")
def example_versions(example_root: Path) -> dict[str, ModelVersion]:
    return {name: versions[-1] for name, versions in scan(example_root).items()}


@pytest.fixture(scope="session")
def cancer(example_versions: dict[str, ModelVersion]) -> OnnxModel:
    return OnnxModel(example_versions["breast_cancer"], RuntimeSettings())


@pytest.fixture(scope="session")
def mlp(example_versions: dict[str, ModelVersion]) -> OnnxModel:
    return OnnxModel(example_versions["mlp"], RuntimeSettings())


def _dim(d: int) -> int | str:
    return "N" if d == -1 else d


def identity_graph(specs: list[tuple[str, str, tuple[int, ...]]]) -> onnx.ModelProto:
    """One Identity per (name, datatype, shape): input `name` -> output `name`_out."""
    nodes, inputs, outputs = [], [], []
    for name, datatype, shape in specs:
        dims = [_dim(d) for d in shape]
        inputs.append(helper.make_tensor_value_info(name, V2_TO_ONNX[datatype], dims))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", V2_TO_ONNX[datatype], dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _model(helper.make_graph(nodes, "identity", inputs, outputs))


def gather_graph(table: list[int]) -> onnx.ModelProto:
    """out[i] = table[idx[i]] over INT64 [-1]: an index outside the table fails at run time."""
    init = numpy_helper.from_array(np.array(table, np.int64), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N"])],
        initializer=[init],
    )
    return _model(graph)


def double_graph() -> onnx.ModelProto:
    """y = 2 * x over FP32 [-1, -1]: any row width, so requests of several widths can arrive."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "W"])],
        initializer=[two],
    )
    return _model(graph)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


@pytest.fixture(scope="session")
def graphs() -> SimpleNamespace:
    """The tiny graph builders above, for test modules (conftest is not imported directly)."""
    return SimpleNamespace(identity=identity_graph, gather=gather_graph, double=double_graph)


PublishFn = Callable[..., ModelVersion]
LoadFn = Callable[..., OnnxModel]


@pytest.fixture
def publish_tiny(tmp_path: Path) -> PublishFn:
    """Publish an ONNX proto with a declared signature into this test's own repository."""

    def _publish(
        proto: onnx.ModelProto,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        name: str = "tiny",
        version: str = "1",
    ) -> ModelVersion:
        return publish(tmp_path / "repo", name, version, proto.SerializeToString(), inputs, outputs)

    return _publish


@pytest.fixture
def load_tiny(publish_tiny: PublishFn) -> LoadFn:
    """Publish, then load as an OnnxModel on the CPU."""

    def _load(
        proto: onnx.ModelProto,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
        **kwargs,
    ) -> OnnxModel:
        return OnnxModel(publish_tiny(proto, inputs, outputs, **kwargs), RuntimeSettings())

    return _load
