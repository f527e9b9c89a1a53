"""vigil.core.repository_health on real files: each kind of fault a model's entry can have, found
from its files alone, and nothing reported for a sound model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vigil.core import aliases, model_ops
from vigil.core.aliases import AliasState, Canary
from vigil.core.repository import MANIFEST_FILE, MODEL_FILE, publish, scan
from vigil.core.repository_health import (
    Fault,
    FaultKind,
    alias_faults,
    broken_aliases,
    counts,
    disk_faults,
    file_fault,
)
from vigil.core.tensors import TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 2)),)
OUTPUTS = (TensorSpec("y", "FP32", (-1, 2)),)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name, versions in (("m", ("1", "2")), ("other", ("1",))):
        for v in versions:
            publish(root, name, v, f"{name}-{v}".encode(), INPUTS, OUTPUTS)
    return root


def _kinds(faults: list[Fault]) -> list[tuple[str, str]]:
    return [(str(f.kind), f.subject) for f in faults]


def test_a_sound_model_has_no_fault(repo: Path) -> None:
    assert disk_faults(repo, "m") == []
    assert disk_faults(repo, "nope") == []  # not a model at all: nothing to report


def test_a_malformed_model_yaml_makes_the_model_unreadable_and_spares_the_others(repo: Path
                                                                               ) -> None:
    (repo / "m" / "2" / MANIFEST_FILE).write_text("name: m\nversion: '2'\n")  # no sha256
    faults = disk_faults(repo, "m")
    assert _kinds(faults) == [("unreadable", "")]
    assert "missing field" in faults[0].detail and str(repo / "m" / "2") in faults[0].detail
    assert disk_faults(repo, "other") == []


def test_a_corrupt_aliases_file_is_named_with_what_is_wrong(repo: Path) -> None:
    (repo / "m" / aliases.ALIASES_FILE).write_text('{"model": "m", "canary": {"weight"')
    (fault,) = disk_faults(repo, "m")
    assert fault.kind is FaultKind.ALIASES
    assert str(repo / "m" / "aliases.json") in fault.detail and "not JSON" in fault.detail


@pytest.mark.parametrize("doc", ['[1, 2]', '{"model": "other"}', '{"model": "m", "canary": 3}'])
def test_each_malformed_aliases_document_is_a_409_fault(repo: Path, doc: str) -> None:
    (repo / "m" / aliases.ALIASES_FILE).write_text(doc)
    with pytest.raises(aliases.AliasFileError) as info:
        aliases.read_aliases(repo, "m")
    assert info.value.status == 409 and "aliases.json" in str(info.value)
    assert _kinds(disk_faults(repo, "m")) == [("aliases", "")]


def test_other_bytes_in_model_onnx_are_modified_and_a_gone_file_is_missing(repo: Path) -> None:
    versions = scan(repo, ["m"])["m"]
    (repo / "m" / "1" / MODEL_FILE).write_bytes(b"other bytes")
    (repo / "m" / "2" / MODEL_FILE).unlink()
    one, two = (file_fault(v) for v in versions)
    assert one is not None and one.kind is FaultKind.MODIFIED and one.subject == "1"
    assert "sha256" in one.detail and versions[0].manifest.sha256 in one.detail
    assert two is not None and two.kind is FaultKind.MISSING and "is gone" in two.detail
    assert _kinds(disk_faults(repo, "m")) == [("modified", "1"), ("missing", "2")]


def test_bytes_put_back_clear_the_fault_though_the_digest_was_cached(repo: Path) -> None:
    (version,) = [v for v in scan(repo, ["m"])["m"] if v.manifest.version == "1"]
    original = version.model_file.read_bytes()
    assert file_fault(version) is None
    version.model_file.write_bytes(b"x" * len(original))
    os.utime(version.model_file, ns=(1, 1))  # a changed file must be seen even if its stamp is old
    assert file_fault(version) is not None
    version.model_file.write_bytes(original)
    assert file_fault(version) is None


def test_aliases_naming_no_version_are_broken_with_the_reason() -> None:
    state = AliasState("m", production="7", canary=Canary("9", 0.5), shadow="1",
                       retired=frozenset({"1"}))
    broken = broken_aliases(state, ["1", "2"])
    assert sorted(broken) == ["canary", "production", "shadow"]
    assert "version 9, which is not in the repository (published: 1, 2)" in broken["canary"]
    assert "retired" in broken["shadow"]
    assert broken_aliases(AliasState("m", canary=Canary("2", 0.1)), ["1", "2"]) == {}
    assert [f.subject for f in alias_faults(state, ["1", "2"])] == [
        "canary", "production", "shadow"]


def test_a_production_folder_deleted_is_a_broken_alias_on_disk(repo: Path) -> None:
    model_ops.apply(repo, "m", "promote", actor="t", version="2", force=True, reason="test")
    shutil.rmtree(repo / "m" / "2")
    (fault,) = disk_faults(repo, "m")
    assert fault.key == ("m", "broken_alias", "production")
    assert fault.describe().startswith("m alias production: broken_alias: names version 2")


def test_a_change_never_writes_a_broken_alias_but_mends_one(repo: Path) -> None:
    doc = aliases.read_aliases(repo, "m").to_dict() | {
        "canary": {"version": "9", "weight": 0.5, "sticky_header": None}}
    (repo / "m" / aliases.ALIASES_FILE).write_text(__import__("json").dumps(doc))
    # Other changes still go through while the canary is broken, and --off mends it.
    model_ops.apply(repo, "m", "shadow", actor="t", version="2")
    done = model_ops.apply(repo, "m", "canary_cleared", actor="t")
    assert done.after.canary is None and disk_faults(repo, "m") == []


def test_the_write_guard_refuses_a_transition_that_would_break_an_alias(repo: Path) -> None:
    before = aliases.read_aliases(repo, "m")
    with pytest.raises(aliases.AliasError, match="canary alias would be broken") as info:
        model_ops._refuse_broken(before, AliasState("m", canary=Canary("9", 0.5)), ["1", "2"])
    assert info.value.status == 409


def test_counts_are_by_model_and_kind() -> None:
    faults = [Fault("m", FaultKind.MODIFIED, "1", ""), Fault("m", FaultKind.MODIFIED, "2", ""),
              Fault("o", FaultKind.ALIASES, "", "")]
    assert counts(faults) == {("m", "modified"): 2, ("o", "aliases"): 1}


def test_a_change_to_a_model_with_a_malformed_model_yaml_is_409_not_404(repo: Path) -> None:
    (repo / "m" / "2" / MANIFEST_FILE).write_text(": not yaml : [")
    with pytest.raises(aliases.AliasError, match="model.yaml") as info:
        model_ops.apply(repo, "m", "rollback", actor="t")
    assert info.value.status == 409
    with pytest.raises(aliases.AliasError) as unknown:
        model_ops.apply(repo, "nope", "rollback", actor="t")
    assert unknown.value.status == 404
