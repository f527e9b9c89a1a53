"""Scoped bearer tokens on the real server: every protected route with no token, a wrong one, one
without its scope and one with it; tokens created and revoked while it runs (no restart); the
replica ports behind HAProxy covered too; and no token in any log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import create_token, wait_for

ROW = [0.5] * 30
INFER_BODY = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}]}
# (method, path, scope it needs); a `monitor` token also scrapes (vigil.core.tokens.IMPLIED)
PROTECTED = [
    ("GET", "/v2/models/breast_cancer", "infer"),
    ("GET", "/v2/models/breast_cancer/ready", "infer"),
    ("GET", "/v2/models/breast_cancer/versions/1", "infer"),
    ("GET", "/v2/models/breast_cancer/versions/1/ready", "infer"),
    ("POST", "/v2/models/breast_cancer/infer", "infer"),
    ("POST", "/v2/models/breast_cancer/versions/1/infer", "infer"),
    ("GET", "/v2/vigil/batching", "monitor"),
    ("GET", "/monitor/metrics", "metrics"),
    ("GET", "/monitor/v1/status", "monitor"),
    ("GET", "/monitor/v1/models/breast_cancer/drift", "monitor"),
    ("GET", "/monitor/v1/models/breast_cancer/rows", "monitor"),
    # A version's whole record (lineage, metadata): an operator's, not a client's.
    ("GET", "/v2/repository/models/breast_cancer/versions/1", "admin"),
    ("GET", "/v2/repository/models/breast_cancer/history", "admin"),
]
GRANTED_TOO = {"metrics": {"monitor"}}  # route scope -> other scopes that grant it
HEALTH = ["/v2", "/v2/health/live", "/v2/health/ready"]
WRONG = "vigil_" + "x" * 43


def _call(vigil, method: str, path: str, authorization: str | None = None) -> httpx.Response:
    headers = {"Authorization": authorization} if authorization is not None else {}
    body = INFER_BODY if method == "POST" else None
    return httpx.request(method, f"{vigil.base_url}{path}", json=body, headers=headers, timeout=30)


def _vigil_cli(*args: str) -> str:
    vigil_exe = str(Path(sys.executable).with_name("vigil"))
    return subprocess.run([vigil_exe, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def scoped(vigil):
    """One token per scope, created with `vigil tokens create` while the server runs; revoked
    afterwards."""
    tokens = {scope: create_token(f"only-{scope}", scope, vigil.models_dir)
              for scope in ("metrics", "infer", "monitor", "admin")}
    # Replicas re-read the tokens file within a second of its change, without a restart.
    wait_for(lambda: _call(vigil, "GET", "/v2/models/breast_cancer",
                           f"Bearer {tokens['infer']}").status_code == 200,
             30, "new token accepted", 0.25)
    try:
        yield tokens
    finally:
        for scope in tokens:
            _vigil_cli("tokens", "revoke", f"only-{scope}", "--models-dir", str(vigil.models_dir))


def test_health_routes_stay_open_for_probes(vigil):
    for path in HEALTH:
        assert httpx.get(f"{vigil.base_url}{path}", timeout=10).status_code == 200, path


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
@pytest.mark.parametrize("authorization", [None, f"Bearer {WRONG}", "Bearer", "Basic dXNlcjpwdw=="])
def test_no_or_a_wrong_token_is_401(vigil, method, path, scope, authorization):
    response = _call(vigil, method, path, authorization)
    assert response.status_code == 401, (path, response.text)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert set(response.json()) == {"error"}


@pytest.mark.parametrize(("method", "path", "scope"), PROTECTED)
def test_each_scope_opens_its_routes_and_only_those(vigil, scoped, method, path, scope):
    for held, token in scoped.items():
        response = _call(vigil, method, path, f"Bearer {token}")
        if held == scope or held in GRANTED_TOO.get(scope, ()):
            # rows: 409 until a window with rows has closed, past the guard all the same
            assert response.status_code in (200, 409), (path, held, response.text)
        else:
            assert response.status_code == 403, (path, held, response.text)
            assert response.json()["error"] == (
                f"token 'only-{held}' lacks the '{scope}' scope this route needs"
            )
            assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert _call(vigil, method, path, f"Bearer {vigil.token}").status_code in (200, 409)


def test_unknown_routes_say_nothing_without_a_token(vigil):
    assert _call(vigil, "GET", "/v2/nothing/here").status_code == 401
    assert _call(vigil, "GET", "/v2/nothing/here", f"Bearer {vigil.token}").status_code == 404


def test_a_revoked_token_is_refused_without_a_restart(vigil):
    token = create_token("short-lived", "infer", vigil.models_dir)
    path = "/v2/models/breast_cancer/ready"
    wait_for(lambda: _call(vigil, "GET", path, f"Bearer {token}").status_code == 200, 30,
             "token accepted", 0.25)
    out = _vigil_cli("tokens", "revoke", "short-lived", "--models-dir", str(vigil.models_dir))
    assert "revoked token 'short-lived'" in out
    wait_for(lambda: _call(vigil, "GET", path, f"Bearer {token}").status_code == 401, 30,
             "revoked token refused", 0.25)
    listing = _vigil_cli("tokens", "list", "--models-dir", str(vigil.models_dir))
    assert "short-lived" not in listing and "tests  scopes=admin,infer,monitor" in listing


def _replica_ports() -> set[int]:
    """The replicas' own HTTP ports, from the HAProxy configuration Ray wrote for this node: the
    servers of its `http-*` backends (the `grpc-*` ones are the replicas' gRPC ports)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    text = (Path("/tmp/haproxy-serve") / node / "haproxy.cfg").read_text()
    ports, backend = set(), ""
    for line in text.splitlines():
        if (section := re.match(r"(backend|frontend|listen|defaults|global)\s*(\S*)", line)):
            backend = section.group(2) if section.group(1) == "backend" else ""
        elif backend.startswith("http-") and (
                server := re.match(r"\s*server\s+SERVE_REPLICA\S*\s+[\d.]+:(\d+)", line)):
            ports.add(int(server.group(1)))
    return ports


def test_replica_ports_behind_haproxy_check_tokens_too(vigil):
    ports = _replica_ports()
    assert len(ports) >= 3, ports  # two model servers and the monitor
    for port in ports:
        base = f"http://127.0.0.1:{port}"
        for path in ("/v2/models/breast_cancer/ready", "/monitor/metrics", "/v2/vigil/batching"):
            bare = httpx.get(base + path, timeout=10)
            assert bare.status_code in (401, 404), (port, path, bare.status_code)
        served = [httpx.get(base + p, headers=vigil.auth, timeout=10).status_code
                  for p in ("/v2/models/breast_cancer/ready", "/monitor/metrics")]
        assert 200 in served, (port, served)


def test_tokens_never_reach_a_log_or_the_tokens_file(vigil, scoped):
    import ray

    logs = Path(ray._private.worker.global_worker.node.get_logs_dir_path())
    secrets = [vigil.token, WRONG, *scoped.values()]
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 200 * 1024 * 1024:
            text = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in text, path
    stored = vigil.tokens_file.read_text()
    assert all(secret not in stored for secret in secrets)
    assert vigil.tokens_file.stat().st_mode & 0o777 == 0o600
