"""load_tests.procs.free_port: the ports a test hands its servers before any of them starts."""

from __future__ import annotations

import socket

import pytest

from load_tests import procs


def test_a_port_is_never_handed_out_twice_though_none_is_bound_yet(monkeypatch) -> None:
    # A range of 16 ports drawn 16 times at random: drawing by bindability alone repeats one
    # almost surely (the CI failure: two servers of one environment given the same port).
    monkeypatch.setattr(procs, "_LISTEN_PORTS", range(29000, 29016))
    monkeypatch.setattr(procs, "_HANDED_OUT", set())
    drawn = [procs.free_port() for _ in range(16)]
    assert len(set(drawn)) == 16
    # The range spent, the next comes from the kernel, and is still new.
    more = [procs.free_port() for _ in range(4)]
    assert len(set(drawn + more)) == 20


def test_a_port_something_listens_on_is_not_drawn(monkeypatch) -> None:
    monkeypatch.setattr(procs, "_LISTEN_PORTS", range(29100, 29104))
    monkeypatch.setattr(procs, "_HANDED_OUT", set())
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            busy.bind(("0.0.0.0", 29101))
        except OSError:
            pytest.skip("port 29101 is taken on this machine")
        busy.listen()
        drawn = {procs.free_port() for _ in range(3)}
    assert drawn == {29100, 29102, 29103}
