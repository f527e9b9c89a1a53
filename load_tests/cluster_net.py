"""Network namespaces for a Ray cluster on one machine: one namespace per node, joined by a bridge.

Each node gets its own network stack and address (10.77.0.1 for the head, 10.77.0.2, ... for
workers), so every node's HAProxy binds :8000 on its own address and Ray's ports never meet those
of another Ray on this machine (the test session's, on 127.0.0.1 of the root namespace). The
bridge carries 10.77.0.254 in the root namespace: this process, the client, reaches every node
as a machine on the same LAN would. Traffic goes only to these addresses.

Every name made here starts with PREFIX, and `remove_leftovers` deletes whatever carries it
(namespaces, the bridge, veth ends left by a run that was killed), so a crashed run never stays.
Needs root and `ip` (iproute2): `available()` says whether this process has both, and why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

PREFIX = "vglc"  # every namespace and link this module makes starts with it
BRIDGE = f"{PREFIX}br0"
SUBNET = "10.77.0"
HOST_ADDRESS = f"{SUBNET}.254"  # the bridge's address: the client side, in the root namespace


@dataclass(frozen=True)
class Node:
    """One namespace: a machine of the cluster."""

    name: str  # "head", "worker1", ...
    address: str

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def short(self) -> str:  # "hd", "w1", ...: interface names have 15 characters at most
        return "hd" if self.name == "head" else "w" + self.name.removeprefix("worker")

    @property
    def veth_host(self) -> str:  # the end on the bridge
        return f"{PREFIX}{self.short}h"

    @property
    def veth_node(self) -> str:  # the end inside the namespace
        return f"{PREFIX}{self.short}n"

    def exec_prefix(self) -> list[str]:
        """Run a command inside this node's namespace."""
        return ["ip", "netns", "exec", self.netns]


def available() -> str | None:
    """None when namespaces can be made here; else why not (for a skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root (this process is not)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's `ip` (not found)"
    probe = f"{PREFIX}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def nodes(workers: int = 1) -> list[Node]:
    return [Node("head", f"{SUBNET}.1")] + [
        Node(f"worker{i}", f"{SUBNET}.{i + 1}") for i in range(1, workers + 1)
    ]


def create(cluster: list[Node]) -> None:
    """The bridge (with the client's address) and one namespace per node, each with lo up and
    its address on a veth whose other end is on the bridge. Leftovers of a crashed run go first."""
    remove_leftovers()
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HOST_ADDRESS}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for node in cluster:
        _ip("netns", "add", node.netns)
        _ip("link", "add", node.veth_host, "type", "veth", "peer", "name", node.veth_node)
        _ip("link", "set", node.veth_node, "netns", node.netns)
        _ip("link", "set", node.veth_host, "master", BRIDGE)
        _ip("link", "set", node.veth_host, "up")
        _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", node.veth_node)
        _ip("-n", node.netns, "link", "set", node.veth_node, "up")
        _ip("-n", node.netns, "link", "set", "lo", "up")


def remove_leftovers() -> list[str]:
    """Delete every namespace and link whose name starts with PREFIX; returns what went."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"{PREFIX}-"):
            _ip("netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        # "12: vglcheadh@if11: <...>" -> vglcheadh
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(PREFIX):
                _ip("link", "del", name, check=False)
                removed.append(f"link {name}")
    return removed


def leftovers() -> list[str]:
    """Names carrying PREFIX that still exist (a test asserts none after a run)."""
    found = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
             if line.split() and line.split()[0].startswith(f"{PREFIX}-")]
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(PREFIX):
            found.append(parts[1].strip().split("@")[0])
    return found
