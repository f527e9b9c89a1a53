"""`vigil models` list, show, history and the alias changes: against a server over real HTTP (a
stand-in for the admin API, tests.unit.cli_support), and, when nothing listens at --url, against
the repository itself."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.graphs import double_graph, identity_graph
from tests.local_http import serving
from tests.unit.cli_support import (
    SPEC,
    StandInAdminServer,
    nowhere,
    run_cli,
    validated_repo,
)
from vigil.core import audit, model_ops
from vigil.core.aliases import read_aliases
from vigil.core.repository import publish, read_manifest
from vigil.core.tensors import TensorSpec
from vigil.tools.model_client import local_actor


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Model `m` with versions 1, 2 and 3, each recorded as having passed the model gate;
    production stays on 1 (publishing pins it there)."""
    return validated_repo(tmp_path / "repo")


@pytest.fixture
def no_server() -> str:
    return nowhere()


_run = run_cli


def _offline(capsys: pytest.CaptureFixture[str], repo: Path, url: str, *argv: str
             ) -> tuple[int, str, str]:
    return _run(capsys, "models", *argv, "--repository", str(repo), "--url", url)


def _audit(repo: Path) -> list[dict[str, Any]]:
    return [{k: e[k] for k in ("actor", "action", "from_version", "to_version", "reason")}
            for e in audit.entries(repo, "m")]


def _changed_notice(url: str, repo: Path) -> str:
    return (f"vigil: no server at {url}: changed the repository {repo} directly (as "
            f"{local_actor()}); running servers see the change when they next read the "
            "repository (at start, or on `vigil models load NAME` against them)\n")


# ------------------------------------------------------------------ without a server


