"""ModelSet on real onnxruntime sessions: what a replica loads from the repository and its aliases,
what a refresh loads and releases, and what it does with versions and models it cannot read."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.model_set import ModelSet
from serving.protocol import NotFound
from serving.runtime import GpuUnavailable
from serving.settings import BatchSettings, RuntimeSettings
from tests.graphs import identity_graph
from vigil.core import model_ops
from vigil.core.repository import MANIFEST_FILE, publish
from vigil.core.tensors import TensorSpec

SPEC = [("x", "FP32", (-1, 2))]
INPUTS = (TensorSpec("x", "FP32", (-1, 2)),)
OUTPUTS = (TensorSpec("x_out", "FP32", (-1, 2)),)


def _publish(root: Path, name: str, version: str) -> None:
    proto = identity_graph(SPEC)
    proto.doc_string = f"{name}/{version}"  # distinct bytes per version
    publish(root, name, version, proto.SerializeToString(), INPUTS, OUTPUTS)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for v in ("1", "2", "3"):
        _publish(root, "m", v)
    _publish(root, "other", "1")
    return root


def _set(root: Path, **kwargs) -> ModelSet:
    models = ModelSet(root, None, RuntimeSettings(), BatchSettings(), **kwargs)
    models.refresh()
    return models


def test_every_live_version_loads_and_production_is_pinned(repo: Path) -> None:
    models = _set(repo)
    assert models.router.versions("m") == ["1", "2", "3"]
    assert models.router.resolve("m").target.model.version == "1"  # pinned when 2 appeared
    assert models.published == {"m": ["1", "2", "3"], "other": ["1"]}


def test_a_refresh_follows_the_aliases_and_releases_retired_versions(repo: Path) -> None:
    models = _set(repo)
    one = models.router.resolve("m", "1").target
    model_ops.apply(repo, "m", "promote", actor="t", version="2", force=True, reason="test")
    model_ops.apply(repo, "m", "retire", actor="t", version="3")
    done = models.refresh()
    assert done.released == ["m/3"] and done.loaded == []
    assert models.router.resolve("m").target.model.version == "2"
    with pytest.raises(NotFound, match="retired"):
        models.router.resolve("m", "3")
    # Loaded versions are kept, not rebuilt: the same object serves on.
    assert models.router.resolve("m", "1").target is one


def test_a_version_published_later_loads_on_the_next_refresh(repo: Path) -> None:
    models = _set(repo)
    _publish(repo, "m", "4")
    done = models.refresh()
    assert done.loaded == ["m/4"]
    assert models.router.resolve("m").target.model.version == "1"  # publishing moves nothing


def test_a_tampered_version_is_not_loaded_and_the_others_serve(repo: Path) -> None:
    _publish(repo, "m", "4")
    model_file = repo / "m" / "4" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    models = _set(repo)
    assert models.router.versions("m") == ["1", "2", "3"]
    assert "does not match" in models.failed[("m", "4")]
    from vigil.core.repository import RepositoryError

    with pytest.raises(RepositoryError, match="does not match"):
        models.check_loadable("m", "4")


def test_a_malformed_model_keeps_its_loaded_versions_and_spares_the_others(repo: Path) -> None:
    models = _set(repo)
    (repo / "other" / "2").mkdir()
    (repo / "other" / "2" / MANIFEST_FILE).write_text("name: other\nversion: '2'\n")  # no sha256
    _publish(repo, "m", "4")
    done = models.refresh()
    assert done.loaded == ["m/4"]  # the readable model moved on
    assert models.router.versions("other") == ["1"]  # the unreadable one kept what it had
    assert "missing field" in models.failed[("other", "*")]


def test_no_gpu_where_one_is_required_stops_the_replica(repo: Path) -> None:
    def refuse(version):
        raise GpuUnavailable("runtime.require_gpu is set but there is no CUDA here")

    with pytest.raises(GpuUnavailable):
        _set(repo, load=refuse)


def test_unload_releases_every_version_and_load_brings_them_back(repo: Path) -> None:
    models = _set(repo)
    model_ops.apply(repo, "m", "unload", actor="t")
    assert sorted(models.refresh().released) == ["m/1", "m/2", "m/3"]
    model_ops.apply(repo, "m", "load", actor="t")
    assert sorted(models.refresh().loaded) == ["m/1", "m/2", "m/3"]
