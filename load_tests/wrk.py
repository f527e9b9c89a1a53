"""wrk as the load generator: one thread, a binary-safe Lua script per scenario, a JSON summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

# The body is read from a file in binary mode, so binary tensor payloads travel byte for byte.
# response() runs in the thread's Lua state; done() runs in the main state and collects the
# thread counters with thread:get().
_LUA = r"""
local f = assert(io.open(%(body_path)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
%(headers)s
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  non2xx = 0
  last_bad = 0
end
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    last_bad = status
  end
end
function done(summary, latency, requests)
  local bad, code = 0, 0
  for _, t in ipairs(threads) do
    bad = bad + t:get("non2xx")
    if t:get("last_bad") ~= 0 then code = t:get("last_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect_errors":%%d,' ..
    '"read_errors":%%d,"write_errors":%%d,"status_errors":%%d,"timeouts":%%d,"non2xx":%%d,' ..
    '"last_bad_status":%%d,"p50_us":%%d,"p90_us":%%d,"p99_us":%%d,"max_us":%%d,"mean_us":%%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, bad, code, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


class WrkError(RuntimeError):
    """wrk could not run or printed no summary."""


def ensure_wrk() -> str:
    """Path to wrk; on a fresh machine where we are root, install it with apt-get first."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise WrkError("wrk is not installed and we are not root: apt-get install wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, check=False, env=env, capture_output=True).returncode != 0:
        subprocess.run(
            ["apt-get", "update", "-q"], check=False, env=env, capture_output=True, timeout=300
        )
        subprocess.run(install, env=env, capture_output=True, timeout=300, check=True)
    found = shutil.which("wrk")
    if not found:
        raise WrkError("apt-get install wrk did not provide a wrk binary")
    return found


def write_script(path: Path, body_path: Path, headers: dict[str, str]) -> Path:
    lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    path.write_text(_LUA % {"body_path": json.dumps(str(body_path)), "headers": "\n".join(lines)})
    return path


def run(
    wrk: str,
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    timeout_s: float = 10.0,
) -> dict:
    """One wrk run with one thread. Returns the summary with derived fields (req_s, ms)."""
    cmd = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={int(timeout_s)}s",
        "-s",
        str(script),
        url,
    ]
    try:
        done = subprocess.run(
            cmd, check=False, capture_output=True, text=True, timeout=duration_s + timeout_s + 30
        )
    except subprocess.TimeoutExpired as exc:
        raise WrkError(f"wrk did not finish: {' '.join(cmd)}") from exc
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            summary = json.loads(line[len("WRK_JSON ") :])
            break
    else:
        raise WrkError(f"wrk printed no summary (rc {done.returncode}): {done.stderr[-500:]}")
    seconds = summary["duration_us"] / 1e6
    summary["req_s"] = summary["requests"] / seconds if seconds > 0 else 0.0
    summary["p50_ms"] = summary["p50_us"] / 1000
    summary["p99_ms"] = summary["p99_us"] / 1000
    summary["socket_errors"] = (
        summary["connect_errors"]
        + summary["read_errors"]
        + summary["write_errors"]
        + summary["timeouts"]
    )
    return summary
