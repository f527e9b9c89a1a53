"""Shared unit fixtures: the example models built once per session, tiny hand-built ONNX graphs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from serving.runtime import OnnxModel
from serving.settings import RuntimeSettings
from tests.graphs import (
    cumsum_graph,
    double_graph,
    fixed_pair_graph,
    gather_graph,
    identity_graph,
    reduce_sum_graph,
)
from vigil.tools.examples import build_examples
from vigil.core.repository import ModelVersion, publish, scan
from vigil.core.tensors import TensorSpec


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


@pytest.fixture(scope="session")
def graphs() -> SimpleNamespace:
    """The tiny graph builders above, for test modules (conftest is not imported directly)."""
    return SimpleNamespace(
        identity=identity_graph, gather=gather_graph, double=double_graph,
        reduce_sum=reduce_sum_graph, cumsum=cumsum_graph, fixed_pair=fixed_pair_graph,
    )


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
        max_batch_rows: int = 0,
    ) -> ModelVersion:
        return publish(
            tmp_path / "repo", name, version, proto.SerializeToString(), inputs, outputs,
            max_batch_rows=max_batch_rows,
        )

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
