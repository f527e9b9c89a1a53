"""The model repository on disk: publish, scan, read_manifest, immutability and sha256."""

from __future__ import annotations

import hashlib
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from vigil.core import exclusive
from vigil.core.repository import (
    MANIFEST_FILE,
    MODEL_FILE,
    ModelVersion,
    RepositoryError,
    VersionExists,
    publish,
    read_manifest,
    scan,
    valid_name,
)
from vigil.core.tensors import TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 3), allow_non_finite=False),)
OUTPUTS = (TensorSpec("y", "INT64", (-1,)),)
WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _publish(root: Path, name: str = "m", version: str = "1", data: bytes = b"onnx-1", **kw):
    return publish(root, name, version, data, INPUTS, OUTPUTS, created=WHEN, **kw)


def test_publish_writes_model_and_manifest(tmp_path: Path) -> None:
    version = _publish(tmp_path, metadata={"task": "t", "classes": ["a", "b"]})
    assert version.path == tmp_path / "m" / "1"
    assert version.model_file == tmp_path / "m" / "1" / MODEL_FILE
    assert version.model_file.read_bytes() == b"onnx-1"
    assert sorted(p.name for p in version.path.iterdir()) == [MODEL_FILE, MANIFEST_FILE]
    assert yaml.safe_load((version.path / MANIFEST_FILE).read_text()) == {
        "name": "m",
        "version": "1",
        "platform": "onnxruntime_onnx",
        "sha256": hashlib.sha256(b"onnx-1").hexdigest(),
        "created": "2024-05-06T07:08:09+00:00",
        "max_batch_rows": 0,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3], "allow_non_finite": False}],
        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1]}],
        "metadata": {"task": "t", "classes": ["a", "b"]},
        "lineage": {},
    }
    assert read_manifest(version.path) == version.manifest
    assert version.read_verified_bytes() == b"onnx-1"


def test_batching_is_declared_and_defaults_to_never(tmp_path: Path) -> None:
    assert _publish(tmp_path, "plain").manifest.max_batch_rows == 0
    declared = _publish(tmp_path, "rowwise", max_batch_rows=64)
    assert read_manifest(declared.path).max_batch_rows == 64
    manifest = yaml.safe_load((declared.path / MANIFEST_FILE).read_text())
    del manifest["max_batch_rows"]  # a model.yaml written before the field existed
    (declared.path / MANIFEST_FILE).write_text(yaml.safe_dump(manifest))
    assert read_manifest(declared.path).max_batch_rows == 0


@pytest.mark.parametrize(
    ("inputs", "outputs", "culprits"),
    [
        ((TensorSpec("x", "FP32", (1, 2)),), OUTPUTS, "['x']"),  # fixed first dimension
        (INPUTS, (TensorSpec("y", "FP32", (2,)),), "['y']"),  # an output without the batch axis
        ((TensorSpec("s", "FP32", ()),), (TensorSpec("y", "FP32", ()),), "['s', 'y']"),  # scalars
    ],
)
def test_declaring_batching_on_a_signature_that_cannot_batch_is_refused(
    tmp_path: Path, inputs, outputs, culprits
) -> None:
    with pytest.raises(RepositoryError) as info:
        publish(tmp_path, "m", "1", b"x", inputs, outputs, max_batch_rows=8)
    assert str(info.value).startswith(f"m/1 declares max_batch_rows 8, but {culprits} have no "
                                      "dynamic first (batch) dimension")
    assert not (tmp_path / "m").exists()  # nothing written
    version = publish(tmp_path, "m", "1", b"x", inputs, outputs)  # undeclared: fine
    manifest = yaml.safe_load((version.path / MANIFEST_FILE).read_text())
    manifest["max_batch_rows"] = 8  # declared by hand afterwards: the version refuses to load
    (version.path / MANIFEST_FILE).write_text(yaml.safe_dump(manifest))
    with pytest.raises(RepositoryError, match="cannot be stacked; declare max_batch_rows: 0"):
        scan(tmp_path)


