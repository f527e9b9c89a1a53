"""Run a command (`serve run`) so that stopping it stops everything it started.

`make serve` runs `python -m vigil.tools.lifecycle -- serve run CONFIG`. Stopping `serve run` directly
goes wrong in ways that depend on who sends which signal:

* A signal to the whole process group (CI runners, supervisors, `timeout`, a terminal's Ctrl-C)
  reaches Ray's own processes too, which share the group: on SIGTERM the GCS and the raylet die
  at once, Serve cannot shut down, and the HAProxy that Serve's HAProxyManager actor spawned is
  orphaned, still listening on port 8000, so the next `make serve` fails.
* `make` on SIGINT (to its pid alone) does not pass it on: it waits for its child, for ever.
* A command started in the background by a non-interactive shell (`make serve &` in a script)
  inherits SIGINT ignored, so SIGINT does nothing at all.

So this supervisor runs the command in a session of its own (group-wide signals reach only the
supervisor), becomes a child subreaper (processes that Ray orphans re-parent to it, not to
init), and on SIGINT, SIGTERM or SIGHUP, or when its parent `make` starts handling one of those
or goes away, sends the command one SIGINT (`serve run`'s own clean path: `serve.shutdown()`,
which stops HAProxy and the replicas, then `ray.shutdown()`), waits up to --grace seconds, then
SIGTERMs every process still left of the run (its descendants and every process of its session),
and SIGKILLs what survives --kill-after seconds more. A further signal more than a second after
the first skips the rest of the grace period. It then dies by the signal it got (exit status
128 + signal number for a shell); when the command ends by itself, it cleans up the same way
and exits with the command's status. Should the supervisor itself be SIGKILLed, the command gets
SIGINT from the kernel (PR_SET_PDEATHSIG) and still takes its clean path.

Linux only (prctl, and /proc for the one thing psutil does not tell: which signals a process
catches). Beyond the standard library it needs only psutil (the process tree, sessions and
states), so it starts in a few tens of milliseconds and stays out of the served applications'
imports.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Signals whose handling by a parent `make` means it wants to stop (GNU make resets the handler
# to SIG_DFL on entry to its fatal-signal handler, then waits for its children).
_MAKE_FATAL = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
_POLL_S = 0.1
_HURRY_AFTER_S = 1.0  # a repeated signal sooner than this is the same stop sent twice


def _say(message: str) -> None:
    try:
        print(f"vigil.tools.lifecycle: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    """Orphaned descendants re-parent to this process instead of init."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _interrupt_when_parent_dies() -> None:
    """In the command, between fork and exec: should the supervisor itself be SIGKILLed (a
    group-wide SIGKILL), the command gets SIGINT and still takes its clean path."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGINT)


_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)  # exited, whatever is left of them


def comm(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:  # gone
        return None


def run_processes(session: int) -> list[int]:
    """Every live process of the run: this process's descendants (all of them, orphans
    included, while it is a subreaper) and every process in the command's session."""
    me = os.getpid()
    try:
        ours = {child.pid for child in psutil.Process(me).children(recursive=True)}
    except psutil.Error:
        ours = set()
    return sorted(
        proc.pid for proc in psutil.process_iter(["status"])
        if proc.pid != me and proc.info["status"] not in _GONE
        and (proc.pid in ours or _session(proc.pid) == session)
    )


def _caught_signals(pid: int) -> set[int]:
    """The signals `pid` has a handler for (SigCgt: psutil does not read it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    except (OSError, ValueError):
        pass
    return set()


class _Stop:
    """The stop request: the first signal (or other reason) and whether to hurry."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.reason: str | None = None
        self.received = False  # the stop came as a signal to this process
        self.first_at = 0.0
        self.hurry = False

    def handler(self, signum: int, _frame: object) -> None:
        now = time.monotonic()
        if self.reason is None:
            self.signum, self.reason, self.first_at = signum, signal.Signals(signum).name, now
            self.received = True
        elif now - self.first_at > _HURRY_AFTER_S:
            self.hurry = True

    def request(self, reason: str, signum: int) -> None:
        if self.reason is None:
            self.signum, self.reason, self.first_at = signum, reason, time.monotonic()


class _ParentWatch:
    """Notices when the parent goes away, or, for a parent `make`, starts handling a fatal
    signal: make neither passes SIGINT on to its child nor stops waiting for it."""

    def __init__(self) -> None:
        self.ppid = os.getppid()
        is_make = comm(self.ppid) in ("make", "gmake")
        self.watched = set(_MAKE_FATAL) & _caught_signals(self.ppid) if is_make else set()

    def check(self) -> tuple[str, int] | None:
        if os.getppid() != self.ppid:
            return "parent exited", signal.SIGTERM
        if self.watched:
            lost = self.watched - _caught_signals(self.ppid)
            if lost and psutil.pid_exists(self.ppid):
                signum = min(lost)
                return f"make got {signal.Signals(signum).name}", signum
        return None


