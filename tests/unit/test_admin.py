"""The admin routes on a real ModelSet (onnxruntime sessions) over httpx's ASGI transport: every
error is a JSON body with its status from handlers registered once (a bad body 400, an unknown
route 404, a refused change 409, the alias board down 503 with nothing changed, a change that
could not be written 503, a change made but not spread 503 saying so), and the history route
returns a bounded tail.

The board here is the board's own code (vigil.adapters.alias_board._Board) called in process by
InProcessBoard, a STAND-IN for the Ray actor handle that carries those calls in production
(tests/integration/test_model_versions.py kills the real one)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.admin import Admin
from serving.model_set import ModelSet
from serving.settings import BatchSettings, RuntimeSettings
from tests.graphs import identity_graph
from vigil.adapters.alias_board import BoardLink, _Board, board_key
from vigil.adapters.boot import web_app
from vigil.core import aliases, audit, model_ops
from vigil.core.repository import publish
from vigil.core.tensors import TensorSpec

SPEC = [("x", "FP32", (-1, 2))]


class InProcessBoard:
    """STAND-IN for a Ray actor handle on the board: `handle.method.remote(...)` runs the
    board's method on the caller's loop. `dead` makes every call fail as a dead actor's does."""

    def __init__(self, board: _Board) -> None:
        self.board = board
        self.dead = False

    def __getattr__(self, method: str) -> Any:
        outer = self

        class Remote:
            @staticmethod
            async def remote(*args: Any) -> Any:
                if outer.dead:
                    raise ValueError("the actor died")  # BoardLink treats it as Ray's errors
                result = getattr(outer.board, method)(*args)
                return await result if asyncio.iscoroutine(result) else result

        return Remote()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for version in ("1", "2", "3"):
        proto = identity_graph(SPEC)
        proto.doc_string = version
        publish(root, "m", version, proto.SerializeToString(),
                (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("x_out", "FP32", (-1, 2)),))
    return root


class Server:
    """The admin sub-application of one replica whose follower acked generation 0."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = ModelSet(root, None, RuntimeSettings(), BatchSettings())
        self.models.refresh()
        self.board = _Board(alive=lambda replica: True)
        self.board.register(board_key(root), "replica-1")
        self.handle = InProcessBoard(self.board)
        self.admin = Admin(self.models, BoardLink(board_key(root), self.handle), 0.2)
        self.app = web_app(self.admin.routes(), [])

    def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
                return await client.request(method, path, json=body)

        return asyncio.run(go())

    def change(self, action: str, **body: Any) -> httpx.Response:
        return self.call("POST", f"/v2/repository/models/m/{action}", body)


@pytest.fixture
def server(repo: Path) -> Server:
    return Server(repo)


@pytest.mark.parametrize(
    ("action", "body", "status", "says"),
    [
        ("promote", {}, 400, "promote needs a 'version'"),
        ("load", {"version": "2"}, 400, "load takes no 'version'"),
        ("promote", {"version": "2", "colour": "red"}, 400, "unknown fields ['colour']"),
        ("canary", {"version": "2", "weight": "a lot"}, 400, "'weight' must be a number"),
        ("explode", {}, 404, "no route /v2/repository/models/m/explode"),
        ("promote", {"version": "9"}, 404, "has no version '9'"),
        ("canary", {"version": "2", "weight": 0.5}, 409, "m/2 has not been validated"),
        ("canary", {"version": "2", "weight": 0.5, "force": True}, 400,
         "a forced canary needs a reason"),
        ("promote", {"version": "2", "reason": "x" * 70_000}, 413,
         "admin request bodies are at most 65536 bytes"),
    ],
)
def test_refusals_are_json_with_their_status(server: Server, action: str, body: dict,
                                             status: int, says: str) -> None:
    answer = server.change(action, **body)
    assert answer.status_code == status and says in answer.json()["error"], answer.text
    assert list(audit.entries(server.root, "m")) == []


def test_a_forced_canary_is_done_audited_and_spread(server: Server) -> None:
    answer = server.change("canary", version="2", weight=0.5, force=True, reason="incident 9")
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert (doc["action"], doc["to_version"], doc["changed"]) == ("canary", "2", True)
    assert doc["behind"] == ["replica-1"] and doc["converged"] is False  # it never acked
    (entry,) = audit.entries(server.root, "m")
    assert entry["details"] == {"forced": True, "gate": "has not been validated"}


def test_a_dead_board_is_a_json_503_and_nothing_changes(server: Server) -> None:
    """Before: the Ray error escaped as a non-JSON 500 after the aliases had moved."""
    before = aliases.read_aliases(server.root, "m")
    server.handle.dead = True
    answer = server.change("shadow", version="3")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    assert "the alias board did not answer" in answer.json()["error"]
    assert aliases.read_aliases(server.root, "m") == before
    assert list(audit.entries(server.root, "m")) == []
    server.handle.dead = False  # the board is back (BoardLink looks it up again)
    server.admin.board._resolve = lambda: server.handle
    assert server.change("shadow", version="3").status_code == 200
    assert aliases.read_aliases(server.root, "m").shadow == "3"


def test_a_board_that_knows_no_replica_yet_is_503(server: Server) -> None:
    server.board.forget(board_key(server.root), "replica-1")
    answer = server.change("shadow", version="3")
    assert answer.status_code == 503 and "knows no replica yet" in answer.json()["error"]
    assert aliases.read_aliases(server.root, "m").shadow is None


def test_a_change_that_cannot_be_written_is_a_json_503(server: Server) -> None:
    (server.root / "audit.jsonl").mkdir()
    answer = server.change("shadow", version="3")
    assert answer.status_code == 503
    assert "was not made (nothing changed): writing the audit log failed" in answer.json()["error"]
    assert aliases.read_aliases(server.root, "m").shadow is None


def test_a_change_made_but_not_spread_says_so(server: Server,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The board dies between the change and the bump: 503, saying the change was made and
    audited, and that the replicas read it when they reconnect."""
    real = model_ops.run

    def run_then_die(*args: Any, **kwargs: Any) -> model_ops.Change:
        done = real(*args, **kwargs)
        server.handle.dead = True
        return done

    monkeypatch.setattr(model_ops, "run", run_then_die)
    answer = server.change("shadow", version="3", reason="look")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert "the shadow of m was made and audited (generation 2)" in error
    assert "they read it when they reconnect" in error
    assert aliases.read_aliases(server.root, "m").shadow == "3"
    assert [e["action"] for e in audit.entries(server.root, "m")] == ["shadow"]


