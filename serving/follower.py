"""Keeps one replica's models in step with the repository's aliases: a thread that long-polls the
alias board, reloads when told, and reports the generation it serves. When the board fails (it
died, Ray is busy) the thread reconnects every RETRY_S: to the board again (a fresh one if it
died), registered anew, the repository re-read, so a change made meanwhile is served within
seconds, not at the next quiet poll."""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from serving.model_set import ModelSet
from vigil.adapters.alias_board import board, board_key

logger = logging.getLogger("vigil.follower")
POLL_S = 30.0  # one idle long-poll call per this many seconds; a change wakes it at once
RETRY_S = 0.5  # how often a follower that lost the board tries to reconnect
# While a model's repository entry has a fault, its files are re-read this often, so a fixed
# file is served again within seconds, without a change or a restart.
FAULT_POLL_S = 2.0


class AliasFollower:
    """Owns the replica's ModelSet refreshes after start. Blocking Ray calls run on its own
    thread, so the replica's event loop never waits on them."""

    def __init__(self, models: ModelSet, replica_id: str) -> None:
        self.models = models
        self.replica_id = replica_id
        self.key = board_key(models.root)
        self.board: Any = board()
        self._stop = threading.Event()
        # Registered (at the board's generation) before the repository is read: a change bumped
        # after this waits for this replica too, and one bumped before was written before the
        # read below, so it is never missed.
        self.generation: int = ray.get(self.board.register.remote(self.key, replica_id),
                                       timeout=60)
        models.refresh()
        self._thread = threading.Thread(target=self._follow, name="vigil-aliases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _follow(self) -> None:
        known = self.generation
        self._ack(known)
        while not self._stop.is_set():
            try:
                poll = FAULT_POLL_S if self.models.faults else POLL_S
                latest = ray.get(self.board.wait.remote(self.key, known, poll),
                                 timeout=poll + 30)
            except Exception:  # noqa: BLE001 - the board died or Ray is busy: reconnect
                logger.warning("alias board unreachable; reconnecting", exc_info=True)
                reconnected = self._reconnect()
                if reconnected is None:
                    return
                known = reconnected
                continue
            # A quiet poll re-reads too (once per POLL_S, or FAULT_POLL_S while a model has a
            # fault): a notice that never came (a bump lost) delays a change by at most that
            # long, and a mended file is seen within FAULT_POLL_S.
            try:
                self.models.refresh()
            except Exception:  # noqa: BLE001 - a broken repository must not stop following
                # Not acknowledged: whoever made the change hears this replica is behind.
                logger.exception("refreshing models after alias change %d failed", latest)
                if self._stop.wait(1.0):
                    return
                continue
            if latest != known:
                known = latest
                self.generation = latest
                self._ack(latest)

    def _reconnect(self) -> int | None:
        """The board again (created afresh if it died), this replica registered on it, the
        repository re-read after that and acknowledged; tried every RETRY_S until it works.
        Returns the board's generation (None: the follower stopped)."""
        while not self._stop.wait(RETRY_S):
            try:
                self.board = board()
                generation: int = ray.get(
                    self.board.register.remote(self.key, self.replica_id), timeout=30)
                self.models.refresh()
            except Exception:  # noqa: BLE001 - Ray still busy, repository unreadable: again
                logger.debug("reconnecting to the alias board failed; retrying", exc_info=True)
                continue
            logger.info("reconnected to the alias board at generation %d", generation)
            self.generation = generation
            self._ack(generation)
            return generation
        return None

    def _ack(self, generation: int) -> None:
        try:
            ray.get(self.board.ack.remote(self.key, self.replica_id, generation), timeout=30)
        except Exception:  # noqa: BLE001
            logger.warning("could not report generation %d to the alias board", generation,
                           exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        try:
            self.board.forget.remote(self.key, self.replica_id)
        except Exception:  # noqa: BLE001 - Ray shutting down: the board drops dead replicas
            logger.debug("could not tell the alias board this replica stops", exc_info=True)
