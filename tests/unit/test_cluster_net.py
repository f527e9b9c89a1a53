"""The cluster scenario's hosts (load_tests.cluster_net): each namespace has its own address,
reachable from the client side and from the other node, a port bound in one namespace is free in
the other, and nothing made stays; and the client's Service-like readiness (cluster_load)."""

from __future__ import annotations

import fcntl
import http.server
import socket
import subprocess
import sys
import threading
import time

import pytest

from load_tests import cluster_net
from load_tests.cluster_load import Service

WHY_NOT = cluster_net.available()
needs_netns = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")

SERVER = "import http.server as h, sys; h.HTTPServer((sys.argv[1], 8000), h.SimpleHTTPRequestHandler).serve_forever()"  # noqa: E501


@pytest.fixture
def cluster_lock():
    """The scenario's own lock: a running `make cluster` owns the vglc names."""
    with open("/tmp/vglc.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip("a cluster scenario is running")
        yield


def _get(host: str, netns: str | None = None) -> str:
    code = (f"import urllib.request; print(urllib.request.urlopen('http://{host}:8000/', "
            "timeout=5).status)")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30).stdout.strip()


@needs_netns
def test_each_node_has_its_own_address_and_port_8000_and_nothing_stays(cluster_lock):
    nodes = cluster_net.nodes(1)
    servers = []
    try:
        cluster_net.create(nodes)
        for node in nodes:  # both bind :8000, each on its own address
            servers.append(subprocess.Popen(
                [*node.exec_prefix(), sys.executable, "-c", SERVER, node.address],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        head, worker = nodes
        assert _get(head.address) == _get(worker.address) == "200"  # from the client side
        assert _get(worker.address, head.netns) == "200"  # node to node
        assert _get(head.address, worker.netns) == "200"
    finally:
        for server in servers:
            server.kill()
            server.wait()
        cluster_net.remove_leftovers()
    assert cluster_net.leftovers() == []


@needs_netns
def test_leftovers_of_a_killed_run_are_removed_before_the_next(cluster_lock):
    nodes = cluster_net.nodes(1)
    cluster_net.create(nodes)  # and "crash": no cleanup
    try:
        assert set(cluster_net.leftovers()) >= {"vglc-head", "vglc-worker1", cluster_net.BRIDGE}
        cluster_net.create(nodes)  # starts by removing them: no "File exists"
    finally:
        removed = cluster_net.remove_leftovers()
    assert "netns vglc-head" in removed and cluster_net.leftovers() == []


def test_node_names_fit_linux_interface_names():
    for node in cluster_net.nodes(9):
        assert len(node.veth_host) <= 15 and len(node.veth_node) <= 15
    assert len({n.veth_host for n in cluster_net.nodes(9)}) == 10


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the handler's API
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_service_takes_a_dead_endpoint_out_after_its_failure_threshold():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    up, down = f"http://127.0.0.1:{server.server_port}", f"http://127.0.0.1:{dead_port}"
    service = Service([up, down], period_s=0.5, failure_threshold=2)
    try:
        import httpx

        with httpx.Client() as client:
            service._probe_once(client)
            assert service.ready == {up: True, down: True}  # one failure is not enough
            service._probe_once(client)
        assert service.ready == {up: True, down: False}
        assert {service.pick() for _ in range(6)} == {up}
        assert [(e, r) for _, e, r in service.changes] == [(down, False)]
    finally:
        server.shutdown()
