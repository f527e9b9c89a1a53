"""h2load (nghttp2's C load generator) as a second client for the gRPC bench: the same tool drives
HTTP/1.1 (`--h1`) and gRPC (HTTP/2 with gRPC's framing), so a ratio of the two is the server's,
not the difference between Python's aiohttp and grpc.aio clients, which on a two-core machine
share the cores with the server.

h2load counts a response by its HTTP status; gRPC answers its errors with status 200 and a
grpc-status trailer, so the bench checks each body with a real gRPC call before it loads it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


class H2loadError(RuntimeError):
    """h2load could not run or printed no summary."""


@dataclass(frozen=True)
class H2loadResult:
    requests: int
    errors: int
    seconds: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "seconds": self.seconds,
                "rps": round(self.rps, 1), "mean_ms": self.mean_ms}


def ensure_h2load() -> str:
    """Path to h2load; on a fresh machine where we are root, apt-get installs nghttp2-client."""
    found = shutil.which("h2load")
    if found:
        return found
    if os.geteuid() != 0:
        raise H2loadError("h2load is not installed and we are not root: "
                          "apt-get install nghttp2-client")
    done = subprocess.run(["apt-get", "install", "-y", "-q", "nghttp2-client"],
                          capture_output=True, text=True, timeout=600, check=False)
    found = shutil.which("h2load")
    if done.returncode != 0 or not found:
        raise H2loadError(f"apt-get install nghttp2-client failed: {done.stderr[-500:]}")
    return found


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}


def run(url: str, body: bytes, headers: dict[str, str], connections: int, streams: int,
        warmup_s: float, measure_s: float, h1: bool = False) -> H2loadResult:
    """POST `body` to `url` from `connections` connections with up to `streams` requests in
    flight on each (HTTP/1.1 with `h1`: one), for `measure_s` after `warmup_s`."""
    binary = ensure_h2load()
    with tempfile.NamedTemporaryFile(suffix=".body") as data:
        data.write(body)
        data.flush()
        argv = [binary, "-c", str(connections), "-m", str(1 if h1 else streams), "-t", "1",
                "-D", f"{measure_s:g}", "--warm-up-time", f"{warmup_s:g}", "-d", data.name,
                *(["--h1"] if h1 else []),
                *[arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")], url]
        done = subprocess.run(argv, capture_output=True, text=True,
                              timeout=warmup_s + measure_s + 60, check=False)
    return parse(done.stdout, measure_s, done.stderr)


_REQUESTS = re.compile(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored")
_TIME = re.compile(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)")


def parse(stdout: str, measure_s: float, stderr: str = "") -> H2loadResult:
    """The summary of one h2load run: `succeeded` as requests (a 2xx status), `failed` (a
    non-2xx status or no response; `errored` is part of it) as errors."""
    found = _REQUESTS.search(stdout)
    mean = _TIME.search(stdout)
    if not (found and mean):
        raise H2loadError(f"h2load printed no summary: {(stdout + stderr)[-800:]}")
    # "finished in" counts the warm-up too; the requests are the measured duration's.
    seconds = measure_s
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[mean.group(2)]
    return H2loadResult(int(found.group(2)), int(found.group(3)), round(seconds, 3),
                        round(float(mean.group(1)) * scale, 4))