@pytest.mark.parametrize("value", [-1, True, "64", 1.5, 10**7])
def test_max_batch_rows_must_be_a_bounded_integer(tmp_path: Path, value) -> None:
    version = _publish(tmp_path)
    manifest = yaml.safe_load((version.path / MANIFEST_FILE).read_text())
    manifest["max_batch_rows"] = value
    (version.path / MANIFEST_FILE).write_text(yaml.safe_dump(manifest))
    with pytest.raises(RepositoryError, match="max_batch_rows must be an integer from 0"):
        read_manifest(version.path)


@pytest.mark.parametrize("label", ["1\n", "", "-1", "a/b", "..", "x" * 129, "é"])
def test_names_are_letters_digits_dot_dash_underscore(tmp_path: Path, label: str) -> None:
    assert not valid_name(label)
    with pytest.raises(RepositoryError, match="letters, digits"):
        _publish(tmp_path, version=label)


def test_scan_finds_published_versions(tmp_path: Path) -> None:
    a = _publish(tmp_path, "alpha", "1")
    b = _publish(tmp_path, "beta", "3", b"other")
    found = scan(tmp_path)
    assert found == {"alpha": [a], "beta": [b]}
    assert found["alpha"][0].manifest.inputs == INPUTS
    assert found["beta"][0].manifest.outputs == OUTPUTS
    assert scan(tmp_path, only=["beta"]) == {"beta": [b]}


def test_versions_are_immutable(tmp_path: Path) -> None:
    first = _publish(tmp_path)
    again = _publish(tmp_path)  # the same bytes: a no-op that returns the existing version
    assert again == first
    with pytest.raises(RepositoryError) as info:
        _publish(tmp_path, data=b"onnx-2")
    assert str(info.value) == "m/1 already exists with other contents"
    assert first.model_file.read_bytes() == b"onnx-1"
    assert read_manifest(first.path).sha256 == hashlib.sha256(b"onnx-1").hexdigest()


def test_versions_sort_numerically_then_labels_first(tmp_path: Path) -> None:
    for i, label in enumerate(["10", "2", "1", "canary", "9"]):
        _publish(tmp_path, "m", label, f"bytes-{i}".encode())
    assert [v.manifest.version for v in scan(tmp_path)["m"]] == ["canary", "1", "2", "9", "10"]


def test_scan_skips_versions_without_manifest_and_odd_folders(tmp_path: Path) -> None:
    _publish(tmp_path, "m", "1")
    (tmp_path / "m" / "2").mkdir()  # half-published: model.onnx written, manifest not yet
    (tmp_path / "m" / "2" / MODEL_FILE).write_bytes(b"partial")
    (tmp_path / "m" / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()  # a model folder with no versions is not a model
    (tmp_path / "README.md").write_text("not a model")
    found = scan(tmp_path)
    assert list(found) == ["m"]
    assert [v.manifest.version for v in found["m"]] == ["1"]


def test_scan_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        scan(tmp_path / "nowhere")


def test_scan_missing_models_named_in_only(tmp_path: Path) -> None:
    _publish(tmp_path, "alpha")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError) as info:
        scan(tmp_path, only=["alpha", "gamma", "empty"])
    assert str(info.value) == f"models not found in {tmp_path}: ['empty', 'gamma']"


def test_manifest_name_mismatch(tmp_path: Path) -> None:
    version = _publish(tmp_path, "m", "1")
    moved = tmp_path / "other" / "1"
    moved.parent.mkdir()
    version.path.rename(moved)
    with pytest.raises(RepositoryError) as info:
        scan(tmp_path)
    assert str(info.value) == f"{moved}: manifest says m/1"


def test_manifest_version_mismatch(tmp_path: Path) -> None:
    version = _publish(tmp_path, "m", "1")
    version.path.rename(tmp_path / "m" / "2")
    with pytest.raises(RepositoryError, match="manifest says m/1"):
        scan(tmp_path)


def _write_manifest(tmp_path: Path, text: str) -> Path:
    version_dir = tmp_path / "m" / "1"
    version_dir.mkdir(parents=True)
    (version_dir / MANIFEST_FILE).write_text(text)
    return version_dir


GOOD = """\
name: m
version: '1'
sha256: abc
inputs:
- {name: x, datatype: FP32, shape: [-1, 3]}
outputs:
- {name: y, datatype: INT64, shape: [-1]}
"""