def test_history_is_a_bounded_tail(server: Server) -> None:
    for _ in range(3):
        model_ops.apply(server.root, "m", "shadow", actor="ops", version="3")
        model_ops.apply(server.root, "m", "shadow_cleared", actor="ops")
    doc = server.call("GET", "/v2/repository/models/m/history?limit=2").json()
    assert [e["action"] for e in doc["entries"]] == ["shadow", "shadow_cleared"]
    assert (doc["limit"], doc["more"]) == (2, True)
    whole = server.call("GET", "/v2/repository/models/m/history").json()
    assert len(whole["entries"]) == 6 and (whole["limit"], whole["more"]) == (100, False)
    # "³" and "²" are digits to str.isdigit and not to int(); 5,000 digits are past int()'s
    # limit: each was a 500 (found by schemathesis, tests/integration/test_fuzz_api.py).
    for bad in ("0", "1001", "ten", "-1", "%C2%B3", "%C2%B2", "1" * 5000, "+5", "5%20"):
        answer = server.call("GET", f"/v2/repository/models/m/history?limit={bad}")
        assert answer.status_code == 400 and "limit must be an integer from 1 to 1000" in \
            answer.json()["error"]
    assert server.call("GET", "/v2/repository/models/no%20such/history").status_code == 400
    assert server.call("GET", "/v2/repository/nowhere").json() == {
        "error": "no route /v2/repository/nowhere"}


def test_a_board_an_older_vigil_started_still_takes_changes(server: Server) -> None:
    """The board is detached and outlives a redeploy: one without `status` is asked its
    generation instead (before: every change would have been a 500 until it was killed)."""

    class Older:
        def __init__(self, board: _Board) -> None:
            self.board = board

        def __getattr__(self, name: str) -> Any:
            if name == "status":
                raise AttributeError(name)
            return getattr(self.board, name)

    server.handle.board = Older(server.board)
    answer = server.change("shadow", version="3")
    assert answer.status_code == 200, answer.text


# ------------------------------------------------------------------ rollouts through the route


@pytest.mark.parametrize(
    ("action", "body", "status", "says"),
    [
        ("rollout", {"plan": {"steps": [0.1, 0.05]}}, 400, "rollout needs a 'version'"),
        ("rollout", {"version": "2", "plan": {"steps": [0.1, 0.05]}, "force": True,
                     "reason": "r"}, 400, "steps must strictly increase"),
        ("rollout", {"version": "2", "plan": {"steps": [0.5, 1.0]}, "force": True,
                     "reason": "r"}, 400, "below 1 (100%)"),
        ("rollout", {"version": "2", "plan": {"steps": [0.1], "colour": 1}}, 400,
         "unknown plan fields ['colour']"),
        ("rollout", {"version": "2", "plan": [0.1]}, 400, "'plan' must be an object"),
        ("rollout", {"version": "2"}, 409, "m/2 has not been validated"),
        ("promote", {"version": "2", "plan": {}}, 400, "promote takes no 'plan'"),
        ("rollout-pause", {}, 409, "model 'm' has no rollout"),
        ("rollout-abort", {"reason": "r"}, 409, "model 'm' has no rollout"),
    ],
)
def test_rollout_refusals_are_json_with_their_status(server: Server, action: str, body: dict,
                                                     status: int, says: str) -> None:
    answer = server.change(action, **body)
    assert answer.status_code == status and says in answer.json()["error"], answer.text
    assert list(audit.entries(server.root, "m")) == []


def test_a_rollout_started_paused_and_aborted_through_the_route(server: Server) -> None:
    async def steps() -> list[httpx.Response]:  # one loop: the board's events belong to it
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
            path = "/v2/repository/models/m/"
            return [await client.post(path + route, json=body) for route, body in (
                ("rollout", {"version": "2", "plan": {"steps": [0.05, 0.5]}, "force": True,
                             "reason": "retrained"}),
                ("rollout-pause", {"reason": "look"}),
                ("rollout-abort", {"version": "3", "reason": "x"}),
                ("rollout-abort", {"version": "2", "reason": "not today"}))]

    started, paused, wrong, ended = asyncio.run(steps())
    assert started.status_code == 200, started.text
    doc = started.json()["aliases"]
    assert doc["canary"]["weight"] == 0.05 and doc["rollout"]["plan"]["steps"] == [0.05, 0.5]
    assert paused.json()["aliases"]["rollout"]["status"] == "paused"
    assert wrong.status_code == 409 and "is of version 2, not 3" in wrong.json()["error"]
    assert ended.json()["aliases"]["rollout"] is None and ended.json()["aliases"]["canary"] is None
    assert [e["action"] for e in audit.entries(server.root, "m")] == [
        "rollout", "rollout_paused", "rollout_aborted"]
