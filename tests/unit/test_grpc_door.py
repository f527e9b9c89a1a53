"""The gRPC door (vigil.adapters.grpc_door): HTTP's scopes and loopback rule for a call's
metadata and peer, and who made the call."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.adapters.grpc_door import GrpcGuard, peer_host
from vigil.core.tokens import TokenVerifier, create_token


@pytest.mark.parametrize(("peer", "host"), [
    ("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"),
    ("ipv4:10.0.0.7:80", "10.0.0.7"), ("unix:/tmp/s.sock", None), ("", None),
])
def test_the_peer_address(peer, host):
    assert peer_host(peer) == host


def test_without_a_tokens_file_only_this_host_gets_in(tmp_path: Path):
    rejected: list[tuple[int, str | None]] = []
    guard = GrpcGuard(TokenVerifier(tmp_path / "none.yaml"), "tokens", frozenset({"10.0.0.5"}),
                      lambda status, scope: rejected.append((status, scope)))
    assert guard.admit({}, "ipv4:127.0.0.1:1", "infer").actor == "local:127.0.0.1"
    assert guard.admit({}, "ipv6:[::1]:1", "admin").decision.allowed
    assert guard.admit({}, "ipv4:10.0.0.5:1", "infer").decision.allowed  # this node (HAProxy)
    stranger = guard.admit({}, "ipv4:10.0.0.9:1", "infer")
    assert (stranger.decision.allowed, stranger.decision.status) == (False, 403)
    assert "serves only its own host" in stranger.decision.message
    assert guard.admit({}, "ipv4:10.0.0.9:1", "").decision.allowed  # health: open
    assert rejected == [(403, "infer")]


def test_with_tokens_scopes_decide_and_the_token_names_the_caller(tmp_path: Path):
    path = tmp_path / "tokens.yaml"
    user = create_token(path, "user", frozenset({"infer"}))
    guard = GrpcGuard(TokenVerifier(path), "tokens", frozenset())
    admitted = guard.admit({"authorization": f"Bearer {user}"}, "ipv4:10.0.0.9:1", "infer")
    assert admitted.decision.allowed and admitted.actor == "user"
    denied = guard.admit({"authorization": f"Bearer {user}"}, "ipv4:127.0.0.1:1", "admin")
    assert (denied.decision.allowed, denied.decision.status) == (False, 403)
    assert guard.admit({}, "ipv4:127.0.0.1:1", "infer").decision.status == 401  # loopback too
    assert guard.admit({"authorization": "Bearer nope"}, "ipv4:1.2.3.4:1",
                       "infer").decision.status == 401
    assert GrpcGuard(TokenVerifier(path), "none", frozenset()).admit(
        {}, "ipv4:1.2.3.4:1", "admin").decision.allowed