def test_each_change_without_a_server_edits_the_repository_and_says_so(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    me = local_actor()
    steps: list[tuple[tuple[str, ...], str]] = [
        (("promote", "m", "2", "--reason", "better auc"), "m: production 1 -> 2 (generation 2)"),
        (("canary", "m", "3", "--weight", "0.25", "--sticky-header", "X-User"),
         "m: canary 3 takes 0.25 of unversioned requests, sticky on header x-user (was -) "
         "(generation 3)"),
        (("shadow", "m", "1"), "m: shadow 1 gets a copy of unversioned requests (was -) "
                               "(generation 4)"),
        (("shadow", "m", "--off"), "m: shadow 1 cleared (generation 5)"),
        (("canary", "m", "--off", "--reason", "enough"),
         "m: canary 3 cleared; production takes all traffic (generation 6)"),
        (("promote", "m", "3"), "m: production 2 -> 3 (generation 7)"),
        (("rollback", "m", "--reason", "alarm"), "m: production 3 -> 2 (generation 8)"),
        (("retire", "m", "1"), "m/1: retired, no longer loaded (its files stay) (generation 9)"),
        (("unload", "m"), "m: unloaded, no version is served (generation 10)"),
        (("load", "m"), "m: loaded (generation 11)"),
    ]
    for argv, line in steps:
        code, out, err = _offline(capsys, repo, no_server, *argv)
        assert (code, out, err) == (0, line + "\n", _changed_notice(no_server, repo)), argv

    state = read_aliases(repo, "m")
    assert (state.production, state.previous, state.canary, state.shadow) == ("2", ("1",),
                                                                             None, None)
    assert state.retired == frozenset({"1"}) and not state.unloaded
    assert state.generation == 11
    assert _audit(repo) == [
        {"actor": me, "action": "promote", "from_version": "1", "to_version": "2",
         "reason": "better auc"},
        {"actor": me, "action": "canary", "from_version": None, "to_version": "3", "reason": ""},
        {"actor": me, "action": "shadow", "from_version": None, "to_version": "1", "reason": ""},
        {"actor": me, "action": "shadow_cleared", "from_version": "1", "to_version": None,
         "reason": ""},
        {"actor": me, "action": "canary_cleared", "from_version": "3", "to_version": None,
         "reason": "enough"},
        {"actor": me, "action": "promote", "from_version": "2", "to_version": "3", "reason": ""},
        {"actor": me, "action": "rollback", "from_version": "3", "to_version": "2",
         "reason": "alarm"},
        {"actor": me, "action": "retire", "from_version": "1", "to_version": None, "reason": ""},
        {"actor": me, "action": "unload", "from_version": None, "to_version": None, "reason": ""},
        {"actor": me, "action": "load", "from_version": None, "to_version": None, "reason": ""},
    ]


def test_canary_state_is_written_to_aliases_json(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _offline(capsys, repo, no_server, "canary", "m", "2", "--weight", "0.1")[0] == 0
    doc = json.loads((repo / "m" / "aliases.json").read_text())
    assert doc["canary"] == {"version": "2", "weight": 0.1, "sticky_header": None}
    assert doc["production"] == "1"  # pinned when the versions were published


def test_a_change_the_repository_refuses_exits_1_and_changes_nothing(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (repo / "m" / "aliases.json").read_bytes()
    cases = [
        (("promote", "m", "9"), "model 'm' has no version '9'; published: ['1', '2', '3']"),
        (("retire", "m", "1"), "m/1 is production; move that alias to another version before "
                               "retiring it"),
        (("canary", "m", "2", "--weight", "1.5"), "canary weight must be above 0 and below 1, "
                                                  "not 1.5"),
        (("canary", "m", "--off"), "model 'm' has no canary"),
        (("rollback", "m"), "model 'm' has no earlier production version to roll back to "
                            "(production is 1)"),
        (("promote", "nope", "1"), "models not found in"),
    ]
    for argv, message in cases:
        code, out, err = _offline(capsys, repo, no_server, *argv)
        assert code == 1 and out == "", argv
        assert err.startswith(f"vigil: no server at {no_server}, and in the repository {repo}: "
                              f"{message}"), err
    assert (repo / "m" / "aliases.json").read_bytes() == before
    assert _audit(repo) == []


@pytest.mark.parametrize(("argv", "message"), [
    (("canary", "m", "2"), "a canary needs --weight"),
    (("canary", "m"), "name the canary version (canary NAME VERSION --weight W), or --off"),
    (("canary", "m", "2", "--off"), "canary NAME --off takes no version, --weight, "
                                    "--sticky-header or --force"),
    (("canary", "m", "--off", "--force", "--reason", "r"), "canary NAME --off takes no version"),
    (("canary", "m", "2", "--weight", "0.1", "--force"),
     "canary --force needs --reason: why the model gate is bypassed goes to the audit log"),
    (("promote", "m", "2", "--force"), "promote --force needs --reason"),
    (("shadow", "m"), "name the shadow version (shadow NAME VERSION), or --off"),
    (("shadow", "m", "2", "--off"), "shadow NAME --off takes no version"),
])
def test_contradictory_command_lines_exit_2(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
    message: str,
) -> None:
    code, out, err = _offline(capsys, repo, no_server, *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"vigil: {message}")


def test_list_show_and_history_without_a_server_read_the_repository(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model_ops.apply(repo, "m", "canary", actor="alice", version="2", weight=0.5, reason="try")
    model_ops.apply(repo, "m", "retire", actor="alice", version="3")
    notice = f"vigil: no server at {no_server}: read the repository {repo} directly\n"

    code, out, err = _offline(capsys, repo, no_server, "list")
    assert (code, err) == (0, notice)
    assert [line.split() for line in out.splitlines()] == [
        ["MODEL", "VERSION", "STATE", "ALIASES", "REASON"],
        ["m", "1", "PUBLISHED", "production", "-"],
        ["m", "2", "PUBLISHED", "canary", "-"],
        ["m", "3", "RETIRED", "-", "retired"],
    ]

    code, out, err = _offline(capsys, repo, no_server, "show", "m")
    assert (code, err) == (0, notice)
    lines = out.splitlines()
    assert lines[:6] == [
        "model m (generation 3)",
        "  production: 1; previous: -",
        "  canary: 2 at weight 0.5",
        "  shadow: -; retired: 3; unloaded: no",
        "  published: 1, 2, 3; serving: 1, 2",
        "version 1 (production)",
    ]
    assert "  inputs  x:FP32[-1, -1]" in lines and "    source_file: m1.onnx" in lines

    code, out, _ = _offline(capsys, repo, no_server, "show", "m", "2")
    assert code == 0 and "version 2 (canary)" in out and "    source_file: m2.onnx" in out

    code, out, err = _offline(capsys, repo, no_server, "history", "m")
    assert (code, err) == (0, notice)
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    assert rows[0] == ["TIME", "ACTOR", "ACTION", "FROM -> TO", "REASON"]
    assert [r[1:] for r in rows[1:]] == [["alice", "canary", "- -> 2", "try"],
                                         ["alice", "retire", "3 -> -", "-"]]
    code, out, _ = _offline(capsys, repo, no_server, "history", "m", "--limit", "1")
    assert len(out.splitlines()) == 2 and " retire " in out


def test_json_output_without_a_server(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _offline(capsys, repo, no_server, "promote", "m", "2", "--json")
    assert code == 0 and err == _changed_notice(no_server, repo)
    doc = json.loads(out)
    assert {k: doc[k] for k in ("model", "action", "from_version", "to_version", "changed",
                                "generation")} == {
        "model": "m", "action": "promote", "from_version": "1", "to_version": "2",
        "changed": True, "generation": 2,
    }
    assert doc["aliases"]["production"] == "2" and doc["aliases"]["previous"] == ["1"]

    listing = json.loads(_offline(capsys, repo, no_server, "list", "--json")[1])
    assert listing[1] == {"name": "m", "version": "2", "state": "PUBLISHED", "reason": "",
                          "aliases": ["production"], "faults": []}
    shown = json.loads(_offline(capsys, repo, no_server, "show", "m", "--json")[1])
    assert shown["aliases"]["published"] == ["1", "2", "3"]
    assert shown["version"]["parameters"]["lineage"]["source_file"] == "m2.onnx"
    assert shown["version"]["parameters"]["aliases"] == ["production"]
    history = json.loads(_offline(capsys, repo, no_server, "history", "m", "--json")[1])
    assert [e["action"] for e in history] == ["promote"]


def test_an_unchanged_state_says_so_and_records_nothing(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _offline(capsys, repo, no_server, "load", "m")
    assert (code, out) == (0, "m: load: nothing to change (generation 1)\n")
    assert _audit(repo) == []


def test_a_server_that_does_not_answer_is_not_bypassed(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        code, out, err = _run(capsys, "models", "promote", "m", "1", "--url", url,
                              "--repository", str(repo), "--timeout", "0.3")
    assert (code, out) == (1, "")
    assert err == f"vigil: POST {url}/v2/repository/models/m/promote: no answer within 0.3 s " \
                  "(--timeout)\n"
    assert read_aliases(repo, "m").production == "1" and _audit(repo) == []


def test_promote_force_reaches_the_gate_with_its_reason(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(repo, "m", "4", identity_graph([("x", "FP32", (-1, -1))]).SerializeToString(),
            SPEC, (TensorSpec("x_out", "FP32", (-1, -1)),))  # never validated
    code, _, err = _offline(capsys, repo, no_server, "promote", "m", "4")
    assert code == 1 and "m/4 has not been validated" in err
    code, _, _ = _offline(capsys, repo, no_server, "promote", "m", "4", "--force",
                          "--reason", "hotfix")
    assert code == 0 and read_aliases(repo, "m").production == "4"
    (entry,) = [e for e in audit.entries(repo, "m") if e["action"] == "promote"]
    assert entry["reason"] == "hotfix"
    assert entry["details"] == {"forced": True, "gate": "has not been validated"}


def test_canary_force_with_a_reason_goes_to_the_repository(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`canary --force --reason` of a version that never passed the gate changes the aliases
    and records the reason; --force without --reason changed nothing (exit 2, above)."""
    publish(repo, "m", "4", identity_graph([("x", "FP32", (-1, -1))]).SerializeToString(),
            SPEC, (TensorSpec("x_out", "FP32", (-1, -1)),))  # never validated
    code, out, _ = _offline(capsys, repo, no_server, "canary", "m", "4", "--weight", "0.1",
                            "--force", "--reason", "hotfix under watch")
    assert code == 0 and out.startswith("m: canary 4 takes 0.1 of unversioned requests")
    canary = read_aliases(repo, "m").canary
    assert canary is not None and (canary.version, canary.weight) == ("4", 0.1)
    (entry,) = [e for e in audit.entries(repo, "m") if e["action"] == "canary"]
    assert entry["reason"] == "hotfix under watch"


# ------------------------------------------------------------------ a stand-in server


@pytest.fixture
def stand_in(repo: Path) -> Iterator[tuple[StandInAdminServer, str]]:
    server = StandInAdminServer(repo)
    with serving(server.app) as url:
        yield server, url


def _online(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    # --repository points nowhere: a server that answers is never bypassed.
    return _run(capsys, "models", *argv, "--url", url, "--repository", "/nonexistent")


def test_changes_go_to_the_server_with_the_documented_bodies(
    stand_in: tuple[StandInAdminServer, str], repo: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    code, out, err = _online(capsys, url, "promote", "m", "2", "--reason", "r")
    assert (code, err) == (0, "")
    assert out == ("m: production 1 -> 2 (generation 2)\n"
                   "  applied by all 2 replica(s) in 0.05 s\n")
    for argv in (("canary", "m", "3", "--weight", "0.2", "--sticky-header", "h"),
                 ("canary", "m", "--off"), ("shadow", "m", "1"), ("shadow", "m", "--off"),
                 ("rollback", "m"), ("retire", "m", "3"), ("unload", "m"), ("load", "m"),
                 ("promote", "m", "2", "--force", "--reason", "now"),
                 ("canary", "m", "1", "--weight", "0.5", "--force", "--reason", "watched")):
        assert _online(capsys, url, *argv)[0] == 0, argv
    assert [(path.rsplit("/", 1)[1], body) for _, path, body in server.requests] == [
        ("promote", {"version": "2", "reason": "r"}),
        ("canary", {"version": "3", "weight": 0.2, "sticky_header": "h", "reason": ""}),
        ("canary", {"version": None, "reason": ""}),
        ("shadow", {"version": "1", "reason": ""}),
        ("shadow", {"reason": ""}),
        ("rollback", {"reason": ""}),
        ("retire", {"version": "3", "reason": ""}),
        ("unload", {}),
        ("load", {}),
        ("promote", {"version": "2", "reason": "now", "force": True}),
        ("canary", {"version": "1", "weight": 0.5, "sticky_header": None, "reason": "watched",
                    "force": True}),
    ]
    assert {e["actor"] for e in audit.entries(repo, "m")} == {"admin-token"}


def test_json_answers_from_the_server(
    stand_in: tuple[StandInAdminServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "both-token")
    code, out, _ = _online(capsys, url, "promote", "m", "2", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["converged"] is True and doc["replicas"] == {"r1": 2, "r2": 2}
    listing = json.loads(_online(capsys, url, "list", "--json")[1])
    assert [(r["version"], r["state"], r["aliases"]) for r in listing] == [
        ("1", "READY", []), ("2", "READY", ["production"]), ("3", "READY", [])]
    shown = json.loads(_online(capsys, url, "show", "m", "--json")[1])
    assert shown["version"]["versions"] == ["2"]
    entries = json.loads(_online(capsys, url, "history", "m", "--json")[1])
    assert [(e["actor"], e["action"]) for e in entries] == [("both-token", "promote")]


def test_a_change_not_every_replica_applied_exits_3(
    stand_in: tuple[StandInAdminServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = stand_in
    server.converged = False
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    code, out, err = _online(capsys, url, "promote", "m", "2")
    assert code == 3
    assert out == "m: production 1 -> 2 (generation 2)\n"
    assert err == ("vigil: m: the change is saved (generation 2), but 1 of 2 replica(s) had not "
                   "applied it after 0.05 s: r2; they serve as before until they catch up\n")
    code, out, _ = _online(capsys, url, "rollback", "m", "--json")
    assert code == 3 and json.loads(out)["behind"] == ["r2"]


def test_401_without_a_token_says_which_scope_is_needed(
    stand_in: tuple[StandInAdminServer, str], repo: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = stand_in
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    code, out, err = _online(capsys, url, "promote", "m", "2")
    assert (code, out) == (1, "")
    assert err == (f"vigil: POST {url}/v2/repository/models/m/promote answered 401: missing or "
                   "unknown bearer token\nVIGIL_TOKEN is not set: this command needs a token "
                   "with the 'admin' scope (`vigil tokens create NAME --scopes admin` on the "
                   "server's host)\n")
    monkeypatch.setenv("VIGIL_TOKEN", "wrong")
    err = _online(capsys, url, "list")[2]
    assert "answered 401" in err and "the token in VIGIL_TOKEN was not accepted" in err
    assert read_aliases(repo, "m").production == "1"  # never changed behind the server's back


def test_403_names_the_missing_scope(
    stand_in: tuple[StandInAdminServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "infer-token")
    code, _, err = _online(capsys, url, "rollback", "m")
    assert code == 1
    assert err == (f"vigil: POST {url}/v2/repository/models/m/rollback answered 403: token "
                   "'infer-token' lacks the 'admin' scope this route needs\nthis command needs a "
                   "token with the 'admin' scope in VIGIL_TOKEN (`vigil tokens create NAME "
                   "--scopes admin` on the server's host)\n")
    # `show` reads the version's whole record (lineage, metadata) from the admin route too: an
    # infer token, which sees only a client's view of a version, is refused there.
    monkeypatch.setenv("VIGIL_TOKEN", "infer-token")
    code, _, err = _online(capsys, url, "show", "m", "2")
    assert code == 1 and "answered 403" in err and "the 'admin' scope in VIGIL_TOKEN" in err


def test_404_and_409_print_the_servers_message(
    stand_in: tuple[StandInAdminServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    code, out, err = _online(capsys, url, "promote", "m", "7")
    assert (code, out) == (1, "")
    assert err == (f"vigil: POST {url}/v2/repository/models/m/promote answered 404: model 'm' "
                   "has no version '7'; published: ['1', '2', '3']\n")
    code, _, err = _online(capsys, url, "retire", "m", "1")
    assert code == 1
    assert err == (f"vigil: POST {url}/v2/repository/models/m/retire answered 409: m/1 is "
                   "production; move that alias to another version before retiring it\n")


def test_an_error_without_a_json_body_is_shown_as_text(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    async def broken(request: Request) -> Response:
        return Response("upstream connect error", 503, media_type="text/plain")

    app = Starlette(routes=[Route("/v2/repository/index", broken, methods=["POST"])])
    with serving(app) as url:
        code, _, err = _online(capsys, url, "list")
    assert code == 1
    assert err == f"vigil: POST {url}/v2/repository/index answered 503: upstream connect error\n"


# ------------------------------------------------------------------ publish and the server


def _publish(capsys: pytest.CaptureFixture[str], url: str, repo: Path, source: Path, name: str,
             proto: Any) -> tuple[int, str, str]:
    """Write `proto` to `source`, then `vigil models publish` it as `name`."""
    source.write_bytes(proto.SerializeToString())
    return _run(capsys, "models", "publish", str(source), "--name", name, "--url", url,
                "--repository", str(repo))


def test_publish_asks_a_running_server_to_load_the_model(
    stand_in: tuple[StandInAdminServer, str], repo: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    code, out, err = _publish(capsys, url, repo, tmp_path / "m4.onnx", "m", double_graph())
    assert (code, err) == (0, "")
    assert out.splitlines()[-2:] == [f"{url}: m reloaded",
                                     "  applied by all 2 replica(s) in 0.05 s"]
    assert read_manifest(repo / "m" / "4").lineage["source_file"] == "m4.onnx"
    assert [(m, p, b) for m, p, b in server.requests] == [
        ("POST", "/v2/repository/models/m/load", {})]


def test_publish_leaves_an_unloaded_model_unloaded(
    stand_in: tuple[StandInAdminServer, str], repo: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    model_ops.apply(repo, "m", "unload", actor="ops")
    code, out, _ = _publish(capsys, url, repo, tmp_path / "m4.onnx", "m", double_graph())
    assert code == 0
    assert out.splitlines()[-1] == "m is unloaded, so it stays so; `vigil models load m` " \
                                   "serves it again"
    assert server.requests == []
    assert read_aliases(repo, "m").unloaded


def test_publish_that_the_server_will_not_load_exits_1_after_writing(
    stand_in: tuple[StandInAdminServer, str], repo: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = stand_in
    monkeypatch.setenv("VIGIL_TOKEN", "infer-token")
    code, out, err = _publish(capsys, url, repo, tmp_path / "ids.onnx", "ids",
                              identity_graph([("t", "INT64", (-1,))]))
    assert code == 1
    assert out.startswith("published ids/1 -> ")
    assert err.startswith("vigil: published, but the server did not load it: POST "
                          f"{url}/v2/repository/models/ids/load answered 403: ")
    assert (repo / "ids" / "1" / "model.yaml").exists()


def test_history_shows_the_newest_entries_and_says_when_older_ones_exist(
    repo: Path, no_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`history` reads the log's tail (vigil.core.audit.tail): --limit N newest entries, a
    note on stderr when older ones exist, and a limit above what a server returns is a usage
    error (exit 2) before anything is read."""
    for weight in ("0.1", "0.2", "0.3"):
        assert _offline(capsys, repo, no_server, "canary", "m", "2", "--weight", weight)[0] == 0
    code, out, err = _offline(capsys, repo, no_server, "history", "m", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 3  # the header and two entries
    assert "older entries exist: the newest 2 are shown" in err
    code, out, err = _offline(capsys, repo, no_server, "history", "m", "--limit", "3")
    assert code == 0 and "older entries exist" not in err
    with pytest.raises(SystemExit) as exit_info:
        _offline(capsys, repo, no_server, "history", "m", "--limit", "1001")
    assert exit_info.value.code == 2 and "at most 1000" in capsys.readouterr().err
