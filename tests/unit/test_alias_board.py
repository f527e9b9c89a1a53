"""The alias board's own code, on an asyncio loop in process (Ray carries its calls in the
integration tests): acknowledgements wake `wait_applied` (no polling), the blocking check
whether a replica still exists runs off the loop and rarely, a dead replica stops counting, and
a BoardLink whose board cannot be found answers BoardUnavailable and looks again next time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from vigil.adapters.alias_board import BoardLink, BoardUnavailable, _Board

KEY = "/srv/models"
SERVE = "SERVE_REPLICA::vigil#ModelServer#abc"


class Liveness:
    """A liveness check that takes `seconds` (as a Ray lookup under load does) and records
    the thread it ran on."""

    def __init__(self, alive: bool = True, seconds: float = 0.0) -> None:
        self.alive, self.seconds = alive, seconds
        self.threads: list[threading.Thread] = []

    def __call__(self, replica: str) -> bool:
        self.threads.append(threading.current_thread())
        threading.Event().wait(self.seconds)  # blocks whatever thread runs it
        return self.alive


def test_an_ack_wakes_wait_applied_at_once() -> None:
    liveness = Liveness()
    board = _Board(alive=liveness)

    async def scenario() -> tuple[dict, float]:
        board.register(KEY, "r1")
        generation = board.bump(KEY)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, board.ack, KEY, "r1", generation)
        started = loop.time()
        done = await board.wait_applied(KEY, generation, 30.0)
        return done, loop.time() - started

    done, took = asyncio.run(scenario())
    assert done == {"replicas": {"r1": 1}, "behind": []}
    assert took < 10.0  # woken by the ack, not by the 30 s timeout
    assert liveness.threads == []  # acked before anyone was suspected


def test_liveness_runs_off_the_loop_and_rarely() -> None:
    """A replica that never acks, for 1 s: its existence is checked on a worker thread, a few
    times (the old loop checked every 10 ms, blocking the loop each time), while another
    replica's long-poll on the same loop is answered the moment a bump comes."""
    liveness = Liveness(alive=True, seconds=0.05)
    board = _Board(alive=liveness)

    async def scenario() -> tuple[dict, int, threading.Thread]:
        board.register(KEY, SERVE)
        generation = board.bump(KEY)
        applied = asyncio.create_task(board.wait_applied(KEY, generation, 1.0))
        await asyncio.sleep(0.3)
        poll = asyncio.create_task(board.wait(KEY, generation, 30.0))
        await asyncio.sleep(0)
        board.bump(KEY)
        woke = await asyncio.wait_for(poll, 5.0)
        return await applied, woke, threading.current_thread()

    done, woke, loop_thread = asyncio.run(scenario())
    assert done == {"replicas": {SERVE: 0}, "behind": [SERVE]}
    assert woke == 2
    assert 1 <= len(liveness.threads) <= 4, len(liveness.threads)
    assert loop_thread not in liveness.threads


def test_a_dead_replica_stops_counting() -> None:
    board = _Board(alive=Liveness(alive=False))

    async def scenario() -> dict:
        board.register(KEY, "r1")
        board.register(KEY, SERVE)
        generation = board.bump(KEY)
        board.ack(KEY, "r1", generation)
        return await board.wait_applied(KEY, generation, 10.0)

    assert asyncio.run(scenario()) == {"replicas": {"r1": 1}, "behind": []}
    assert board.status(KEY) == {"generation": 1, "followers": 1}


def test_a_link_without_a_board_is_unavailable_and_looks_again() -> None:
    """The lookup fails (the board died and Ray refuses its name for now): BoardUnavailable,
    and the next call looks it up again rather than keeping a dead handle."""
    lookups: list[int] = []

    def lookup() -> object:
        lookups.append(1)
        raise ValueError("Failed to look up actor with name 'vigil-alias-board'")

    link = BoardLink(KEY, resolve=lookup)
    for _ in range(2):
        with pytest.raises(BoardUnavailable, match="did not answer \\(status\\)"):
            asyncio.run(link.ready())
    assert len(lookups) == 2 and BoardUnavailable.status == 503


def test_the_board_is_placed_on_the_head_node() -> None:
    """On a cluster of several nodes the board must not die with a worker: it asks for the
    resource Ray gives the head node alone (a sliver of it, so it never waits for it)."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    from vigil.adapters.alias_board import BOARD_OPTIONS, HEAD_NODE_RESOURCE

    assert HEAD_NODE_RESOURCE == HEAD_NODE_RESOURCE_NAME
    assert BOARD_OPTIONS["resources"] == {HEAD_NODE_RESOURCE: 0.001}
    assert BOARD_OPTIONS["lifetime"] == "detached" and BOARD_OPTIONS["num_cpus"] == 0