def test_read_manifest_defaults(tmp_path: Path) -> None:
    manifest = read_manifest(_write_manifest(tmp_path, GOOD))
    assert manifest.name == "m" and manifest.version == "1" and manifest.sha256 == "abc"
    assert manifest.platform == "onnxruntime_onnx"
    assert manifest.created == "" and manifest.metadata == {}
    assert manifest.inputs == (TensorSpec("x", "FP32", (-1, 3)),)
    assert manifest.inputs[0].allow_non_finite is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: m\nversion: [1\n", "while parsing"),
        ("- just\n- a list\n", "expected a mapping"),
        ("", "expected a mapping"),
        (GOOD.replace("sha256: abc\n", ""), "missing field 'sha256'"),
        (GOOD.replace("name: m\n", ""), "missing field 'name'"),
        (GOOD.replace("FP32", "FLOAT"), "inputs: unknown datatype 'FLOAT'"),
        (GOOD.replace("INT64", "int64"), "outputs: unknown datatype 'int64'"),
        (GOOD.replace("FP32", "[FP32]"), "inputs: unknown datatype ['FP32']"),
        (GOOD.replace("[-1, 3]", "[-2, 3]"), "inputs: shape must be a list of ints >= -1"),
        (GOOD.replace("[-1, 3]", "[-1, 3.5]"), "inputs: shape must be a list of ints >= -1"),
        (GOOD.replace("[-1, 3]", "'-1, 3'"), "inputs: shape must be a list of ints >= -1"),
        (GOOD.replace("[-1, 3]", "[true, 3]"), "inputs: shape must be a list of ints >= -1"),
        (GOOD.replace("shape: [-1]}", "shape: [-1], scale: 2}"), "outputs: expected name, datatype"),
        (GOOD.replace("- {name: y, datatype: INT64, shape: [-1]}", "- y"), "outputs: expected name"),
        (GOOD.replace("- {name: x, datatype: FP32, shape: [-1, 3]}", "- {datatype: FP32, shape: [1]}"),
         "inputs: a tensor needs a non-empty string 'name'"),
        (GOOD.replace("outputs:\n- {name: y, datatype: INT64, shape: [-1]}\n", "outputs:\n"),
         "'outputs' must be a list"),
        (GOOD.replace("inputs:\n- {name: x, datatype: FP32, shape: [-1, 3]}\n", "inputs: 3\n"),
         "'inputs' must be a list"),
    ],
    ids=[
        "malformed yaml", "list", "empty", "no sha256", "no name", "bad datatype",
        "lowercase datatype", "list datatype", "shape -2", "float dim", "string shape", "bool dim",
        "unknown spec key", "spec not mapping", "spec without name", "outputs empty",
        "inputs not list",
    ],
)  # fmt: skip
def test_malformed_manifest(tmp_path: Path, text: str, message: str) -> None:
    version_dir = _write_manifest(tmp_path, text)
    with pytest.raises(RepositoryError) as info:
        read_manifest(version_dir)
    assert str(info.value).startswith(str(version_dir / MANIFEST_FILE))
    assert message in str(info.value)
    with pytest.raises(RepositoryError):
        scan(tmp_path)


def test_invalid_names_refused(tmp_path: Path) -> None:
    for name, version in (("../up", "1"), ("m", "1/2"), ("", "1"), ("m", ".hidden"), ("m", "a b")):
        with pytest.raises(RepositoryError, match="invalid name"):
            _publish(tmp_path, name, version)
    assert list(tmp_path.iterdir()) == []


def test_tampered_bytes_refused(tmp_path: Path) -> None:
    version = _publish(tmp_path)
    version.model_file.write_bytes(b"onnx-X")
    with pytest.raises(RepositoryError) as info:
        version.read_verified_bytes()
    message = str(info.value)
    assert hashlib.sha256(b"onnx-X").hexdigest() in message
    assert hashlib.sha256(b"onnx-1").hexdigest() in message
    assert "refusing to load a modified version" in message


def test_scan_of_the_built_examples(example_root: Path) -> None:
    found = scan(example_root)
    assert sorted(found) == ["breast_cancer", "mlp"]
    for versions in found.values():
        (version,) = versions
        assert isinstance(version, ModelVersion)
        assert version.manifest.version == "1"
        assert hashlib.sha256(version.read_verified_bytes()).hexdigest() == version.manifest.sha256


