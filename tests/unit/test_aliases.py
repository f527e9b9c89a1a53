"""Aliases: every transition and what it refuses, atomic persistence under a lock, the audit log
that model_ops.apply writes beside them in the same step (both or neither, a crash between them
recorded), the alias actions named once, and the audit log read from its tail."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vigil.core import aliases, audit, model_ops
from vigil.core.aliases import AliasError, AliasState, Canary
from vigil.core.repository import publish, scan
from vigil.core.tensors import TensorSpec

PUBLISHED = ["1", "2", "3"]
SPEC = (TensorSpec("x", "FP32", (-1, 2)),)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for v in PUBLISHED:
        publish(root, "m", v, f"bytes-{v}".encode(), SPEC, SPEC)
    return root


def test_default_production_is_the_newest_live_version() -> None:
    assert AliasState("m").production_of(PUBLISHED) == "3"
    assert AliasState("m", retired=frozenset({"3"})).production_of(PUBLISHED) == "2"
    assert AliasState("m", production="1").production_of(PUBLISHED) == "1"
    assert AliasState("m").production_of([]) is None


def test_promote_remembers_the_previous_and_ends_a_canary_on_it() -> None:
    state = AliasState("m", production="1", canary=Canary("2", 0.1), shadow="2")
    after = aliases.promote(state, PUBLISHED, "2")
    assert (after.production, after.previous, after.canary, after.shadow) == ("2", ("1",), None, None)
    again = aliases.promote(after, PUBLISHED, "2")
    assert again.previous == ("1",)  # promoting production again changes nothing


def test_rollback_goes_back_and_skips_retired() -> None:
    state = AliasState("m", production="3", previous=("1", "2"), retired=frozenset({"2"}))
    after = aliases.rollback(state, PUBLISHED)
    assert (after.production, after.previous) == ("1", ())
    with pytest.raises(AliasError, match="no earlier production version") as info:
        aliases.rollback(after, PUBLISHED)
    assert info.value.status == 409


@pytest.mark.parametrize(
    ("call", "status", "says"),
    [
        (lambda s: aliases.promote(s, PUBLISHED, "9"), 404, "has no version '9'"),
        (lambda s: aliases.promote(s, PUBLISHED, "0"), 404, "has no version '0'"),
        (lambda s: aliases.set_canary(s, PUBLISHED, "2", 0.0), 400, "above 0 and below 1"),
        (lambda s: aliases.set_canary(s, PUBLISHED, "2", 1.0), 400, "above 0 and below 1"),
        (lambda s: aliases.set_canary(s, PUBLISHED, "1", 0.5), 409, "already production"),
        (lambda s: aliases.set_canary(s, PUBLISHED, "2", 0.5, "bad header"), 400, "not an HTTP header"),
        (lambda s: aliases.set_canary(s, PUBLISHED, "4r", 0.5), 404, "has no version"),
        (lambda s: aliases.set_shadow(s, PUBLISHED, "1"), 409, "is production"),
        (lambda s: aliases.retire(s, PUBLISHED, "1"), 409, "is production"),
        (lambda s: aliases.retire(s, PUBLISHED, "2"), 409, "is canary"),
        (lambda s: aliases.retire(s, PUBLISHED, "3"), 409, "is shadow"),
        (lambda s: aliases.promote(s, PUBLISHED + ["4"], "4"), 409, "is retired"),
    ],
)
def test_refused_changes_say_why(call, status: int, says: str) -> None:
    state = AliasState("m", production="1", canary=Canary("2", 0.1), shadow="3",
                       retired=frozenset({"4"}))
    with pytest.raises(AliasError, match=says) as info:
        call(state)
    assert info.value.status == status


def test_canary_header_is_kept_lower_case() -> None:
    after = aliases.set_canary(AliasState("m", production="1"), PUBLISHED, "2", 0.25, "X-User")
    assert after.canary == Canary("2", 0.25, "x-user")


def test_state_round_trips_through_its_file(repo: Path) -> None:
    before, after = aliases.change(
        repo, "m", lambda s: aliases.set_canary(aliases.promote(s, PUBLISHED, "2"), PUBLISHED,
                                                "3", 0.2, "x-user"))
    assert after.generation == before.generation + 1
    assert aliases.read_aliases(repo, "m") == after
    doc = json.loads((repo / "m" / "aliases.json").read_text())
    assert doc["production"] == "2" and doc["canary"] == {
        "version": "3", "weight": 0.2, "sticky_header": "x-user"}
    # No change, no write: the generation stays.
    same = aliases.change(repo, "m", lambda s: s)
    assert same == (after, after)


def test_publishing_pins_production_to_what_served_before(repo: Path) -> None:
    # The fixture published 1, 2, 3 with no alias: each publish pinned the one before.
    assert aliases.read_aliases(repo, "m").production == "1"
    publish(repo, "m", "4", b"bytes-4", SPEC, SPEC)
    assert aliases.read_aliases(repo, "m").production == "1"
    assert [v.manifest.version for v in scan(repo)["m"]] == ["1", "2", "3", "4"]


def test_unknown_model_and_malformed_file(repo: Path) -> None:
    with pytest.raises(AliasError, match="not in the repository") as info:
        aliases.change(repo, "nope", lambda s: s)
    assert info.value.status == 404
    (repo / "m" / "aliases.json").write_text("{not json")
    with pytest.raises(AliasError, match="not JSON") as info:
        aliases.read_aliases(repo, "m")
    assert info.value.status == 409  # a repository no change can start from, not a bug


def test_concurrent_writers_lose_no_change(repo: Path) -> None:
    """Each writer adds one retired version under the lock: every one of them is kept."""
    for v in range(4, 24):
        publish(repo, "m", str(v), f"b{v}".encode(), SPEC, SPEC)
    published = [str(v) for v in range(1, 24)]

    def retire(v: str) -> None:
        aliases.change(repo, "m", lambda s: aliases.retire(s, published, v))

    threads = [threading.Thread(target=retire, args=(str(v),)) for v in range(4, 24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = aliases.read_aliases(repo, "m")
    assert state.retired == {str(v) for v in range(4, 24)}
    assert state.generation == 1 + 20  # the publish pin, then one per writer


def test_apply_writes_aliases_and_one_audit_line_per_change(repo: Path) -> None:
    change = model_ops.apply(repo, "m", "promote", actor="ci", reason="better AUC", version="2",
                             force=True)
    assert (change.from_version, change.to_version) == ("1", "2")
    model_ops.apply(repo, "m", "canary", actor="ci", version="3", weight=0.1, force=True,
                    reason="not validated: a test")
    model_ops.apply(repo, "m", "canary_cleared", actor="vigil-monitor", reason="errors")
    model_ops.apply(repo, "m", "rollback", actor="ops", reason="pager")
    noop = model_ops.apply(repo, "m", "promote", actor="ops", version="1")
    assert noop.entry is None  # 1 is production already: nothing written
    entries = list(audit.entries(repo, "m"))
    assert [(e["actor"], e["action"], e["from_version"], e["to_version"]) for e in entries] == [
        ("ci", "promote", "1", "2"),
        ("ci", "canary", None, "3"),
        ("vigil-monitor", "canary_cleared", "3", None),
        ("ops", "rollback", "2", "1"),
    ]
    assert entries[0]["reason"] == "better AUC"
    assert entries[1]["details"] == {"forced": True, "gate": "has not been validated"}
    assert [e["generation"] for e in entries] == [2, 3, 4, 5]
    assert all(e["time"].endswith("+00:00") for e in entries)


@pytest.mark.parametrize(
    ("kwargs", "status", "says"),
    [
        ({"action": "launch"}, 400, "unknown action"),
        ({"action": "promote"}, 400, "promote needs a version"),
        ({"action": "canary", "version": "2"}, 400, "canary needs a weight"),
        ({"action": "canary_cleared"}, 409, "has no canary"),
        ({"action": "shadow_cleared"}, 409, "has no shadow"),
        ({"action": "promote", "version": "2", "reason": "x" * 2001}, 400, "longer than 2000"),
        ({"action": "promote", "version": "2"}, 409, "has not been validated"),
        ({"action": "promote", "version": "2", "force": True}, 400, "a forced promote needs a reason"),
        ({"action": "canary", "version": "2", "weight": 0.5}, 409, "has not been validated"),
        ({"action": "canary", "version": "2", "weight": 0.5, "force": True, "reason": " "}, 400,
         "a forced canary needs a reason"),
    ],
)
def test_apply_refuses_bad_requests(repo: Path, kwargs: dict, status: int, says: str) -> None:
    with pytest.raises(AliasError, match=says) as info:
        model_ops.apply(repo, "m", actor="ci", **kwargs)
    assert info.value.status == status
    assert list(audit.entries(repo, "m")) == []


def test_apply_to_an_unknown_model_is_404(repo: Path) -> None:
    with pytest.raises(AliasError) as info:
        model_ops.apply(repo, "ghost", "rollback", actor="ci")
    assert info.value.status == 404


def test_audit_skips_a_torn_last_line(repo: Path) -> None:
    model_ops.apply(repo, "m", "promote", actor="ci", version="2", force=True, reason="test")
    with (repo / "audit.jsonl").open("ab") as f:
        f.write(b'{"time": "2026-')
    assert len(list(audit.entries(repo))) == 1
    model_ops.apply(repo, "m", "rollback", actor="ci")  # starts a fresh line after the torn one
    assert [e["action"] for e in audit.entries(repo)] == ["promote", "rollback"]
    with pytest.raises(ValueError, match="unknown audit action"):
        audit.record(repo, actor="x", action="delete", model="m")


# ------------------------------------------------------------------ the actions, named once


def test_every_alias_action_is_named_once_with_what_it_takes() -> None:
    from vigil.core.actions import ROUTES, AliasAction, VersionUse

    assert {a.value for a in AliasAction} == {
        "promote", "rollback", "canary", "canary_cleared", "shadow", "shadow_cleared", "retire",
        "load", "unload", "rollout", "rollout_paused", "rollout_resumed", "rollout_aborted",
        "rollout_held", "rollout_advanced", "rollout_halted", "rollout_promoted",
        "rollout_rolled_back"}
    assert ROUTES == {"promote", "rollback", "canary", "shadow", "retire", "load", "unload",
                      "rollout", "rollout-pause", "rollout-resume", "rollout-abort"}
    assert [a for a in AliasAction if a.spec.live_traffic] == [AliasAction.PROMOTE,
                                                               AliasAction.CANARY,
                                                               AliasAction.ROLLOUT]
    assert [a for a in AliasAction if a.spec.plan] == [AliasAction.ROLLOUT]
    # the monitor's steps have no admin route
    assert {a for a in AliasAction if a.spec.route is None} == {
        AliasAction.ROLLOUT_HELD, AliasAction.ROLLOUT_ADVANCED, AliasAction.ROLLOUT_HALTED,
        AliasAction.ROLLOUT_PROMOTED, AliasAction.ROLLOUT_ROLLED_BACK}
    assert [a for a in AliasAction if a.spec.weight] == [AliasAction.CANARY]
    assert AliasAction.CANARY_CLEARED.spec.version is VersionUse.GUARD
    assert AliasAction.for_route("canary", True) is AliasAction.CANARY
    assert AliasAction.for_route("canary", False) is AliasAction.CANARY_CLEARED
    assert AliasAction.for_route("rollback", False) is AliasAction.ROLLBACK
    with pytest.raises(ValueError, match="promote needs a 'version'"):
        AliasAction.for_route("promote", False)
    with pytest.raises(ValueError, match="load takes no 'version'"):
        AliasAction.for_route("load", True)
    with pytest.raises(KeyError):
        AliasAction.for_route("explode", False)
    assert audit.ACTIONS == {a.value for a in AliasAction} | {"publish", "validate"}
    assert model_ops.ACTIONS == tuple(AliasAction)


def test_no_function_of_model_ops_is_over_60_lines() -> None:
    """apply was 66 lines with a closure choosing among nine strings; now a table."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(model_ops))
    lengths = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
               if isinstance(n, ast.FunctionDef)}
    assert max(lengths.values()) <= 60, lengths
    assert set(model_ops._TRANSITIONS) == set(model_ops._FROM_TO) == set(model_ops.ACTIONS)


