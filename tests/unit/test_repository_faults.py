"""One model's bad files on a real ModelSet and its admin routes (onnxruntime sessions, the
board's own code in process as in test_admin): the other models serve and take changes, the bad
one is reported with the reason (index, aliases, metadata, gauge, one log line per transition)
and recovers when its files are fixed; a served version that a reload cannot replace keeps
serving from memory; an alias naming no version is shown broken and gets no traffic."""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from pathlib import Path

import pytest

import serving.metrics as replica_metrics_module
from serving.metrics import ReplicaMetrics
from serving.model_set import ModelSet
from serving.protocol import NotReady
from serving.settings import BatchSettings, RuntimeSettings
from tests.graphs import identity_graph
from tests.unit.cli_support import nowhere, run_cli
from tests.unit.test_admin import Server
from vigil.core import aliases, model_ops
from vigil.core.repository import MANIFEST_FILE, MODEL_FILE, publish
from vigil.core.tensors import TensorSpec

SPEC = [("x", "FP32", (-1, 2))]
CORRUPT = '{"model": "mlp", "canary": {"version": "2", "we'


def _publish(root: Path, name: str, version: str) -> None:
    proto = identity_graph(SPEC)
    proto.doc_string = f"{name}/{version}"
    publish(root, name, version, proto.SerializeToString(), (TensorSpec("x", "FP32", (-1, 2)),),
            (TensorSpec("x_out", "FP32", (-1, 2)),))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for name in ("m", "mlp"):
        for version in ("1", "2", "3"):
            _publish(root, name, version)
    return root


def _force(root: Path, model: str, action: str, **fields) -> None:
    model_ops.apply(root, model, action, actor="test", force=True, reason="test", **fields)


def _fresh(root: Path) -> ModelSet:
    models = ModelSet(root, None, RuntimeSettings(), BatchSettings())
    models.refresh()
    return models


def _index(server: Server) -> dict[tuple[str, str], dict]:
    rows = server.call("POST", "/v2/repository/index").json()
    return {(r["name"], r["version"]): r for r in rows}


def _kinds(models: ModelSet, name: str) -> list[tuple[str, str]]:
    return [(str(f.kind), f.subject) for f in models.faults.get(name, ())]


# ------------------------------------------------------------------ per-model isolation


def test_a_corrupt_aliases_file_spares_the_other_models_changes(repo: Path) -> None:
    server = Server(repo)
    (repo / "mlp" / aliases.ALIASES_FILE).write_text(CORRUPT)
    _force(repo, "m", "canary", version="2", weight=0.5)
    done = server.models.refresh()  # raised AliasError for mlp before: no replica applied m's
    assert done.loaded == [] and server.models.router.routes("m").aliases.canary is not None
    # mlp keeps what it served, and says why its files are not followed.
    assert server.models.router.resolve("mlp").target.model.version == "1"
    assert _kinds(server.models, "mlp") == [("aliases", "")]
    row = _index(server)[("mlp", "1")]
    assert row["state"] == "READY" and "aliases.json: not JSON" in row["reason"]
    meta = server.models.metadata("mlp", None)
    assert "aliases.json" in meta["parameters"]["repository_faults"][0]
    assert "repository_faults" not in server.models.metadata("m", None)["parameters"]


def test_after_a_restart_the_bad_model_is_unavailable_with_why_and_the_others_serve(
        repo: Path) -> None:
    (repo / "mlp" / aliases.ALIASES_FILE).write_text(CORRUPT)
    server = Server(repo)  # ModelSet.refresh raised before: the replica did not start
    assert server.models.router.resolve("m").target.model.version == "1"
    assert "mlp" in server.models.known()
    with pytest.raises(NotReady, match=r"model 'mlp' is unavailable: mlp: aliases: .*aliases.json"):
        server.models.router.resolve("mlp")
    with pytest.raises(NotReady, match="aliases.json: not JSON"):
        server.models.metadata("mlp", None)
    rows = _index(server)
    assert rows[("mlp", "1")]["state"] == "UNAVAILABLE"
    assert "aliases.json: not JSON" in rows[("mlp", "1")]["reason"]
    assert rows[("mlp", "1")]["aliases"] == []  # no aliases to show: they cannot be read
    answer = server.call("GET", "/v2/repository/models/mlp/aliases")
    assert answer.status_code == 409 and "aliases.json" in answer.json()["error"]


