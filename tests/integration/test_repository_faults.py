"""Repository faults on the session's real server (two replicas): one model's corrupt
aliases.json spares the others' changes and traffic and recovers on its own once fixed; a deleted
production folder keeps serving from memory and the index says so; an alias naming no version is
shown broken and gets no traffic; a change to the bad model is a 409 naming the file."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import publish_copies, repository_rows, wait_for
from vigil.core import aliases

ROW = [0.5] * 30
BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
GOOD, BAD = "rf_good", "rf_bad"  # two models of breast_cancer's graph, versions 1 and 2
CORRUPT = '{"model": "rf_bad", "production": "1", "canary": {"vers'


@pytest.fixture(scope="module")
def rf(vigil):
    publish_copies(vigil.models_dir, (GOOD, BAD), ("1", "2"))
    answer = _post(vigil, f"/v2/repository/models/{GOOD}/load")
    assert answer.status_code == 200 and answer.json()["converged"], answer.text
    return vigil


def _post(vigil, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{vigil.base_url}{path}", json=body or {}, headers=vigil.auth, timeout=60)


def _infer(vigil, model: str) -> httpx.Response:
    return _post(vigil, f"/v2/models/{model}/infer", BODY)


def _faults_scraped(vigil, model: str, reason: str) -> bool:
    text = httpx.get(f"http://127.0.0.1:{vigil.metrics_port}/metrics", timeout=10).text
    return any(line.startswith("ray_vigil_model_repository_faults{") and f'model="{model}"' in line
               and f'reason="{reason}"' in line and not line.endswith(" 0.0")
               for line in text.splitlines())


def test_a_corrupt_aliases_file_spares_the_others_and_recovers_on_its_own(rf) -> None:
    path: Path = rf.models_dir / BAD / aliases.ALIASES_FILE
    good = path.read_bytes() if path.exists() else None
    path.write_text(CORRUPT)
    try:
        started = time.perf_counter()
        answer = _post(rf, f"/v2/repository/models/{GOOD}/canary",
                       {"version": "2", "weight": 0.5, "force": True, "reason": "test"})
        took = time.perf_counter() - started
        # Before: 30 s, not converged (no replica would apply any change), exit 3 in the CLI.
        assert answer.status_code == 200 and answer.json()["converged"], answer.text
        print(f"\ncanary on {GOOD} while {BAD}'s aliases.json is corrupt: {took:.3f} s")
        assert {_infer(rf, GOOD).status_code for _ in range(20)} == {200}
        assert _infer(rf, BAD).status_code == 200  # what it served it keeps serving
        row = repository_rows(rf, BAD)["1"]
        assert "aliases.json: not JSON" in row["reason"] and row["faults"], row
        meta = rf.get(f"/v2/models/{BAD}").json()
        assert "aliases.json" in meta["parameters"]["repository_faults"][0]
        refused = _post(rf, f"/v2/repository/models/{BAD}/canary",
                        {"version": "2", "weight": 0.5, "force": True, "reason": "test"})
        assert refused.status_code == 409  # 500 (a bug) before
        assert f"{path}: not JSON" in refused.json()["error"]
        wait_for(lambda: _faults_scraped(rf, BAD, "aliases"), 30, "the fault gauge scraped")
    finally:
        _post(rf, f"/v2/repository/models/{GOOD}/canary")  # --off
        if good is None:
            path.unlink()
        else:
            path.write_bytes(good)
    # No command, no restart: the follower re-reads a faulty model every FAULT_POLL_S.
    fixed = time.perf_counter()
    wait_for(lambda: not repository_rows(rf, BAD)["1"]["faults"], 15, "the fixed file read again",
             0.05)
    print(f"fixed aliases.json read again, without a command: {time.perf_counter() - fixed:.2f} s")


@pytest.mark.slow
def test_a_replica_started_while_a_model_is_bad_serves_the_others(rf) -> None:
    """Before, a replica that started while one model's aliases.json was corrupt failed to
    deploy: every route of it answered 503, /v2/health/ready included."""
    import ray
    from ray.util.state import list_actors

    path: Path = rf.models_dir / BAD / aliases.ALIASES_FILE
    good = path.read_bytes()
    path.write_text(CORRUPT)
    try:
        actors = list_actors(address=rf.dashboard_url, filters=[
            ("class_name", "=", "ServeReplica:vigil:ModelServer"), ("state", "=", "ALIVE")])
        victim = actors[0]
        ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
        started = time.perf_counter()
        wait_for(lambda: len(rf.replica_actor_ids()) == 2
                 and victim.actor_id not in rf.replica_actor_ids(), 180, "replacement replica")
        print(f"\nreplacement replica up with {BAD} corrupt: {time.perf_counter() - started:.1f} s")
        assert {_infer(rf, GOOD).status_code for _ in range(40)} == {200}
        assert rf.get("/v2/health/ready").status_code == 200
        # The new replica never read BAD's aliases: it answers 503 with why (the old one
        # still serves it from memory).
        answers = [_infer(rf, BAD) for _ in range(40)]
        refused = [a for a in answers if a.status_code != 200]
        assert refused and {a.status_code for a in refused} == {503}
        assert "aliases.json: not JSON" in refused[0].json()["error"]
    finally:
        path.write_bytes(good)
    fixed = time.perf_counter()
    wait_for(lambda: all(_infer(rf, BAD).status_code == 200 for _ in range(20)), 15,
             "the bad model served by every replica once fixed", 0.05)
    print(f"fixed file served by every replica: {time.perf_counter() - fixed:.2f} s")


def test_a_deleted_production_folder_serves_from_memory_and_says_so(rf) -> None:
    promoted = _post(rf, f"/v2/repository/models/{GOOD}/promote",
                     {"version": "2", "force": True, "reason": "test"})
    assert promoted.status_code == 200, promoted.text
    folder = rf.models_dir / GOOD / "2"
    kept = folder.parent / ".kept-2"
    shutil.copytree(folder, kept)
    shutil.rmtree(folder)
    try:
        answer = _post(rf, f"/v2/repository/models/{GOOD}/load")
        assert answer.status_code == 200 and answer.json()["changed"] is False
        assert [f["kind"] for f in answer.json()["faults"]] == ["missing"], answer.text
        versions = {_infer(rf, GOOD).json()["model_version"] for _ in range(20)}
        assert versions == {"2"}  # every unversioned request got 503 before
        row = repository_rows(rf, GOOD)["2"]
        assert row["state"] == "READY" and "served from memory" in row["reason"], row
    finally:
        shutil.move(kept, folder)  # the same bytes back: the fault clears on its own
        wait_for(lambda: not repository_rows(rf, GOOD)["2"]["faults"], 15, "the folder seen back")
        _post(rf, f"/v2/repository/models/{GOOD}/promote",
              {"version": "1", "force": True, "reason": "test"})


def test_a_canary_on_no_version_is_shown_broken_and_takes_no_traffic(rf) -> None:
    path: Path = rf.models_dir / GOOD / aliases.ALIASES_FILE
    before = path.read_bytes()
    doc = json.loads(before) | {"canary": {"version": "9", "weight": 0.5, "sticky_header": None}}
    path.write_text(json.dumps(doc))  # a hand edit (or another tool)
    try:
        answer = _post(rf, f"/v2/repository/models/{GOOD}/load")
        assert [f["kind"] for f in answer.json()["faults"]] == ["broken_alias"], answer.text
        shown = rf.get(f"/v2/repository/models/{GOOD}/aliases").json()
        assert "version 9, which is not in the repository" in shown["broken"]["canary"]
        assert {_infer(rf, GOOD).json()["model_version"] for _ in range(40)} == {"1"}
    finally:
        _post(rf, f"/v2/repository/models/{GOOD}/canary")  # --off mends it
    assert rf.get(f"/v2/repository/models/{GOOD}/aliases").json()["broken"] == {}