class Supervisor:
    def __init__(self, command: list[str], grace_s: float, kill_after_s: float) -> None:
        self.command, self.grace_s, self.kill_after_s = command, grace_s, kill_after_s
        self.stop = _Stop()
        self.child: subprocess.Popen[bytes] | None = None
        self.status: int | None = None  # the command's exit code, once reaped

    def _reap(self) -> None:
        """Collect every exited child of ours (adopted orphans included)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid:
                self.status = os.waitstatus_to_exitcode(status)
                self.child.returncode = self.status

    def _wait(self, until: float, done: Callable[[], bool]) -> bool:
        while time.monotonic() < until:
            self._reap()
            if done():
                return True
            time.sleep(_POLL_S)
        self._reap()
        return done()

    def run(self) -> int:
        subreaper = become_subreaper()
        for sig in _STOP_SIGNALS:
            # Installed before the command starts: it then begins with these at SIG_DFL even where
            # this process inherited them ignored (a background job of a non-interactive shell).
            signal.signal(sig, self.stop.handler)
        parent = _ParentWatch()
        try:
            self.child = subprocess.Popen(self.command, start_new_session=True,
                                          preexec_fn=_interrupt_when_parent_dies)
        except OSError as exc:
            _say(f"cannot run {self.command[0]}: {exc}")
            return 127
        session = self.child.pid
        if not subreaper:
            _say("not a child subreaper (prctl failed); cleanup covers the command's session only")

        next_parent_check = 0.0
        while self.status is None and self.stop.reason is None:
            self._reap()
            if time.monotonic() >= next_parent_check:
                next_parent_check = time.monotonic() + 0.25
                if (found := parent.check()) is not None:
                    self.stop.request(*found)
            if self.status is None and self.stop.reason is None:
                time.sleep(_POLL_S)

        if self.stop.reason is not None and self.status is None:
            _say(f"{self.stop.reason}: stopping {Path(self.command[0]).name} (SIGINT, up to "
                 f"{self.grace_s:g} s), then whatever of it is left")
            _signal(self.child.pid, signal.SIGINT)
            self._wait(time.monotonic() + self.grace_s,
                       lambda: self.status is not None or self.stop.hurry)
        if self.status is not None and not self.stop.hurry:
            # Ray's processes end just after the driver: a moment before stopping them.
            self._wait(time.monotonic() + 1.0, lambda: not run_processes(session))
        self._clean_up(session)

        if self.stop.signum is not None:
            return 128 + self.stop.signum
        status = self.status if self.status is not None else 1
        return status if status >= 0 else 128 - status  # -N: killed by signal N

    def _clean_up(self, session: int) -> None:
        """SIGTERM what is left of the run, SIGKILL what survives kill_after_s."""
        left = run_processes(session)
        if not left:
            return
        names: dict[str, int] = {}
        for pid in left:
            names[comm(pid)] = names.get(comm(pid), 0) + 1
        _say("stopping what is left: " + ", ".join(
            f"{name}" + (f" x{n}" if n > 1 else "") for name, n in sorted(names.items())))
        seen: set[int] = set()
        deadline = time.monotonic() + self.kill_after_s
        # Repeat the scan: a process may start another while it is being stopped.
        while time.monotonic() < deadline:
            self._reap()
            left = run_processes(session)
            if not left:
                return
            for pid in set(left) - seen:
                _signal(pid, signal.SIGTERM)
            seen |= set(left)
            time.sleep(_POLL_S)
        for _ in range(3):
            left = run_processes(session)
            if not left:
                break
            _say(f"SIGKILL after {self.kill_after_s:g} s: "
                 + ", ".join(f"{comm(p)}[{p}]" for p in left))
            for pid in left:
                _signal(pid, signal.SIGKILL)
            self._wait(time.monotonic() + 1.0, lambda: not run_processes(session))
        self._reap()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vigil.tools.lifecycle",
        description="Run COMMAND in its own session; on SIGINT/SIGTERM/SIGHUP stop it and "
        "everything it started.",
    )
    parser.add_argument("--grace", type=float, default=8.0, metavar="S",
                        help="seconds the command has to stop after SIGINT (default: 8)")
    parser.add_argument("--kill-after", type=float, default=2.0, metavar="S",
                        help="seconds between SIGTERM and SIGKILL for what is left (default: 2)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command, after --: e.g. -- serve run configs/serve.yaml")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    supervisor = Supervisor(command, args.grace, args.kill_after)
    code = supervisor.run()
    signum = supervisor.stop.signum
    if supervisor.stop.received and signum is not None:
        # Die by the signal, as a shell expects of a command stopped by one.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return code


if __name__ == "__main__":
    sys.exit(main())
