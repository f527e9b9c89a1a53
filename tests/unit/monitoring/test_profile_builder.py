"""Profiles of model versions from data files: the examples' profile, naming, outputs, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.profile import Profile
from vigil.core.repository import PROFILE_JSON, PROFILE_NPZ
from monitoring.profile_builder import build_version_profile
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
    assert profile.meta["data"] == str(data.resolve())  # outside the version: absolute
    assert Profile.load(two_inputs.path).names == profile.names


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
