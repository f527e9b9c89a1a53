"""Bad input at scale (issue 25): schemathesis generates requests for every route of
GET /v2/openapi.json, with a valid token, and checks each answer: no 5xx, a status the document
declares, and a body that conforms to its declared schema. Prints a table, writes JSON.

    python -m load_tests.fuzz_api                      # an in-process server (no Ray), 1,000+ cases
    python -m load_tests.fuzz_api --url http://127.0.0.1:8000 --token $TOKEN --models breast_cancer,mlp

Against a live server, alias changes are generated for model names that do not exist (404
before any change: load_tests/fuzz_hooks.py), so a run never moves a served model's aliases.
Replica restarts are the caller's to check (tests/integration/test_fuzz_api.py compares Serve's
replica actors before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "load_tests" / "results" / "fuzz_api.json"
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_headers_conformance,response_schema_conformance")


@dataclass
class FuzzResult:
    url: str
    max_examples: int
    seed: int
    requests: int = 0  # every request schemathesis sent (the HAR's entries)
    operations: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    server_errors: int = 0  # answers 500..599
    failures: list[str] = field(default_factory=list)  # schemathesis' failure lines
    exit_code: int = 0
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and self.server_errors == 0 and self.requests > 0


def run(url: str, token: str, *, max_examples: int, seed: int, models: list[str],
        workers: int = 1, report_dir: Path | None = None, max_time_s: int | None = None,
        changes: bool = False) -> FuzzResult:
    """Run schemathesis against the document at `url` with `token`; what it found."""
    result = FuzzResult(url, max_examples, seed)
    with tempfile.TemporaryDirectory(prefix="vigil-fuzz-") as tmp:
        reports = (report_dir or Path(tmp)).resolve()
        reports.mkdir(parents=True, exist_ok=True)
        har = reports / "fuzz.har"
        command = [
            str(Path(sys.executable).with_name("schemathesis")), "run",
            f"{url.rstrip('/')}/v2/openapi.json", "--url", url.rstrip("/"),
            "-H", f"Authorization: Bearer {token}",
            "--checks", CHECKS, "--mode", "all", "--max-examples", str(max_examples),
            "--seed", str(seed), "--workers", str(workers), "--phases", "examples,coverage,fuzzing",
            "--request-timeout", "30", "--continue-on-failure", "--no-shrink",
            "--suppress-health-check", "all", "--output-truncate", "true",
            "--report", "har", "--report-har-path", str(har),
        ]
        if max_time_s is not None:
            command += ["--max-time", str(max_time_s)]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "load_tests.fuzz_hooks",
               "VIGIL_FUZZ_MODELS": ",".join(models),
               "VIGIL_FUZZ_CHANGES": "1" if changes else "0", "PYTHONPATH": str(ROOT),
               "NO_COLOR": "1", "COLUMNS": "160"}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                              cwd=reports)  # its .schemathesis cache goes there
        result.elapsed_s = round(time.perf_counter() - started, 1)
        result.exit_code = done.returncode
        output = done.stdout + done.stderr
        (reports / "schemathesis.txt").write_text(output)
        statuses: Counter[str] = Counter()
        operations = set()
        if har.exists():
            for entry in json.loads(har.read_text())["log"]["entries"]:
                statuses[str(entry["response"]["status"])] += 1
                operations.add((entry["request"]["method"],
                                entry["request"]["url"].split("?")[0]))
        result.requests = sum(statuses.values())
        result.statuses = dict(sorted(statuses.items()))
        result.server_errors = sum(n for s, n in statuses.items() if s.startswith("5"))
        result.operations = len(operations)
        result.failures = _failures(output)
        if done.returncode not in (0, 1):  # 1: failures found; anything else: it did not run
            result.failures.append(output[-4000:])
    return result


def _failures(output: str) -> list[str]:
    """The lines of schemathesis' FAILURES and ERRORS sections."""
    lines, inside = [], False
    for line in output.splitlines():
        if line.startswith("=") and line.rstrip("= ").lstrip("= "):
            inside = any(w in line for w in (" FAILURES ", " ERRORS "))
            continue
        if inside and line.strip():
            lines.append(line)
    return lines[:400]


def table(result: FuzzResult) -> str:
    lines = [
        f"schemathesis against {result.url} (seed {result.seed}, max {result.max_examples} "
        "examples per operation and mode)",
        f"{'requests':>10} {'5xx':>6} {'elapsed s':>10} {'exit':>5}  statuses",
        f"{result.requests:>10} {result.server_errors:>6} {result.elapsed_s:>10} "
        f"{result.exit_code:>5}  {result.statuses}",
        "PASS" if result.passed else "FAIL",
    ]
    return "\n".join(lines)


