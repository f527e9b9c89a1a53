"""Rows per second of the `mlp` example on onnxruntime's CUDA provider against its CPU provider.

    python -m load_tests.gpu_rows [--model models/mlp/1/model.onnx]
        [--batch-sizes 1,16,64,256,1024,4096] [--seconds 3] [--device 0] [--cpu-threads 0]
        [--out load_tests/results/gpu_rows.json]

onnxruntime directly (no Ray, no HTTP), in one run, for each batch size:
  cpu          CPUExecutionProvider alone (--cpu-threads; 0: onnxruntime's default, every core);
  cuda         CUDAExecutionProvider, numpy in and out: the host-device copies included, as in a
               Vigil replica;
  cuda-bound   the same session with input and outputs kept on the GPU (IO binding): the ceiling.
Each runs a few warm-up batches, then as many as fit in --seconds (at least 10). Rows/s and
median latency per batch; the ratio is against the CPU at the same batch size. The CUDA outputs
are compared with the CPU's (max absolute difference of the probabilities; the CUDA provider may
use TF32 for Gemm). Prints a table, writes JSON.

Needs onnxruntime-gpu (vigil[gpu], or the Dockerfile.gpu image) and a GPU with its driver: where
onnxruntime has no CUDA provider, or its CUDA provider fails to start, it says so and exits 2.
The model is the example from `vigil examples build`; without it, the mlp alone is built into a
temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = Path("models/mlp/1/model.onnx")
DEFAULT_OUT = Path("load_tests/results/gpu_rows.json")
DEFAULT_BATCHES = (1, 16, 64, 256, 1024, 4096)
WARMUP_RUNS = 5
MIN_RUNS = 10
NO_CUDA = 2


def batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or any(not 1 <= n <= 1_000_000 for n in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes are 1 to 1,000,000: {text!r}")
    return sizes


def positive_seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"seconds must be in (0, 600]: {text!r}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the mlp's model.onnx")
    parser.add_argument("--batch-sizes", type=batch_sizes, default=DEFAULT_BATCHES,
                        help="comma-separated rows per run (default: %(default)s)")
    parser.add_argument("--seconds", type=positive_seconds, default=3.0,
                        help="timed seconds per provider and batch size")
    parser.add_argument("--device", type=int, default=0, choices=range(0, 65), metavar="N",
                        help="CUDA device ordinal")
    parser.add_argument("--cpu-threads", type=int, default=0, choices=range(0, 257), metavar="N",
                        help="intra-op threads of the CPU session (0: onnxruntime's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    return parser.parse_args(argv)


def cuda_missing(ort: Any) -> str | None:
    """Why this onnxruntime cannot run CUDA here, or None."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    installed = [d for d in ("onnxruntime", "onnxruntime-gpu") if _version(d)]
    return (
        f"onnxruntime here has no CUDA provider (installed: {installed or 'none'}; providers: "
        f"{ort.get_available_providers()}). Run this on a machine with an NVIDIA GPU and "
        "onnxruntime-gpu: pip install -e '.[gpu]' (never together with the cpu extra), or the "
        "Dockerfile.gpu image."
    )


def model_bytes(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    if path != DEFAULT_MODEL:
        raise SystemExit(f"no model at {path}")
    from vigil.tools.examples import _mlp  # the example, without the breast_cancer one's converters

    with tempfile.TemporaryDirectory() as tmp:
        print(f"{path} not found: building the mlp example in a temporary folder")
        return _mlp(Path(tmp), force=True).model_file.read_bytes()


def sessions(ort: Any, model: bytes, device: int, cpu_threads: int) -> tuple[Any, Any]:
    cpu_options = ort.SessionOptions()
    cpu_options.intra_op_num_threads = cpu_threads
    cpu = ort.InferenceSession(model, cpu_options, providers=["CPUExecutionProvider"])
    cuda = ort.InferenceSession(
        model, ort.SessionOptions(),
        providers=[("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"],
    )
    return cpu, cuda


def timed(run: Any, seconds: float) -> list[float]:
    for _ in range(WARMUP_RUNS):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < MIN_RUNS or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def bound_runner(ort: Any, session: Any, x: np.ndarray, device: int) -> Any:
    """A run with the input copied to the GPU once and the outputs left there."""
    binding = session.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", device))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", device)
    return lambda: session.run_with_iobinding(binding)


def row(provider: str, rows: int, times: list[float]) -> dict[str, Any]:
    return {
        "provider": provider, "batch_rows": rows, "runs": len(times),
        "rows_per_s": rows * len(times) / sum(times),
        "median_ms": statistics.median(times) * 1000, "min_ms": min(times) * 1000,
    }


def measure(ort: Any, cpu: Any, cuda: Any, sizes: tuple[int, ...], seconds: float,
            device: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    results: list[dict[str, Any]] = []
    for rows in sizes:
        x = rng.standard_normal((rows, 256)).astype(np.float32)
        feed = {"input": x}
        want = cpu.run(["probabilities"], feed)[0]
        got = cuda.run(["probabilities"], feed)[0]
        base = row("cpu", rows, timed(lambda feed=feed: cpu.run(None, feed), seconds))
        results.append(base)
        for name, run in (("cuda", lambda feed=feed: cuda.run(None, feed)),
                          ("cuda-bound", bound_runner(ort, cuda, x, device))):
            result = row(name, rows, timed(run, seconds))
            result["ratio_to_cpu"] = result["rows_per_s"] / base["rows_per_s"]
            result["max_abs_diff_vs_cpu"] = float(np.max(np.abs(got - want)))
            results.append(result)
        print(f"batch {rows}: done", flush=True)
    return results


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'provider':12s} {'rows':>6s} {'rows/s':>14s} {'median ms':>10s} {'x cpu':>8s}",
             "-" * 54]
    for r in results:
        ratio = f"{r['ratio_to_cpu']:.1f}x" if "ratio_to_cpu" in r else ""
        lines.append(f"{r['provider']:12s} {r['batch_rows']:6d} {r['rows_per_s']:14,.0f} "
                     f"{r['median_ms']:10.3f} {ratio:>8s}")
    return "\n".join(lines)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine(ort: Any, cuda: Any, device: int) -> dict[str, Any]:
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "onnxruntime": ort.__version__,
        "packages": {d: _version(d) for d in (
            "onnxruntime-gpu", "onnxruntime", "nvidia-cuda-runtime", "nvidia-cudnn-cu13",
            "nvidia-cublas", "numpy")},
        "cuda_device": device,
        "cuda_provider_options": cuda.get_provider_options().get("CUDAExecutionProvider"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    why = cuda_missing(ort)
    if why:
        print(f"gpu_rows: {why}", file=sys.stderr)
        return NO_CUDA
    cpu, cuda = sessions(ort, model_bytes(args.model), args.device, args.cpu_threads)
    if "CUDAExecutionProvider" not in cuda.get_providers():
        print("gpu_rows: onnxruntime has a CUDA provider but it failed to start (its log above "
              "says why: no GPU, no driver, or CUDA/cuDNN libraries it cannot find; the "
              "Dockerfile.gpu image puts them on LD_LIBRARY_PATH)", file=sys.stderr)
        return NO_CUDA
    results = measure(ort, cpu, cuda, args.batch_sizes, args.seconds, args.device)
    report = {"model": str(args.model), "seconds": args.seconds,
              "cpu_threads": args.cpu_threads, "rows": results,
              "machine": machine(ort, cuda, args.device)}
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
