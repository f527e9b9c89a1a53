"""Telling every serving replica that a model's aliases changed, and knowing when all did.

The aliases themselves live in the repository (vigil.core.aliases); this named Ray actor only carries
the news. Each replica keeps one long-poll call open on it (`wait`), so a change reaches every
replica at once and an idle server does no work; each replica then reports the generation it
serves (`ack`), and whoever made the change waits for every live replica (`wait_applied`)
before saying it is done.

The board never blocks its event loop, which every replica's long-poll shares: an `ack` wakes
the callers of `wait_applied` (no polling), and the check whether a replica that is behind still
exists (a blocking Ray lookup) runs on a worker thread, at most once per LIVENESS_S per wait.

`BoardLink` is a replica's way to the board that outlives it: a Ray error becomes
BoardUnavailable (the admin routes answer 503) and the next call looks the board up again, a
fresh one if it died; a board that knows no replica yet (just restarted, before the replicas
reconnect, which they do within seconds) is unavailable too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayError

BOARD_NAME = "vigil-alias-board"
BOARD_NAMESPACE = "vigil"
REPLICA_ACTOR_PREFIX = "SERVE_REPLICA::"  # Ray Serve names each replica's actor this + its id
SERVE_NAMESPACE = "serve"
FIRST_LIVENESS_S = 0.1  # a replica still behind after this is checked for existence
LIVENESS_S = 0.5  # then at most this often, per wait_applied call
CALL_TIMEOUT_S = 10.0  # a board call that takes longer than this (beyond its own wait) failed


class _Board:
    """One counter per key (a model repository) and the generation each replica serves.
    `alive(replica)` says whether a replica's actor still exists (it blocks: it runs on a
    worker thread)."""

    def __init__(self, alive: Callable[[str], bool] | None = None) -> None:
        self._alive = alive if alive is not None else _alive
        self._generation: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}  # set on bump
        self._acked: dict[str, dict[str, int]] = {}
        self._acks: dict[str, asyncio.Event] = {}  # set on ack, register, forget

    @staticmethod
    def _fire(events: dict[str, asyncio.Event], key: str) -> None:
        """Wake whoever waits on the key's event; later waiters get a fresh one."""
        event = events.pop(key, None)
        if event is not None:
            event.set()

    @staticmethod
    def _event(events: dict[str, asyncio.Event], key: str) -> asyncio.Event:
        return events.setdefault(key, asyncio.Event())

    def bump(self, key: str) -> int:
        """A change happened: wake every waiting replica. Returns the new board generation."""
        self._generation[key] = self._generation.get(key, 0) + 1
        self._fire(self._changed, key)
        return self._generation[key]

    def generation(self, key: str) -> int:
        return self._generation.get(key, 0)

    def status(self, key: str) -> dict[str, int]:
        """The key's generation and how many replicas follow it."""
        return {"generation": self._generation.get(key, 0),
                "followers": len(self._acked.get(key, {}))}

    async def wait(self, key: str, known: int, timeout_s: float) -> int:
        """Returns once the key's generation differs from `known`, or after timeout_s."""
        if self._generation.get(key, 0) != known:
            return self._generation.get(key, 0)
        try:
            await asyncio.wait_for(self._event(self._changed, key).wait(), timeout_s)
        except TimeoutError:
            pass
        return self._generation.get(key, 0)

    def register(self, key: str, replica: str) -> int:
        """A replica starts following `key`: counted from now on, at the current generation
        (which it is about to read). Returns that generation."""
        generation = self._generation.get(key, 0)
        self._acked.setdefault(key, {})[replica] = generation
        self._fire(self._acks, key)
        return generation

    def ack(self, key: str, replica: str, generation: int) -> None:
        acked = self._acked.setdefault(key, {})
        acked[replica] = max(generation, acked.get(replica, 0))
        self._fire(self._acks, key)

    def forget(self, key: str, replica: str) -> None:
        self._acked.get(key, {}).pop(replica, None)
        self._fire(self._acks, key)

    async def wait_applied(self, key: str, generation: int, timeout_s: float) -> dict[str, Any]:
        """Wait until every live replica that follows `key` serves `generation` or later.
        Replicas whose actor is gone (scaled down, crashed) are dropped from the count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        next_check = loop.time() + FIRST_LIVENESS_S
        while True:
            acked = self._acked.get(key, {})
            behind = [r for r, g in acked.items() if g < generation]
            now = loop.time()
            if not behind or now >= deadline:
                return {"replicas": dict(acked), "behind": behind}
            if now >= next_check:
                for replica in await asyncio.to_thread(self._dead, behind):
                    acked.pop(replica, None)
                next_check = loop.time() + LIVENESS_S
                continue
            acks = self._event(self._acks, key)
            try:
                await asyncio.wait_for(acks.wait(), min(deadline, next_check) - now)
            except TimeoutError:
                pass

    def _dead(self, replicas: Iterable[str]) -> list[str]:
        return [r for r in replicas if not self._alive(r)]


def _alive(replica: str) -> bool:
    if not replica.startswith(REPLICA_ACTOR_PREFIX):
        return True  # not a Serve replica (a test's follower): trust its acks
    try:
        ray.get_actor(replica, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


AliasBoard = ray.remote(_Board)


# Ray gives the head node this resource (and only the head). Every admin change goes through
# the board: on a worker node it would die with that node (admin changes answer 503 until a
# replica makes a new board, and a node that never returns leaves it to chance where that
# lands); on the head it lives as long as the cluster does. load_tests.cluster shows it there.
HEAD_NODE_RESOURCE = "node:__internal_head__"
BOARD_OPTIONS: dict[str, Any] = {
    "num_cpus": 0, "max_concurrency": 1000, "name": BOARD_NAME, "namespace": BOARD_NAMESPACE,
    "lifetime": "detached", "get_if_exists": True, "resources": {HEAD_NODE_RESOURCE: 0.001},
}


def board() -> Any:
    """The cluster's board actor, created by whoever asks first, on the head node. Detached: it
    must outlive the replica that happened to create it."""
    return AliasBoard.options(**BOARD_OPTIONS).remote()


def board_key(model_repository: Any) -> str:
    """The key replicas of one repository share: its resolved path."""
    return str(Path(model_repository).expanduser().resolve())


class BoardUnavailable(RuntimeError):
    """The alias board did not answer, or knows no replica yet (503)."""

    status = 503


class BoardLink:
    """One replica's calls to the board for `key`, from its event loop. A failed call raises
    BoardUnavailable and forgets the handle: the next call looks the board up again (through
    `resolve`, off the loop), so a board that died is replaced without restarting replicas."""

    def __init__(self, key: str, handle: Any = None,
                 resolve: Callable[[], Any] = board) -> None:
        self.key = key
        self._handle = handle
        self._resolve = resolve

    async def _call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        try:
            if self._handle is None:
                self._handle = await asyncio.to_thread(self._resolve)
            ref = getattr(self._handle, method).remote(self.key, *args)
            return await asyncio.wait_for(ref, timeout_s)
        except (RayError, TimeoutError, ValueError) as exc:
            self._handle = None
            raise BoardUnavailable(f"the alias board did not answer ({method}): "
                                   f"{type(exc).__name__}: {exc}".strip()) from exc

    async def ready(self) -> int:
        """The board's generation, once it answers and knows at least one replica."""
        try:
            status = await self._call("status")
        except AttributeError:  # a board an older Vigil started (detached, it outlives deploys)
            return int(await self._call("generation"))
        if not status["followers"]:
            raise BoardUnavailable("the alias board knows no replica yet (it restarted; the "
                                   "replicas reconnect within seconds): nothing changed, try "
                                   "again")
        return int(status["generation"])

    async def bump(self) -> int:
        return int(await self._call("bump"))

    async def wait_applied(self, generation: int, timeout_s: float) -> dict[str, Any]:
        return dict(await self._call("wait_applied", generation, timeout_s,
                                     timeout_s=timeout_s + CALL_TIMEOUT_S))
