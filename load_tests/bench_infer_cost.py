"""Vigil's own cost per inference request, in process: breast_cancer one-row JSON through a
replica's ASGI app (token guard, fast path, handler, batcher, encoder, metrics, the monitor's
sample), called directly (no sockets, no Ray wrapper), one request at a time. Prints a table of
microseconds per request (wall and CPU) and writes JSON.

    python load_tests/bench_infer_cost.py --trees OLD_TREE NEW_TREE [--rounds 7] [--requests 4000]

Each round runs every tree in a fresh interpreter (PYTHONPATH set to the tree), the order
alternating from round to round; the table gives each tree's median and its ratio to the first
tree. This file imports nothing of the project at its top, so that it measures any tree,
including one from before the in-process seam (load_tests.inprocess) existed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROW = [14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.05, 0.05, 0.18, 0.06] * 3
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                               "data": ROW}]}).encode()


class LocalLink:
    """Stands in for the monitor link (which needs Ray): drains the sample buffer every second
    while requests come, as the real one does, and drops what it drained."""

    def __init__(self, samples: Any, predictions: Any = None) -> None:
        self.samples = samples
        self.predictions = predictions  # the records labels join to (trees with feedback)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            records = self.predictions.drain() if self.predictions is not None else []
            if not self.samples.drain() and not records:
                return

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def _server(models_dir: Path, tokens_file: Path, inline_below_s: float) -> Any:
    """A ModelServer of this interpreter's tree, without Ray's parts."""
    from serving import deployments
    from serving.admin import Admin
    from serving.model_set import ModelSet
    from serving.settings import ServerSettings

    settings = ServerSettings(model_repository=models_dir, tokens_file=tokens_file,
                              batching={"inline_below_s": inline_below_s})
    server = object.__new__(deployments.ModelServer)
    if hasattr(server, "_setup"):  # the in-process seam (load_tests.inprocess)
        server._setup(settings)
        server.models.refresh()
    else:  # before it: what __init__ set, the alias follower left out
        from concurrent.futures import ThreadPoolExecutor

        from serving.metrics import replica_metrics
        from serving.sampling import SampleBuffer
        from vigil.adapters.boot import Door

        server.settings, server.door = settings, Door.open(settings)
        server.batching, server._in_flight = settings.batching, 0
        server.models = ModelSet(models_dir, None, settings.runtime, settings.batching)
        server.models.refresh()
        server.metrics = replica_metrics()
        server._decoder = ThreadPoolExecutor(max_workers=2)
        s = settings.sampling
        server.samples = SampleBuffer(s.sample_rate, s.buffer_rows, s.buffer_requests,
                                      s.max_rows_per_request)
    server.admin = Admin(server.models, None, 30.0)
    server.monitor_link = LocalLink(server.samples, getattr(server, "predictions", None))
    return server


async def _requests(app: Any, token: str, count: int) -> None:
    headers = [(b"authorization", f"Bearer {token}".encode()),
               (b"content-type", b"application/json"),
               (b"content-length", str(len(BODY)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v2/models/breast_cancer/infer",
             "raw_path": b"/v2/models/breast_cancer/infer", "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 8000)}
    message = {"type": "http.request", "body": BODY, "more_body": False}
    statuses: list[int] = []

    async def receive() -> dict:
        return message

    async def send(event: dict) -> None:
        if event["type"] == "http.response.start":
            statuses.append(event["status"])

    for _ in range(count):
        await app(dict(scope), receive, send)
    if set(statuses) != {200}:
        raise SystemExit(f"answers other than 200: {sorted(set(statuses))}")


def worker(models_dir: Path, tokens_file: Path, token: str, count: int,
           inline_below_s: float) -> dict[str, float]:
    """Measure this interpreter's tree: warm up, then `count` requests."""
    from serving.deployments import build_asgi_app

    app = build_asgi_app(_server(models_dir, tokens_file, inline_below_s))

    async def main() -> dict[str, float]:
        await _requests(app, token, 500)
        # Marks for an instruction count that no other process disturbs: valgrind
        # --tool=callgrind --zero-before=os_getppid --dump-before=os_getpgrp counts the loop.
        os.getppid()
        wall, cpu = time.perf_counter(), time.process_time()
        await _requests(app, token, count)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        os.getpgrp()
        return {"wall_us": wall / count * 1e6, "cpu_us": cpu / count * 1e6}

    return asyncio.run(main())


def _prepare(work: Path, tree: Path) -> tuple[Path, Path, str]:
    """breast_cancer/1 (the examples) and a token with scope infer."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = ("import sys; from pathlib import Path; from vigil.tools.examples import build_examples;"
            "from vigil.core.tokens import create_token; root = Path(sys.argv[1]);"
            "build_examples(root); print(create_token(root.parent / 'tokens.yaml', 'bench', "
            "frozenset({'infer'})))")
    out = subprocess.run([sys.executable, "-c", code, str(work / "models")], env=env,
                         cwd=tree, check=True, capture_output=True, text=True).stdout
    return work / "models", work / "tokens.yaml", out.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=[Path.cwd()])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--json", type=Path, default=Path("bench_infer_cost.json"))
    parser.add_argument("--inline-below-s", type=float, default=0.0005,
                        help="batching.inline_below_s (the shipped default; under valgrind, "
                        "0.01 keeps the runs inline as they are at full speed)")
    parser.add_argument("--worker", nargs=3, metavar=("MODELS", "TOKENS", "TOKEN"))
    args = parser.parse_args()
    if args.worker:
        models, tokens, token = args.worker
        print(json.dumps(worker(Path(models), Path(tokens), token, args.requests,
                                args.inline_below_s)))
        return
    trees = [t.resolve() for t in args.trees]
    with tempfile.TemporaryDirectory() as work:
        models, tokens, token = _prepare(Path(work), trees[-1])
        runs: dict[Path, list[dict[str, float]]] = {t: [] for t in trees}
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                out = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--requests",
                     str(args.requests), "--inline-below-s", str(args.inline_below_s),
                     "--worker", str(models), str(tokens), token],
                    env={**os.environ, "PYTHONPATH": str(tree)}, cwd=tree, check=True,
                    capture_output=True, text=True).stdout
                runs[tree].append(json.loads(out.strip().splitlines()[-1]))
                print(f"round {r + 1} {tree}: {runs[tree][-1]}", flush=True)
    _report(trees, runs, args.json)


def _report(trees: list[Path], runs: dict[Path, list[dict[str, float]]], path: Path) -> None:
    """Median and fastest round of each tree (the fastest is the least disturbed by whatever
    else the machine runs), with the ratio of CPU medians to the first tree's."""
    stats = {t: {f"{f}_{k}": fn(r[k] for r in runs[t])
                 for k in ("wall_us", "cpu_us")
                 for f, fn in (("median", statistics.median), ("min", min))}
             for t in trees}
    base = stats[trees[0]]["median_cpu_us"]
    print(f"\n{'tree':<32} {'wall median':>11} {'cpu median':>10} {'cpu min':>8} {'cpu ratio':>9}")
    for t in trees:
        m = stats[t]
        print(f"{str(t):<32} {m['median_wall_us']:>11.1f} {m['median_cpu_us']:>10.1f} "
              f"{m['min_cpu_us']:>8.1f} {m['median_cpu_us'] / base:>9.3f}")
    path.write_text(json.dumps({"us_per_request": {str(t): m for t, m in stats.items()},
                                "runs": {str(t): r for t, r in runs.items()}}, indent=2))


if __name__ == "__main__":
    main()