def test_publish_is_atomic_and_carries_lineage_and_extra_files(tmp_path: Path) -> None:
    version = _publish(tmp_path, lineage={"published_by": "ci", "source_sha256": "ab"},
                       extra_files={"profile.json": b"{}"})
    assert read_manifest(version.path).lineage == {"published_by": "ci", "source_sha256": "ab"}
    assert (version.path / "profile.json").read_bytes() == b"{}"
    # Nothing but the version folder is left in the model's folder: no staging folder.
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


def test_a_version_folder_without_manifest_is_refused_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "junk").write_bytes(b"x")
    with pytest.raises(RepositoryError, match="m/1 already exists"):
        _publish(tmp_path)
    assert [p.name for p in (tmp_path / "m").iterdir() if p.name.startswith(".")] == []


# --- the exclusive create: a version appears once, never over a folder already there ----------


BOTH_WAYS = pytest.mark.parametrize(
    "fallback", [False, True], ids=["renameat2", "check-then-rename"]
)


@BOTH_WAYS
def test_either_way_an_empty_folder_is_refused(
    tmp_path: Path, fallback: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty m/1 already there: VersionExists, naming the folder without model.yaml, with
    the kernel's renameat2 and with the check and rename under the publish lock that stand in
    where libc lacks it (such a libc, which this host's is not, is the fake)."""
    if fallback:
        monkeypatch.setattr(exclusive, "_renameat2", lambda: None)
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(VersionExists, match="m/1 already exists as a folder without model.yaml"):
        _publish(tmp_path)
    assert list((tmp_path / "m" / "1").iterdir()) == []
    assert [p.name for p in (tmp_path / "m").iterdir() if p.is_dir()] == ["1"]  # no staging


def _race(root: str, data: bytes, start: Any, results: Any, fallback: bool) -> None:
    """One racing publisher (its own process): waits at the barrier, publishes m/1."""
    if fallback:
        exclusive._renameat2 = lambda: None  # type: ignore[assignment]
    start.wait(30)
    try:
        _publish(Path(root), data=data)
    except VersionExists as exc:
        results.put(("refused", data, str(exc)))
    else:
        results.put(("published", data, ""))


@BOTH_WAYS
def test_racing_publishers_of_one_version_have_one_winner(tmp_path: Path, fallback: bool) -> None:
    """Six processes publish m/1 with six different bytes at once. Into a free m/1: exactly one
    publishes, five get VersionExists, and m/1 holds the winner's bytes and manifest. Into an
    empty m/1 left by an earlier claim: all six get VersionExists and the folder stays empty."""
    context = multiprocessing.get_context("spawn")
    for claimed in (False, True):
        root = tmp_path / f"claimed-{claimed}"
        if claimed:
            (root / "m" / "1").mkdir(parents=True)
        start, results = context.Barrier(6), context.Queue()
        racers = [
            context.Process(target=_race, args=(str(root), f"bytes-{i}".encode(), start, results,
                                                fallback))
            for i in range(6)
        ]
        for racer in racers:
            racer.start()
        outcomes = [results.get(timeout=60) for _ in racers]
        for racer in racers:
            racer.join(30)
        won = [data for kind, data, _ in outcomes if kind == "published"]
        if claimed:  # the claim is nobody's version: every publisher is refused
            assert won == [] and list((root / "m" / "1").iterdir()) == []
            continue
        assert len(won) == 1, outcomes
        assert (root / "m" / "1" / MODEL_FILE).read_bytes() == won[0]
        assert read_manifest(root / "m" / "1").sha256 == hashlib.sha256(won[0]).hexdigest()
        assert [p.name for p in (root / "m").iterdir() if p.is_dir()] == ["1"]  # no staging


def test_racing_publishers_of_the_same_bytes_both_get_the_version(tmp_path: Path) -> None:
    """Publishing is idempotent for the same bytes, a race included: the loser of the rename
    returns the winner's version instead of refusing it."""
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda _: _publish(tmp_path), range(4)))
    assert {v.manifest.sha256 for v in versions} == {hashlib.sha256(b"onnx-1").hexdigest()}
    assert [p.name for p in (tmp_path / "m").iterdir() if p.is_dir()] == ["1"]
