"""Profiles of model versions from data files: the examples' profile, naming, outputs, the CLI."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.profile import Profile
from vigil.core.repository import PROFILE_JSON, PROFILE_NPZ
from monitoring.profile_builder import build_version_profile
from monitoring.report import version_reference
from vigil.tools.cli import main
from vigil.tools.profiles import profile_version
from vigil.core.tensors import TensorSpec


def test_examples_build_the_breast_cancer_profile(example_root: Path) -> None:
    assert not (example_root / "mlp" / "1" / PROFILE_JSON).exists()
    version_dir = example_root / "breast_cancer" / "1"
    profile = Profile.load(version_dir)
    names = [c.name for c in profile.features]
    assert len(names) == 30 and names[0] == "mean radius" and "target" not in profile
    assert [(c.name, c.kind) for c in profile.outputs] == [
        ("label", "categorical"), ("probabilities_0", "numeric"), ("probabilities_1", "numeric")
    ]
    assert profile.rows == 426
    meta = profile.meta
    assert (meta["model"], meta["version"], meta["data"], meta["outputs"]) == (
        "breast_cancer", "1", "reference.parquet", "model"
    )
    assert meta["layout"]["outputs"][1] == {
        "tensor": "probabilities", "ndim": 2, "columns": ["probabilities_0", "probabilities_1"]
    }


def test_rebuilding_gives_the_same_bytes(example_root: Path, tmp_path: Path) -> None:
    version_dir = tmp_path / "1"
    shutil.copytree(example_root / "breast_cancer" / "1", version_dir)
    for name in (PROFILE_JSON, PROFILE_NPZ):
        (version_dir / name).unlink()
    profile_version(version_dir, version_dir / "reference.parquet", outputs_from_model=True)
    for name in (PROFILE_JSON, PROFILE_NPZ):
        assert (version_dir / name).read_bytes() == (
            example_root / "breast_cancer" / "1" / name
        ).read_bytes()


@pytest.fixture
def two_inputs(publish_tiny, graphs):
    """Inputs a: FP32 [-1, 2] and b: FP32 [-1]; outputs a_out and b_out (identity)."""
    spec = [("a", "FP32", (-1, 2)), ("b", "FP32", (-1,))]
    return publish_tiny(
        graphs.identity(spec),
        (TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1,))),
        (TensorSpec("a_out", "FP32", (-1, 2)), TensorSpec("b_out", "FP32", (-1,))),
    )


def test_columns_follow_the_naming_rule_and_outputs_come_from_the_model(two_inputs, tmp_path):
    data = tmp_path / "ref.csv"
    frame = pd.DataFrame({"a_0": [1.0, 2.0, 3.0], "a_1": [4.0, 5.0, 6.0], "b": [7.0, 8.0, 9.0],
                          "id": [1, 2, 3]})
    frame.to_csv(data, index=False)
    without = build_version_profile(two_inputs.path, data)
    assert without.names == ("a_0", "a_1", "b") and without.meta["outputs"] == "none"
    profile = profile_version(two_inputs.path, data, outputs_from_model=True)
    assert profile.names == ("a_0", "a_1", "b", "a_out_0", "a_out_1", "b_out")
    assert profile.column("a_out_1").values.tolist() == [4.0, 5.0, 6.0]
    assert profile.meta["data"] == "reference.csv"  # outside the version: copied in
    assert Profile.load(two_inputs.path).names == profile.names


def test_data_from_outside_is_copied_into_the_version_under_its_digest(two_inputs, tmp_path):
    """`vigil profile build` with data outside the version (it once recorded the absolute path,
    so the version depended on the builder's file): the data is copied in as
    reference.<format>, the profile names it relatively with its sha256, and the version's
    report still reads it once the outside file is gone."""
    data = tmp_path / "elsewhere" / "Ref.CSV"
    data.parent.mkdir()
    pd.DataFrame({"a_0": [1.0, 2.0], "a_1": [3.0, 4.0], "b": [5.0, 6.0]}).to_csv(data, index=False)
    raw = data.read_bytes()
    profile = build_version_profile(two_inputs.path, data)
    assert (profile.meta["data"], profile.meta["data_sha256"]) == (
        "reference.csv", hashlib.sha256(raw).hexdigest())
    assert (two_inputs.path / "reference.csv").read_bytes() == raw
    shutil.rmtree(data.parent)
    reference = version_reference(Profile.load(two_inputs.path), two_inputs.path, max_rows=10)
    assert reference["a_1"].tolist() == [3.0, 4.0]


def test_data_inside_the_version_keeps_its_name_and_is_not_copied(two_inputs) -> None:
    """Data already in the version's folder is named relatively, as it is: no second copy."""
    data = two_inputs.path / "rows" / "mine.npz"
    data.parent.mkdir()
    np.savez(data, a=np.ones((3, 2), np.float32), b=np.zeros(3, np.float32))
    profile = build_version_profile(two_inputs.path, data)
    assert (profile.meta["data"], profile.meta["data_sha256"]) == (
        "rows/mine.npz", hashlib.sha256(data.read_bytes()).hexdigest())
    assert not list(two_inputs.path.glob("reference.*"))


def test_a_refused_build_writes_nothing_into_the_version(two_inputs, tmp_path) -> None:
    """Data that does not fit the model (a feature column missing) is refused before anything
    is written: neither the data's copy nor a profile lands in the version."""
    data = tmp_path / "ref.csv"
    pd.DataFrame({"a_0": [1.0], "b": [2.0]}).to_csv(data, index=False)
    before = sorted(p.name for p in two_inputs.path.iterdir())
    with pytest.raises(ValueError, match="lacks 1 column"):
        build_version_profile(two_inputs.path, data)
    assert sorted(p.name for p in two_inputs.path.iterdir()) == before


def test_outputs_and_tensors_can_come_from_the_file(two_inputs, tmp_path) -> None:
    data = tmp_path / "ref.npz"
    a = np.arange(8, dtype=np.float32).reshape(4, 2)
    np.savez(data, a=a, b=np.ones(4, np.float32), a_out_0=a[:, 0], a_out_1=a[:, 1],
             b_out=np.zeros(4, np.float32))
    profile = build_version_profile(two_inputs.path, data)
    assert profile.meta["outputs"] == "data"
    assert [c.name for c in profile.outputs] == ["a_out_0", "a_out_1", "b_out"]
    assert profile.column("a_1").values.tolist() == [1.0, 3.0, 5.0, 7.0]


def test_missing_feature_columns_are_named(two_inputs, tmp_path) -> None:
    data = tmp_path / "ref.csv"
    pd.DataFrame({"a_0": [1.0], "b": [2.0]}).to_csv(data, index=False)
    with pytest.raises(ValueError, match="lacks 1 column\\(s\\) of input 'a': 'a_1'"):
        build_version_profile(two_inputs.path, data)


def test_cli_profile_build(two_inputs, tmp_path, capsys) -> None:
    data = tmp_path / "ref.csv"
    pd.DataFrame({"a_0": [1.0, 2.0], "a_1": [3.0, 4.0], "b": [5.0, 6.0]}).to_csv(data, index=False)
    repo = str(two_inputs.path.parents[1])
    args = ["profile", "build", "--model", "tiny", "--version", "1", "--data", str(data),
            "--models-dir", repo, "--outputs-from-model"]
    assert main(args) == 0
    assert "tiny/1: 2 rows, 3 features, outputs ['a_out_0', 'a_out_1', 'b_out'] (model)" in (
        capsys.readouterr().out
    )
    assert two_inputs.has_profile
    assert main([*args[:5], "2", *args[6:]]) == 1
    assert "no model version tiny/2" in capsys.readouterr().err
