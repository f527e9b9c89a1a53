"""ModelRouter: the default version is the newest, explicit versions, 404 for unknown ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.protocol import NotFound, TensorSpec
from vigil.repository import publish, scan
from serving.router import ModelRouter


@pytest.fixture
def router() -> ModelRouter[str]:
    # Versions arrive oldest first, as repository.scan gives them.
    return ModelRouter(
        {
            "mlp": {"1": "mlp-1", "2": "mlp-2", "10": "mlp-10"},
            "breast_cancer": {"1": "bc-1"},
            "retired": {},
        }
    )


def test_default_version_is_the_newest(router: ModelRouter[str]) -> None:
    assert router.resolve("mlp") == "mlp-10"
    assert router.resolve("mlp", None) == "mlp-10"
    assert router.resolve("mlp", "") == "mlp-10"
    assert router.resolve("breast_cancer") == "bc-1"


def test_explicit_version(router: ModelRouter[str]) -> None:
    assert router.resolve("mlp", "1") == "mlp-1"
    assert router.resolve("mlp", "2") == "mlp-2"
    assert router.versions("mlp") == ["1", "2", "10"]


def test_unknown_model(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound) as info:
        router.resolve("resnet")
    assert info.value.status_code == 404
    assert str(info.value) == (
        "model 'resnet' is not served here; known models: ['breast_cancer', 'mlp']"
    )
    with pytest.raises(NotFound, match=r"^model 'resnet' is not served here"):
        router.versions("resnet")


def test_a_model_without_versions_is_not_served(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound, match=r"^model 'retired' is not served here"):
        router.resolve("retired")


def test_unknown_version(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound) as info:
        router.resolve("mlp", "3")
    assert info.value.status_code == 404
    assert str(info.value) == "model 'mlp' has no version '3'; versions: ['1', '2', '10']"


def test_iteration_lists_every_version(router: ModelRouter[str]) -> None:
    assert list(router) == [
        ("mlp", "1", "mlp-1"),
        ("mlp", "2", "mlp-2"),
        ("mlp", "10", "mlp-10"),
        ("breast_cancer", "1", "bc-1"),
    ]


def test_router_over_a_scanned_repository(tmp_path: Path) -> None:
    spec = (TensorSpec("x", "FP32", (-1,)),)
    for version in ("10", "2", "9"):
        publish(tmp_path, "m", version, version.encode(), spec, spec)
    found = scan(tmp_path)
    router = ModelRouter(
        {name: {v.manifest.version: v for v in versions} for name, versions in found.items()}
    )
    assert router.resolve("m").manifest.version == "10"  # numeric order, not "9" > "10"
    assert router.versions("m") == ["2", "9", "10"]