# ------------------------------------------------------------------ the change and its record: one step


def test_a_failed_audit_write_changes_nothing(repo: Path) -> None:
    """The audit log cannot be written (here: a folder where the file should be): the answer
    is ChangeFailed (503) naming it, and the aliases are as they were (they were written
    first, and live unaudited, before)."""
    before = aliases.read_aliases(repo, "m")
    (repo / "audit.jsonl").mkdir()
    with pytest.raises(model_ops.ChangeFailed, match="writing the audit log failed") as info:
        model_ops.apply(repo, "m", "promote", actor="ci", version="2", force=True, reason="x")
    assert info.value.status == 503 and "not made (nothing changed)" in str(info.value)
    assert aliases.read_aliases(repo, "m") == before
    assert (repo / "m" / aliases.LOCK_FILE).read_bytes() == b""  # no pending note left


def test_a_failed_aliases_write_takes_the_audit_line_back(repo: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """aliases.json cannot be written (a full disk, faked: it cannot be had here): the audit
    line written just before is taken back, byte for byte, and the aliases stay."""
    model_ops.apply(repo, "m", "shadow", actor="ci", version="3")
    log = (repo / "audit.jsonl").read_bytes()
    before = aliases.read_aliases(repo, "m")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(aliases, "atomic_write", full_disk)
    with pytest.raises(model_ops.ChangeFailed, match="writing aliases.json failed"):
        model_ops.apply(repo, "m", "shadow_cleared", actor="ci")
    assert (repo / "audit.jsonl").read_bytes() == log
    monkeypatch.undo()
    assert aliases.read_aliases(repo, "m") == before
    again = model_ops.apply(repo, "m", "shadow_cleared", actor="ci")
    assert again.after.generation == before.generation + 1 and "details" not in again.entry


_CRASH = """
import os, sys
from vigil.core import aliases, model_ops
aliases.atomic_write = lambda *a, **k: os._exit(3)  # the process dies before the aliases
model_ops.apply(sys.argv[1], "m", "shadow", actor="ci", version="3")
"""


def test_a_crash_between_the_audit_line_and_the_aliases_is_recorded_void(repo: Path) -> None:
    """A process that dies after the audit line and before the aliases (a real exit, no
    handler runs): the next change sees the aliases never reached that generation, takes the
    next number and records the void one, so the log never claims a change that was not made
    without saying so."""
    import os
    import subprocess
    import sys

    before = aliases.read_aliases(repo, "m")
    done = subprocess.run([sys.executable, "-c", _CRASH, str(repo)], timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 3
    (orphan,) = audit.entries(repo, "m")
    assert orphan["generation"] == before.generation + 1
    assert aliases.read_aliases(repo, "m") == before  # the shadow was never set
    change = model_ops.apply(repo, "m", "canary", actor="ci", version="2", weight=0.1,
                             force=True, reason="after the crash")
    assert change.after.generation == before.generation + 2
    assert change.entry["details"]["void_generation"] == before.generation + 1
    later = model_ops.apply(repo, "m", "canary_cleared", actor="ci")
    assert "details" not in later.entry  # recorded once


# ------------------------------------------------------------------ the audit log's tail


def _io_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_history_reads_the_tail_not_the_whole_log(repo: Path) -> None:
    """20 MB of other models' lines, then m's: the newest 3 of m come from the last blocks
    (bytes read, from /proc/self/io, stay near a block, not the file's size)."""
    filler = (json.dumps({"time": "t", "actor": "a", "action": "load", "model": "other",
                          "reason": "x" * 180}) + "\n").encode()
    with (repo / "audit.jsonl").open("ab") as f:
        f.write(filler * 100_000)
    for v in ("2", "3"):
        model_ops.apply(repo, "m", "promote", actor="ci", version=v, force=True, reason=v)
    model_ops.apply(repo, "m", "rollback", actor="ci")
    assert (repo / "audit.jsonl").stat().st_size > 20_000_000
    started = _io_read()
    found, more = audit.tail(repo, "m", 2)
    read = _io_read() - started
    assert [e["action"] for e in found] == ["promote", "rollback"] and more
    assert read < 4 * audit.BLOCK_BYTES, read
    everything, more = audit.tail(repo, "m", 10)
    assert [e["to_version"] for e in everything] == ["2", "3", "2"] and not more
    assert everything == list(audit.entries(repo, "m"))


def test_tail_skips_torn_lines_and_lines_across_blocks(repo: Path) -> None:
    long_reason = "y" * (audit.BLOCK_BYTES + 100)  # one line longer than a block
    model_ops.apply(repo, "m", "promote", actor="ci", version="2", force=True,
                    reason="x" * 10)
    audit.record(repo, actor="ci", action="validate", model="m", reason=long_reason[:1999])
    with (repo / "audit.jsonl").open("ab") as f:
        f.write(b'{"model": "m", "act' + b"z" * audit.BLOCK_BYTES + b"\n")  # garbage
        f.write(json.dumps({"model": "m", "action": "load", "reason": long_reason}).encode())
        f.write(b"\n" + b'{"time": "2026-')  # torn last line
    found, more = audit.tail(repo, "m", 5)
    assert [e["action"] for e in found] == ["promote", "validate", "load"] and not more
    assert found[-1]["reason"] == long_reason
    assert found == list(audit.entries(repo, "m"))
