"""Waiting for an idle machine before a timed run: load average and the CPU that processes other
than the server under test use, from /proc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from load_tests import procs

LOADAVG_BELOW = 1.0
CPU_BELOW = 0.05  # share of all cores


@dataclass(frozen=True)
class Idleness:
    """One look at the machine: 1-minute load average and the share of all cores that everything
    but the server under test kept busy over the sample."""

    loadavg_1m: float
    others_cpu: float
    server_cpu: float

    def idle(self, loadavg_below: float = LOADAVG_BELOW, cpu_below: float = CPU_BELOW) -> bool:
        return self.loadavg_1m < loadavg_below and self.others_cpu < cpu_below


def split_busy(
    machine_ticks: int, server_ticks: int, elapsed_ticks: float, cores: int
) -> tuple[float, float]:
    """(others' share, the server's share) of all cores over elapsed_ticks of wall time."""
    capacity = max(elapsed_ticks * cores, 1e-9)
    server = max(server_ticks, 0) / capacity
    others = max(machine_ticks - server_ticks, 0) / capacity
    return min(others, 1.0), min(server, 1.0)


def _server_ticks(pids: Iterable[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        ticks = procs.cpu_ticks(pid)
        if ticks is not None:
            out[pid] = ticks
    return out


def look(server_pids: Callable[[], list[int]] = list, interval_s: float = 2.0) -> Idleness:
    """Sample the machine for interval_s; the server's processes are asked once, at the start."""
    pids = server_pids()
    cores = os.cpu_count() or 1
    before_machine, before_server = procs.machine_busy_ticks(), _server_ticks(pids)
    started = time.monotonic()
    time.sleep(interval_s)
    elapsed = time.monotonic() - started
    after_machine, after_server = procs.machine_busy_ticks(), _server_ticks(pids)
    server = sum(after_server[p] - before_server[p] for p in after_server if p in before_server)
    others, mine = split_busy(
        after_machine - before_machine, server, elapsed * procs.CLOCK_TICKS, cores
    )
    return Idleness(round(os.getloadavg()[0], 2), round(others, 3), round(mine, 3))


def wait_until_idle(
    server_pids: Callable[[], list[int]] = list,
    max_wait_s: float = 60.0,
    interval_s: float = 2.0,
) -> dict:
    """Look until the machine is idle or max_wait_s has passed; the facts for the report."""
    started = time.monotonic()
    while True:
        seen = look(server_pids, interval_s)
        waited = time.monotonic() - started
        if seen.idle() or waited >= max_wait_s:
            return {
                "idle": seen.idle(), "waited_s": round(waited, 1), "loadavg_1m": seen.loadavg_1m,
                "others_cpu": seen.others_cpu, "server_idle_cpu": seen.server_cpu,
            }  # fmt: skip