@contextmanager
def in_process_server() -> Iterator[tuple[str, str, list[str]]]:
    """The model server's and the monitor's apps (no Ray) over a repository of the examples and
    an identity model of many datatypes, served by uvicorn on 127.0.0.1: (url, token, models)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from load_tests.inprocess import server_app, tokens_for
    from monitoring.monitor import Monitor
    from serving.admin import Admin
    from serving.deployments import build_asgi_app
    from vigil.adapters.alias_board import BoardLink, _Board, board_key
    from monitoring.monitor import build_asgi_app as monitor_app
    from load_tests.procs import free_port
    from tests.graphs import identity_graph
    from vigil.core.http_api import MONITOR_PREFIX
    from vigil.core.repository import publish
    from vigil.core.tensors import TensorSpec
    from vigil.tools.examples import build_examples

    with tempfile.TemporaryDirectory(prefix="vigil-fuzz-repo-") as tmp:
        root = Path(tmp) / "models"
        build_examples(root)
        specs = [("f", "FP32", (-1, 2)), ("s", "BYTES", (-1,)), ("b", "BOOL", (-1,)),
                 ("h", "FP16", (-1,)), ("i", "INT8", (-1,))]
        publish(root, "ident", "1", identity_graph(specs).SerializeToString(),
                tuple(TensorSpec(n, t, s) for n, t, s in specs),
                tuple(TensorSpec(f"{n}_out", t, s) for n, t, s in specs))
        token = tokens_for(root, fuzz="infer,monitor,admin,feedback,metrics")["fuzz"]
        server, serving = server_app(root)
        monitor = Monitor({"model_repository": str(root), "outbox_path": str(Path(tmp) / "o.db"),
                           "tokens_file": str(root.parent / "tokens.yaml")})
        # The alias board's and the monitor's own code, called in process where Ray would
        # carry the calls (STAND-INs for their actor handles: no Ray in this process).
        board = _Board(alive=lambda replica: True)
        board.register(board_key(root), "replica-1")
        server.admin = Admin(server.models,
                             BoardLink(board_key(root), InProcessActor(FollowedBoard(board, server))),
                             server.settings.alias_apply_timeout_s)
        server.monitor_link = InProcessLink(InProcessActor(monitor))  # type: ignore[assignment]
        serving = build_asgi_app(server)
        app = Starlette(routes=[Mount(MONITOR_PREFIX, app=monitor_app(monitor)),
                                Mount("/", app=serving)])
        port = free_port()
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           lifespan="off"))
        thread = threading.Thread(target=uv.run, daemon=True)
        thread.start()
        while not uv.started:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", token, ["breast_cancer", "mlp", "ident"]
        finally:
            uv.should_exit = True
            thread.join(10)
            monitor._worker.shutdown(wait=True)
            monitor._report_worker.shutdown(wait=True)
            del server


class InProcessActor:
    """STAND-IN for a Ray actor or deployment handle: `handle.method.remote(...)` runs the
    object's own method on the caller's loop."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, method: str) -> Any:
        target = self.target

        class Remote:
            @staticmethod
            async def remote(*args: Any) -> Any:
                result = getattr(target, method)(*args)
                return await result if asyncio.iscoroutine(result) else result

        return Remote()


@dataclass
class FollowedBoard:
    """The board, with this process's one replica following it at once: a bump re-reads the
    repository and acks (the replicas' AliasFollower does that over Ray)."""

    board: Any
    server: Any

    def __getattr__(self, method: str) -> Any:
        return getattr(self.board, method)

    def bump(self, key: str) -> int:
        generation = int(self.board.bump(key))
        self.server.models.refresh()
        self.board.ack(key, "replica-1", generation)
        return generation


@dataclass
class InProcessLink:
    """What the feedback route asks of the replica's monitor link: the monitor's handle."""

    handle: InProcessActor

    def monitor_handle(self) -> InProcessActor:
        return self.handle

    def start(self) -> None:
        """Sampled rows stay in the replica's buffer (nothing flushes them here)."""

    def stop(self) -> None:
        """Nothing runs."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server (default: one in this process)")
    parser.add_argument("--token", default=os.environ.get("VIGIL_TOKEN"),
                        help="a token with every scope (default: $VIGIL_TOKEN)")
    parser.add_argument("--models", default="breast_cancer,mlp",
                        help="served models that generated requests name half the time")
    parser.add_argument("--max-examples", type=int, default=30,
                        help="examples per operation and mode (30: about 1,500 requests)")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--json", type=Path, default=RESULTS)
    parser.add_argument("--report-dir", type=Path,
                        help="keep schemathesis' output and HAR of every request here")
    args = parser.parse_args(argv)
    if args.url:
        if not args.token:
            parser.error("--token (or VIGIL_TOKEN) is needed with --url")
        result = run(args.url, args.token, max_examples=args.max_examples, seed=args.seed,
                     models=args.models.split(","), report_dir=args.report_dir)
    else:
        with in_process_server() as (url, token, models):
            result = run(url, token, max_examples=args.max_examples, seed=args.seed,
                         models=models, report_dir=args.report_dir, changes=True)
    print(table(result))
    for line in result.failures[:40]:
        print(line)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(result) | {"passed": result.passed}, indent=2))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
