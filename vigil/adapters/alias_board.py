"""Telling every serving replica that a model's aliases changed, and knowing when all did.

The aliases themselves live in the repository (vigil.core.aliases); this named Ray actor only carries
the news. Each replica keeps one long-poll call open on it (`wait`), so a change reaches every
replica at once and an idle server does no work; each replica then reports the generation it
serves (`ack`), and whoever made the change waits for every live replica (`wait_applied`)
before saying it is done.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

BOARD_NAME = "vigil-alias-board"
BOARD_NAMESPACE = "vigil"
REPLICA_ACTOR_PREFIX = "SERVE_REPLICA::"  # Ray Serve names each replica's actor this + its id
SERVE_NAMESPACE = "serve"


class _Board:
    """One counter per key (a model repository) and the generation each replica serves."""

    def __init__(self) -> None:
        self._generation: dict[str, int] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._acked: dict[str, dict[str, int]] = {}

    def _event(self, key: str) -> asyncio.Event:
        if key not in self._changed:
            self._changed[key] = asyncio.Event()
        return self._changed[key]

    def bump(self, key: str) -> int:
        """A change happened: wake every waiting replica. Returns the new board generation."""
        self._generation[key] = self._generation.get(key, 0) + 1
        event = self._event(key)
        event.set()
        self._changed[key] = asyncio.Event()
        return self._generation[key]

    def generation(self, key: str) -> int:
        return self._generation.get(key, 0)

    async def wait(self, key: str, known: int, timeout_s: float) -> int:
        """Returns once the key's generation differs from `known`, or after timeout_s."""
        if self._generation.get(key, 0) != known:
            return self._generation.get(key, 0)
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout_s)
        except TimeoutError:
            pass
        return self._generation.get(key, 0)

    def register(self, key: str, replica: str) -> int:
        """A replica starts following `key`: counted from now on, at the current generation
        (which it is about to read). Returns that generation."""
        generation = self._generation.get(key, 0)
        self._acked.setdefault(key, {})[replica] = generation
        return generation

    def ack(self, key: str, replica: str, generation: int) -> None:
        acked = self._acked.setdefault(key, {})
        acked[replica] = max(generation, acked.get(replica, 0))

    def forget(self, key: str, replica: str) -> None:
        self._acked.get(key, {}).pop(replica, None)

    async def wait_applied(self, key: str, generation: int, timeout_s: float) -> dict[str, Any]:
        """Wait until every live replica that follows `key` serves `generation` or later.
        Replicas whose actor is gone (scaled down, crashed) are dropped from the count."""
        deadline = time.monotonic() + timeout_s
        while True:
            acked = self._acked.get(key, {})
            behind = [r for r, g in acked.items() if g < generation]
            for replica in behind:
                if not _alive(replica):
                    acked.pop(replica, None)
            behind = [r for r, g in acked.items() if g < generation]
            if not behind or time.monotonic() >= deadline:
                return {"replicas": dict(acked), "behind": behind}
            await asyncio.sleep(0.01)


def _alive(replica: str) -> bool:
    if not replica.startswith(REPLICA_ACTOR_PREFIX):
        return True  # not a Serve replica (a test's follower): trust its acks
    try:
        ray.get_actor(replica, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


AliasBoard = ray.remote(_Board)


def board() -> Any:
    """The cluster's board actor, created by whoever asks first. Detached: it must outlive the
    replica that happened to create it."""
    return AliasBoard.options(
        num_cpus=0, max_concurrency=1000, name=BOARD_NAME, namespace=BOARD_NAMESPACE,
        lifetime="detached", get_if_exists=True,
    ).remote()


def board_key(model_repository: Any) -> str:
    """The key replicas of one repository share: its resolved path."""
    from pathlib import Path

    return str(Path(model_repository).expanduser().resolve())
