"""The abuse scenario's clients and arithmetic (load_tests.abuse_clients, load_tests.abuse),
against a small real server on loopback that behaves as the front door does: it closes a
connection that sends nothing, answers 408 to a body that stalls and 200 to a whole request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from load_tests.abuse import table, verdicts
from load_tests.abuse_clients import attack, cut_off, held_at_once, probe, probe_summary

IDLE_CUT_S = 0.4


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_CUT_S)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        try:
            await asyncio.wait_for(reader.readexactly(length), IDLE_CUT_S)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        except TimeoutError:
            writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(_handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]
    loop.call_soon_threadsafe(loop.stop)
    thread.join()


@pytest.mark.parametrize(("kind", "status"), [("idle", None), ("slowloris", None),
                                             ("stalled", 408)])
def test_attackers_record_when_the_server_cut_them_off(port, kind, status):
    records = attack(kind, 20, port, "token", seconds=1.5)
    summary = cut_off(records, 1.5)
    assert summary["opened"] == summary["cut"] == 20
    assert IDLE_CUT_S <= summary["cut_median_s"] < IDLE_CUT_S + 0.4
    assert summary["statuses"] == {str(status) if status else "none": 20}
    assert held_at_once(records) == 20


def test_probes_get_answers_and_failures_are_counted(port):
    results = probe(port, "token", seconds=0.5, threads=2, pause_s=0.01)
    summary = probe_summary(results)
    assert summary["requests"] > 5 and summary["failed"] == 0 and summary["waited_10s"] == 0
    refused = probe(1, "token", seconds=0.2, threads=1)  # nothing listens on port 1
    assert probe_summary(refused)["failed"] == len(refused) > 0


def test_held_at_once_counts_overlapping_connections_only():
    records = [{"opened": 0.0, "closed": 1.0, "status": None},
               {"opened": 0.5, "closed": 2.0, "status": None},
               {"opened": 1.5, "closed": None, "status": None},  # open to the end
               {"opened": None, "closed": None, "status": None}]  # never connected
    assert held_at_once(records) == 2


def test_cut_off_leaves_out_connections_the_attacker_closed_itself():
    records = [{"opened": 0.0, "closed": 10.2, "status": None},
               {"opened": 1.0, "closed": 6.0, "status": 408},
               {"opened": 0.0, "closed": 30.0, "status": None}]  # closed by the attacker at 30
    assert cut_off(records, 30.0) == {
        "attempted": 3, "opened": 3, "cut": 2, "cut_median_s": 7.6, "cut_max_s": 10.2,
        "statuses": {"408": 1, "none": 2}}


def test_probe_percentiles_and_the_table():
    results = [(i * 0.1, 0.010 + i * 0.001, 200) for i in range(99)] + [(10.0, 10.0, 0)]
    summary = probe_summary(results)
    assert summary == {"requests": 100, "failed": 1, "p50_ms": 60.0, "p99_ms": 10000.0,
                       "max_ms": 10000.0, "waited_10s": 1}
    row = {"attack": "idle", "connections": 5000, "held_at_once": 4096, "probes": summary,
           "attackers": {"attempted": 5000, "opened": 4096, "cut": 0, "cut_median_s": None,
                         "cut_max_s": None, "statuses": {"none": 4096}},
           "replicas_max": 2}
    lines = table([row], before=True)
    assert lines[0].endswith("BEFORE (limits off)")
    assert lines[-1] == ("| idle connections | 4096 of 5000 | 60.0 | 10000.0 | 1/100 | 1 | "
                         "0/4096 (None, None) | none: 4096 | 2 |")
    assert verdicts([row]) == ["idle connections: probes p99 10000.0 ms, 1 failed, 1 waited "
                               "10 s: MISSES the target"]
