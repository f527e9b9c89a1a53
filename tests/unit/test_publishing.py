"""`vigil models publish` and vigil.tools.publishing: an ONNX file checked, its signature read by
onnxruntime, its lineage and reference profile written with it, audited; every refusal with its
exit code and message, and nothing written when refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from monitoring.profile import Profile
from load_tests.procs import free_port
from tests.graphs import IR_VERSION, OPSET, double_graph, fixed_pair_graph, identity_graph
from tests.without_onnxruntime import run_without_onnxruntime
from vigil.tools.cli import main
from vigil.tools.model_client import local_actor
from vigil.tools.publishing import PublishError, count_rows, next_version, publish_file

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_server() -> str:
    """A URL where nothing listens: publishing reports that no server was told."""
    return f"http://127.0.0.1:{free_port()}"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def _publish(capsys: pytest.CaptureFixture[str], repo: Path, url: str, *argv: str
             ) -> tuple[int, str, str]:
    return _run(capsys, "models", "publish", *argv, "--repository", str(repo), "--url", url)


def _one_node_model(node: onnx.NodeProto, name: str, inputs: onnx.ValueInfoProto,
                    outputs: onnx.ValueInfoProto, initializer: list[onnx.TensorProto] | None = None
                    ) -> onnx.ModelProto:
    """A model of one node, left unchecked by onnx: publishing is what must refuse it."""
    graph = helper.make_graph([node], name, [inputs], [outputs], initializer=initializer)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    return proto


def _nothing_written(repo: Path, name: str = "m") -> None:
    assert not (repo / name).exists() or not any((repo / name).iterdir())
    assert not (repo / "audit.jsonl").exists()


# ------------------------------------------------------------------ the happy path


def test_publish_records_signature_digest_lineage_profile_and_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    reference = tmp_path / "reference.npz"
    np.savez(reference, x_0=np.arange(6, dtype=np.float32), x_1=np.ones(6, np.float32))
    training = tmp_path / "train.csv"
    training.write_text("a,b\n1,2\n3,4\n5,6\n")
    repo = tmp_path / "repo"

    code, out, err = _publish(
        capsys, repo, no_server, str(source), "--name", "m", "--reference", str(reference),
        "--outputs-from-model", "--max-batch-rows", "64", "--training-data", str(training),
        "--code-commit", COMMIT, "--params", '{"lr": 0.1, "epochs": 3}',
        "--metrics", '{"auc": 0.93}', "--meta", "task=doubling", "--meta", "classes=[0, 1]",
        "--actor", "ci-bot",
    )

    assert code == 0, err
    version_dir = repo / "m" / "1"
    data = source.read_bytes()
    doc = yaml.safe_load((version_dir / "model.yaml").read_text())
    assert doc["sha256"] == hashlib.sha256(data).hexdigest()
    assert (version_dir / "model.onnx").read_bytes() == data
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    assert doc["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}]
    assert doc["max_batch_rows"] == 64
    assert doc["metadata"] == {"task": "doubling", "classes": [0, 1]}
    lineage = doc["lineage"]
    assert lineage["published_by"] == "ci-bot"
    assert lineage["published_at"] == doc["created"]
    assert lineage["source_file"] == "double.onnx"
    assert lineage["source_sha256"] == doc["sha256"]
    assert lineage["training_data"] == {  # named, not located: no path of the publisher's
        "file": "train.csv",
        "sha256": hashlib.sha256(training.read_bytes()).hexdigest(),
        "rows": 3,
    }
    assert lineage["code_commit"] == COMMIT
    assert lineage["params"] == {"lr": 0.1, "epochs": 3}
    assert lineage["metrics"] == {"auc": 0.93}

    profile = Profile.load(version_dir)  # written inside the version before it was visible
    assert profile.rows == 6
    assert profile.meta is not None and profile.meta["model_sha256"] == doc["sha256"]
    assert profile.meta["outputs"] == "model"
    # The reference data travels with the version, named relatively, under its digest.
    assert (version_dir / "reference.npz").read_bytes() == reference.read_bytes()
    assert (profile.meta["data"], profile.meta["data_sha256"]) == (
        "reference.npz", hashlib.sha256(reference.read_bytes()).hexdigest())
    assert sorted(os.listdir(repo / "m")) == ["1"]  # no staging folder left behind

    (entry,) = [json.loads(line) for line in (repo / "audit.jsonl").read_text().splitlines()]
    assert {k: entry[k] for k in ("actor", "action", "model", "from_version", "to_version")} == {
        "actor": "ci-bot", "action": "publish", "model": "m", "from_version": None,
        "to_version": "1",
    }
    assert entry["details"]["sha256"] == doc["sha256"]

    assert out.splitlines()[0] == f"published m/1 -> {version_dir}"
    assert "batches up to 64 rows; reference profile of 6 rows" in out
    assert "inputs  x:FP32[-1, -1]" in out
    assert f"no server at {no_server}: the repository {repo} was written; a server reads it " \
           "when it starts" in out


def test_json_output_carries_the_manifest_lineage_and_audit_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(identity_graph([("t", "INT64", (-1, 3))]), tmp_path / "ids.onnx")
    code, out, _ = _publish(capsys, tmp_path / "repo", no_server, str(source), "--name", "ids",
                            "--json", "--code-commit", COMMIT)
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "ids" and doc["version"] == "1"
    assert doc["inputs"] == [{"name": "t", "datatype": "INT64", "shape": [-1, 3]}]
    assert doc["outputs"] == [{"name": "t_out", "datatype": "INT64", "shape": [-1, 3]}]
    assert doc["max_batch_rows"] == 0 and doc["profile_rows"] is None and doc["load"] is None
    assert doc["lineage"]["published_by"] == local_actor()
    assert doc["audit"]["action"] == "publish" and doc["audit"]["to_version"] == "1"


def test_versions_number_on_from_the_highest_whole_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    repo = tmp_path / "repo"
    assert next_version(repo, "m") == "1"
    for expected in ("1", "2"):
        code, out, _ = _publish(capsys, repo, no_server, str(source), "--name", "m")
        assert code == 0 and out.startswith(f"published m/{expected} ")
    assert _publish(capsys, repo, no_server, str(source), "--name", "m", "--version", "10")[0] == 0
    assert _publish(capsys, repo, no_server, str(source), "--name", "m",
                    "--version", "beta")[0] == 0
    assert next_version(repo, "m") == "11"  # numerically above 10 and 2; labels do not count
    (repo / "m" / "11").mkdir()  # a half-written version is never published over
    assert next_version(repo, "m") == "12"
    versions = [e["to_version"] for e in map(json.loads, (repo / "audit.jsonl").open())]
    assert versions == ["1", "2", "10", "beta"]


def test_code_commit_defaults_to_the_git_head_of_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # not a git work tree: no code_commit at all
    assert _publish(capsys, tmp_path / "repo", no_server, str(source), "--name", "plain")[0] == 0
    doc = yaml.safe_load((tmp_path / "repo" / "plain" / "1" / "model.yaml").read_text())
    assert "code_commit" not in doc["lineage"]

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=work, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=work, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert _publish(capsys, tmp_path / "repo", no_server, str(source), "--name", "tracked")[0] == 0
    doc = yaml.safe_load((tmp_path / "repo" / "tracked" / "1" / "model.yaml").read_text())
    assert doc["lineage"]["code_commit"] == head


def test_rows_of_training_data_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((7, 3), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros(4), y=np.ones(4))
    (tmp_path / "c.csv").write_text("x,y\n1,2\n3,4\n")
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"x": range(5)}).to_parquet(tmp_path / "d.parquet")
    (tmp_path / "e.txt").write_text("whatever")
    assert [count_rows(tmp_path / f) for f in ("a.npy", "b.npz", "c.csv", "d.parquet",
                                               "e.txt")] == [7, 4, 2, 5, None]


# ------------------------------------------------------------------ refusals (exit 2)


def _refused(capsys: pytest.CaptureFixture[str], repo: Path, url: str, *argv: str) -> str:
    code, out, err = _publish(capsys, repo, url, *argv)
    assert code == 2, (out, err)
    assert out == ""
    _nothing_written(repo)
    return err


def test_a_missing_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   no_server: str) -> None:
    err = _refused(capsys, tmp_path / "repo", no_server, str(tmp_path / "nope.onnx"),
                   "--name", "m")
    assert err == f"vigil: {tmp_path / 'nope.onnx'}: no such file\n"


def test_a_file_that_is_not_onnx_is_refused_with_onnxruntimes_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 4)
    err = _refused(capsys, tmp_path / "repo", no_server, str(bad), "--name", "m")
    assert err.startswith(f"vigil: {bad} is not a model onnxruntime can load: ")
    assert "ONNXRuntimeError" in err or "INVALID" in err


def test_a_graph_onnxruntime_cannot_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    proto = _one_node_model(
        helper.make_node("NoSuchOperator", ["x"], ["y"]), "g",
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"]),
    )
    source = _save(proto, tmp_path / "m.onnx")
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m")
    assert "is not a model onnxruntime can load" in err and "NoSuchOperator" in err


def test_a_file_over_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    huge = tmp_path / "huge.onnx"
    with huge.open("wb") as f:  # sparse: 2 GiB + 1 byte on the file's say-so, nothing on disk
        f.truncate(2 * 1024**3 + 1)
    err = _refused(capsys, tmp_path / "repo", no_server, str(huge), "--name", "m")
    assert err == (f"vigil: {huge} is {2 * 1024**3 + 1} bytes, above the limit of "
                   f"{2 * 1024**3} (--max-model-bytes)\n")
    small = _save(double_graph(), tmp_path / "double.onnx")
    err = _refused(capsys, tmp_path / "repo", no_server, str(small), "--name", "m",
                   "--max-model-bytes", "10")
    assert "bytes, above the limit of 10 (--max-model-bytes)" in err


def _with_external_data(tmp_path: Path, location: str) -> Path:
    """A graph whose one initializer claims its data is at `location`."""
    weight = numpy_helper.from_array(np.full(4, 2.0, np.float32), "w")
    proto = _one_node_model(
        helper.make_node("Mul", ["x", "w"], ["y"]), "external",
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]), initializer=[weight],
    )
    tensor = proto.graph.initializer[0]
    raw = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    return _save(proto, folder / "model.onnx")


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin",
                                      "link/secret.bin"])
def test_external_data_outside_the_files_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str, location: str
) -> None:
    (tmp_path / "secret.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    source = _with_external_data(tmp_path, location)
    (source.parent / "link").symlink_to(tmp_path)  # resolves outside src/
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m")
    assert err.startswith(f"vigil: {source}: tensor 'w' keeps its data at '{location}', outside "
                          f"the model file's folder {source.parent.resolve()}; refused")


def test_external_data_beside_the_file_is_refused_with_how_to_inline_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _with_external_data(tmp_path, "weights.bin")
    (source.parent / "weights.bin").write_bytes(np.full(4, 2.0, np.float32).tobytes())
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m")
    assert "keeps tensor data in external files (weights.bin)" in err
    assert "save_as_external_data=False" in err
    # The same model inlined publishes.
    inlined = onnx.load(str(source))
    onnx.save(inlined, str(tmp_path / "inlined.onnx"), save_as_external_data=False)
    assert _publish(capsys, tmp_path / "repo", no_server, str(tmp_path / "inlined.onnx"),
                    "--name", "m")[0] == 0


@pytest.mark.parametrize("value", ["0", "-4", "1000001"])
def test_max_batch_rows_out_of_bounds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str, value: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m",
                   "--max-batch-rows", value)
    assert err == (f"vigil: --max-batch-rows must be from 1 to 1000000 (rows of several requests "
                   f"stacked into one run), not {value}\n")


def test_batching_a_model_without_a_dynamic_first_dimension_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(fixed_pair_graph(), tmp_path / "pair.onnx")
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m",
                   "--max-batch-rows", "8")
    assert "m/1 declares max_batch_rows 8, but ['x', 'y'] have no dynamic first (batch) " \
           "dimension" in err
    assert err.endswith("(publish it without --max-batch-rows)\n")


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--name", "a/b", "invalid model name 'a/b'"),
    ("--name", "-dash", "invalid model name '-dash'"),
    ("--version", "1 2", "invalid version '1 2'"),
    ("--version", "", "invalid version ''"),
    ("--code-commit", "main", "code commit 'main' is not a git commit id"),
    ("--meta", "novalue", "--meta 'novalue': expected KEY=VALUE"),
    ("--params", "[1, 2]", "--params: expected a JSON object, got list"),
    ("--metrics", "{auc", "--metrics: not JSON"),
])
def test_bad_arguments_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str, flag: str, value: str,
    message: str,
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    argv = [str(source), f"{flag}={value}"]
    if flag != "--name":
        argv.append("--name=m")
    err = _refused(capsys, tmp_path / "repo", no_server, *argv)
    assert err.startswith(f"vigil: {message}")


def test_an_existing_version_is_refused_whatever_its_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    repo = tmp_path / "repo"
    assert _publish(capsys, repo, no_server, str(source), "--name", "m", "--version", "1")[0] == 0
    before = (repo / "audit.jsonl").read_bytes()
    for same_or_other in (source, _save(fixed_pair_graph(), tmp_path / "pair.onnx")):
        code, _, err = _publish(capsys, repo, no_server, str(same_or_other), "--name", "m",
                                "--version", "1")
        assert code == 2
        assert err == (f"vigil: m/1 already exists in {repo}: versions are immutable; publish "
                       "this file as a new version (the next free one is 2)\n")
    assert (repo / "audit.jsonl").read_bytes() == before


def test_reference_data_that_does_not_fit_is_refused_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(identity_graph([("x", "FP32", (-1, 2))]), tmp_path / "m.onnx")
    reference = tmp_path / "ref.npz"
    np.savez(reference, other=np.zeros(3))
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m",
                   "--reference", str(reference))
    assert err.startswith(f"vigil: reference data {reference}: ")
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m",
                   "--reference", str(tmp_path / "missing.csv"))
    assert err == f"vigil: reference data {tmp_path / 'missing.csv'}: no such file\n"


def test_a_missing_training_data_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    err = _refused(capsys, tmp_path / "repo", no_server, str(source), "--name", "m",
                   "--training-data", str(tmp_path / "gone.csv"))
    assert err == f"vigil: training data {tmp_path / 'gone.csv'}: no such file\n"


def test_tensors_vigil_cannot_serve_are_refused(tmp_path: Path) -> None:
    proto = _one_node_model(
        helper.make_node("SequenceConstruct", ["x"], ["s"]), "seq",
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, ["N"]),
    )
    source = _save(proto, tmp_path / "seq.onnx")
    with pytest.raises(PublishError, match=r"output 's' is seq\(tensor\(float\)\); Vigil serves "
                                           r"tensors of BOOL, BYTES, .* only"):
        publish_file(tmp_path / "repo", source, "m", actor="t")
    _nothing_written(tmp_path / "repo")


def test_an_input_without_a_shape_is_refused(tmp_path: Path) -> None:
    proto = _one_node_model(
        helper.make_node("Identity", ["x"], ["y"]), "rankless",
        helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
    )
    source = _save(proto, tmp_path / "rankless.onnx")
    with pytest.raises(PublishError, match="input 'x' has no shape in the graph"):
        publish_file(tmp_path / "repo", source, "m", actor="t")


# ------------------------------------------------------------------ imports


_MODELS_COMMANDS = """
import vigil.tools.cli, vigil.tools.models_cli, vigil.tools.model_client
assert vigil.tools.cli.main(["models", "list", "--url", sys.argv[1], "--repository", sys.argv[2]]) == 0
assert not any(m == "onnxruntime" or m.startswith("onnxruntime.") for m in sys.modules)
print("models commands run without onnxruntime")
"""


def test_the_models_commands_import_without_onnxruntime(tmp_path: Path, no_server: str) -> None:
    (tmp_path / "repo").mkdir()
    result = run_without_onnxruntime(_MODELS_COMMANDS, no_server, str(tmp_path / "repo"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("models commands run without onnxruntime")


def test_publishing_imports_onnxruntime_only_when_it_publishes() -> None:
    code = ("import sys, vigil.tools.publishing; "
            "print(any(m.startswith('onnxruntime') or m == 'onnx' for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_new_version_takes_productions_descriptive_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: str
) -> None:
    source = _save(double_graph(), tmp_path / "double.onnx")
    repo = tmp_path / "repo"
    evaluation = '{"data": "holdout.parquet", "target": "y"}'
    assert _publish(capsys, repo, no_server, str(source), "--name", "m", "--meta",
                    'feature_names=["a", "b"]', "--meta", f"evaluation={evaluation}",
                    "--meta", "training_rows=10")[0] == 0
    assert _publish(capsys, repo, no_server, str(source), "--name", "m", "--meta",
                    "task=regression")[0] == 0
    two = yaml.safe_load((repo / "m" / "2" / "model.yaml").read_text())
    # Descriptive keys come along, facts about version 1's training do not; --meta wins.
    assert two["metadata"] == {"feature_names": ["a", "b"], "evaluation": json.loads(evaluation),
                               "task": "regression"}
    assert two["lineage"]["metadata_from"] == "m/1"
    assert _publish(capsys, repo, no_server, str(source), "--name", "m",
                    "--no-inherit-metadata")[0] == 0
    three = yaml.safe_load((repo / "m" / "3" / "model.yaml").read_text())
    assert three["metadata"] == {} and "metadata_from" not in three["lineage"]


def test_inputs_named_finite_refuse_non_finite_values(tmp_path: Path) -> None:
    """finite_inputs marks inputs that refuse NaN and infinities (as the examples declare
    theirs; a graph cannot say it), so a publisher that builds versions of such a model (the
    retrain receiver) keeps its signature; a name that is not an input is refused."""
    source = _save(identity_graph([("a", "FP32", (-1, 2)), ("b", "FP32", (-1,))]),
                   tmp_path / "two.onnx")
    done = publish_file(tmp_path / "repo", source, "m", actor="t", finite_inputs=["a"])
    assert [(s.name, s.allow_non_finite) for s in done.version.manifest.inputs] == [
        ("a", False), ("b", True)]
    doc = yaml.safe_load((done.version.path / "model.yaml").read_text())
    assert doc["inputs"][0]["allow_non_finite"] is False
    with pytest.raises(PublishError, match=r"finite inputs \['c'\] are not inputs of the model "
                                           r"\(its inputs: a, b\)"):
        publish_file(tmp_path / "repo", source, "m", actor="t", finite_inputs=["c"])
    assert next_version(tmp_path / "repo", "m") == "2"