def test_a_malformed_model_yaml_after_a_restart_gets_a_row_and_409s(repo: Path) -> None:
    (repo / "mlp" / "2" / MANIFEST_FILE).write_text("name: mlp\nversion: '2'\n")  # no sha256
    server = Server(repo)
    assert server.models.router.resolve("m").target.model.version == "1"
    row = _index(server)[("mlp", "")]
    assert row["state"] == "UNAVAILABLE" and "missing field" in row["reason"]
    for method, path, body in (("GET", "/v2/repository/models/mlp/aliases", None),
                               ("POST", "/v2/repository/models/mlp/rollback", {})):
        answer = server.call(method, path, body)
        assert answer.status_code == 409, answer.text
        assert "model.yaml" in answer.json()["error"]


def test_a_fixed_file_recovers_on_the_next_read_with_one_log_line_each_way(
        repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = repo / "mlp" / aliases.ALIASES_FILE
    good = path.read_bytes()
    path.write_text(CORRUPT)
    caplog.set_level(logging.INFO, logger="vigil.models")
    models = _fresh(repo)
    for _ in range(3):
        models.refresh()  # the follower re-reads a faulty model every FAULT_POLL_S
    path.write_bytes(good)
    models.refresh()
    models.refresh()
    assert models.router.resolve("mlp").target.model.version == "1"
    assert models.faults == {}
    lines = [r.getMessage() for r in caplog.records if "repository fault" in r.getMessage()]
    assert len(lines) == 2, lines
    assert lines[0].startswith("repository fault: mlp: aliases: ") and "aliases.json" in lines[0]
    assert lines[1] == "repository fault cleared: mlp/* aliases"


def test_a_change_to_the_bad_model_is_409_naming_the_file(repo: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = Server(repo)
    (repo / "mlp" / aliases.ALIASES_FILE).write_text(CORRUPT)
    caplog.set_level(logging.WARNING, logger="vigil.admin")
    for action, body in (("canary", {"version": "2", "weight": 0.5}), ("load", {})):
        answer = server.call("POST", f"/v2/repository/models/mlp/{action}", body)
        assert answer.status_code == 409, answer.text  # 500 (a bug) before
        assert f"{repo / 'mlp' / 'aliases.json'}: not JSON" in answer.json()["error"]
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2


# ------------------------------------------------------------------ served from memory


def test_a_deleted_production_folder_keeps_serving_from_memory(repo: Path) -> None:
    _force(repo, "m", "promote", version="2")
    server = Server(repo)
    shutil.rmtree(repo / "m" / "2")
    server.models.refresh()  # the follower's, which the change's bump wakes (no follower here)
    answer = server.call("POST", "/v2/repository/models/m/load", {})  # "nothing to change"
    assert answer.status_code == 200 and answer.json()["changed"] is False
    assert [f["kind"] for f in answer.json()["faults"]] == ["missing"]  # ... but says this
    assert server.models.router.resolve("m").target.model.version == "2"  # 503 before
    row = _index(server)[("m", "2")]
    assert row["state"] == "READY" and row["reason"].startswith("m/2: missing: served from memory")
    assert server.models.record("m", "2")["parameters"]["repository_faults"]
    # Moving production off it lets it go: nothing names it any more.
    _force(repo, "m", "promote", version="3")
    server.models.refresh()
    assert "2" not in server.models.router.routes("m").versions and server.models.faults == {}


def test_a_held_version_stays_reported_while_the_aliases_also_break(repo: Path) -> None:
    _force(repo, "m", "promote", version="2")
    models = _fresh(repo)
    shutil.rmtree(repo / "m" / "2")
    models.refresh()
    (repo / "m" / aliases.ALIASES_FILE).write_text("{")
    models.refresh()
    assert models.router.resolve("m").target.model.version == "2"
    assert _kinds(models, "m") == [("aliases", ""), ("missing", "2")]


def test_the_newest_version_deleted_does_not_move_implicit_production(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _publish(root, "solo", "1")  # one version, no aliases ever set: production is the newest
    models = _fresh(root)
    shutil.rmtree(root / "solo" / "1")
    models.refresh()  # released it before: the model was gone from routing
    assert models.router.resolve("solo").target.model.version == "1"
    assert _kinds(models, "solo") == [("missing", "1")]


def test_a_modified_production_file_serves_from_memory_and_a_fresh_load_refuses_it(
        repo: Path) -> None:
    server = Server(repo)
    model_file = repo / "m" / "1" / MODEL_FILE
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    server.models.refresh()
    row = _index(server)[("m", "1")]  # READY with no reason before
    assert row["state"] == "READY" and "served from memory" in row["reason"]
    assert "does not match" in row["reason"]
    assert _kinds(server.models, "m") == [("modified", "1")]
    restarted = Server(repo)  # what a fresh load finds
    assert _index(restarted)[("m", "1")]["state"] == "UNAVAILABLE"
    assert "does not match" in _index(restarted)[("m", "1")]["reason"]


# ------------------------------------------------------------------ broken aliases


def test_a_canary_on_a_version_that_does_not_exist_is_shown_broken_and_gets_nothing(
        repo: Path) -> None:
    path = repo / "m" / aliases.ALIASES_FILE
    doc = aliases.read_aliases(repo, "m").to_dict() | {
        "canary": {"version": "9", "weight": 0.5, "sticky_header": None}}
    path.write_text(json.dumps(doc))
    server = Server(repo)
    shown = server.call("GET", "/v2/repository/models/m/aliases").json()
    assert "version 9, which is not in the repository" in shown["broken"]["canary"]
    assert [f["kind"] for f in shown["faults"]] == ["broken_alias"]
    assert {server.models.router.resolve("m").target.model.version for _ in range(200)} == {"1"}
    answer = server.call("POST", "/v2/repository/models/m/canary", {})  # --off
    assert answer.status_code == 200 and answer.json()["aliases"]["canary"] is None
    server.models.refresh()  # the follower's (no follower here)
    assert server.models.faults == {}  # mended


def test_a_production_alias_naming_no_version_says_so_in_the_503(repo: Path) -> None:
    doc = aliases.read_aliases(repo, "m").to_dict() | {"production": "7"}
    (repo / "m" / aliases.ALIASES_FILE).write_text(json.dumps(doc))
    models = _fresh(repo)
    with pytest.raises(NotReady, match="production alias names version '7', which is not in"):
        models.router.resolve("m")
    assert _kinds(models, "m") == [("broken_alias", "production")]


# ------------------------------------------------------------------ the gauge


class RecordingGauge:
    def __init__(self) -> None:
        self.sets: list[tuple[float, dict[str, str]]] = []
        self.seen = threading.Event()

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.sets.append((value, dict(tags)))
        self.seen.set()


def test_the_fault_gauge_is_set_again_while_a_fault_lasts_and_zeroed_once_cleared(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replica_metrics_module, "GAUGE_REFRESH_S", 0.01)
    metrics = ReplicaMetrics()
    gauge = RecordingGauge()
    metrics.fault_gauge = gauge  # type: ignore[assignment]
    try:
        metrics.repository_faults({("mlp", "aliases"): 1})
        gauge.seen.clear()
        assert gauge.seen.wait(5)
        assert gauge.sets[-1] == (1, {"model": "mlp", "reason": "aliases"})
        metrics.repository_faults({})
        done = len(gauge.sets)
        assert gauge.sets[done - 1] == (0, {"model": "mlp", "reason": "aliases"})
        gauge.seen.clear()
        gauge.seen.wait(0.2)
        assert gauge.sets[done:] == []  # cleared: set once to 0, then left alone
    finally:
        metrics._stop.set()


# ------------------------------------------------------------------ the CLI says so (exit 4)


def test_cli_list_shows_the_bad_model_and_exits_4(repo: Path, capsys) -> None:
    (repo / "mlp" / aliases.ALIASES_FILE).write_text(CORRUPT)
    code, out, err = run_cli(capsys, "models", "list", "--url", nowhere(), "--repository",
                             str(repo))
    assert code == 4, err
    assert re.search(r"^mlp +- +UNAVAILABLE .*aliases\.json: not JSON", out, re.M)
    assert re.search(r"^m +1 +PUBLISHED +production", out, re.M)  # the others as ever
    assert "repository fault: mlp: aliases:" in err


def test_cli_show_flags_a_broken_canary_and_exits_4(repo: Path, capsys) -> None:
    doc = aliases.read_aliases(repo, "m").to_dict() | {
        "canary": {"version": "9", "weight": 0.5, "sticky_header": None}}
    (repo / "m" / aliases.ALIASES_FILE).write_text(json.dumps(doc))
    code, out, err = run_cli(capsys, "models", "show", "m", "--url", nowhere(), "--repository",
                             str(repo))
    assert code == 4, err  # "canary: 9 at weight 0.5", exit 0 before
    assert "canary: 9 at weight 0.5 BROKEN: names version 9, which is not in the repository" in out


def test_cli_load_after_the_production_folder_went_does_not_exit_0(repo: Path, capsys) -> None:
    _force(repo, "m", "promote", version="2")
    shutil.rmtree(repo / "m" / "2")
    code, out, err = run_cli(capsys, "models", "load", "m", "--url", nowhere(), "--repository",
                             str(repo))
    assert "nothing to change" in out
    assert code == 4, err  # exit 0 before, while every unversioned request got 503
    assert "m alias production: broken_alias: names version 2" in err
    code, out, err = run_cli(capsys, "models", "show", "m", "--url", nowhere(), "--repository",
                             str(repo))
    assert code == 4 and "production: 2 BROKEN" in out  # and no 404 for want of version 2
