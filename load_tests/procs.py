"""Process housekeeping for the bench: subreaper, process trees from /proc, stopping by pid, ports."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans of our children (daemons started by `ray start`) re-parent to us, not to init,
    so that every process the bench started stays findable as one of our descendants."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Let a cleanup finish: Ctrl-C / SIGTERM during it are remembered and re-raised after."""
    caught: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda s, f: caught.append(s)) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if caught:
            raise KeyboardInterrupt(f"signal {caught[0]} during cleanup")


def parents() -> dict[int, int]:
    """pid -> ppid for every live process (zombies excluded)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(entry.name)] = int(fields[1])
    return out


def descendants(root: int, table: dict[int, int] | None = None) -> list[int]:
    """Every live process below `root`; `table` is a parents() snapshot to reuse."""
    table = parents() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def pids_with_cmdline(needle: str) -> list[int]:
    """Live processes whose command line contains `needle` (our own temp dir, say)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if needle in cmdline(int(entry.name)):
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """The command line (as set by the process: Ray workers retitle themselves); '' when gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since start) in KiB from /proc/<pid>/status; {} when gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found if len(found) == 2 else {}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def reap() -> None:
    """Collect exit statuses of any of our (adopted) children that have ended."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_pids(pids: list[int], grace_s: float = 8.0) -> list[int]:
    """SIGTERM each pid, SIGKILL what is left after grace_s. Returns the pids that needed SIGKILL."""
    pids = [p for p in dict.fromkeys(pids) if p != os.getpid()]
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap()
        if not any(alive(p) for p in pids):
            return []
        time.sleep(0.2)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    time.sleep(0.3)
    reap()
    return killed


def stop_process_group(pgid: int, grace_s: float = 8.0) -> None:
    """SIGTERM a process group (uvicorn and its workers), SIGKILL after grace_s."""
    members = [pgid, *descendants(pgid)]
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(p) for p in members):
        reap()
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    stop_pids([p for p in members if alive(p)], grace_s=2.0)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of a process (all its threads) in clock ticks; None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


def niceness(pid: int) -> int | None:
    """The nice value of a process (Ray runs its workers at 15 by default); None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[16])


def machine_busy_ticks() -> int:
    """Clock ticks all cores have spent running something (user, nice, system, irq, softirq)
    since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def cpu_busy_fraction(interval_s: float = 0.5) -> float:
    """Share of all cores busy over interval_s, from /proc/stat (everyone's load, not just ours)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(interval_s)
    total1, idle1 = sample()
    total = total1 - total0
    return 0.0 if total <= 0 else 1.0 - (idle1 - idle0) / total


class MemorySampler:
    """VmRSS and VmHWM of the processes `find_pids` names (asked again every 2 s) every 0.2 s in
    a thread, each sample tagged with the caller's current `phase`."""

    def __init__(self, find_pids: Callable[[], list[int]], phase: str = "idle") -> None:
        self.find_pids, self.phase = find_pids, phase
        self.samples: list[tuple[str, int, int, int]] = []  # (phase, pid, rss KiB, hwm KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def _run(self) -> None:
        pids: list[int] = []
        next_scan = 0.0
        while not self._stop.wait(0.2):
            if time.monotonic() >= next_scan:
                pids, next_scan = self.find_pids(), time.monotonic() + 2.0
            for pid in pids:
                memory = memory_kib(pid)
                if memory:
                    self.samples.append((self.phase, pid, memory["VmRSS"], memory["VmHWM"]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """phase -> pid -> first and peak VmRSS and the last VmHWM seen, in MiB."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for phase, pid, rss, hwm in self.samples:
            row = out.setdefault(phase, {}).setdefault(
                str(pid), {"first_rss_mib": round(rss / 1024, 1), "peak_rss_mib": 0.0}
            )
            row["peak_rss_mib"] = max(row["peak_rss_mib"], round(rss / 1024, 1))
            row["hwm_mib"] = round(hwm / 1024, 1)
        return out


# Below the kernel's ephemeral range (32768-60999 by default) and above Ray's worker ports
# (10002-19999); tests/conftest.py keeps 32000-32999 for the replicas' direct ingress.
_LISTEN_PORTS = range(20000, 32000)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Every port free_port has handed out in this process: none is bound yet when the next is
# drawn (one environment names several servers' ports before any starts), so bindability alone
# let two draws agree (seen in CI: the fallback proxy's gRPC port was HAProxy's metrics port).
_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before, for a
    server started next. Drawn below the kernel's ephemeral range: a port the OS picks for
    bind(0) is one an outgoing connection can take before that server binds it (seen in CI:
    HAProxy's stats port taken during Ray's startup). Free on 0.0.0.0 too, since some servers
    (HAProxy's stats page) bind every address."""
    ports = range(_LISTEN_PORTS.start, min(_LISTEN_PORTS.stop, _ephemeral_low()))
    with _HANDED_OUT_LOCK:
        for port in random.SystemRandom().sample(ports, min(200, len(ports))):
            if port not in _HANDED_OUT and _bindable(host, port) and _bindable("0.0.0.0", port):
                _HANDED_OUT.add(port)
                return port
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port
