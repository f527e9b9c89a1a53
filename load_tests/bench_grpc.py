"""Vigil over gRPC against Vigil over HTTP, in one run on one cluster, with ratios: 1-row at c=1
and c=64, 1024-row raw tensors (HTTP's binary extension) at c=8; then the same gRPC rows through
Serve's gRPC proxy instead of HAProxy's direct ingress, to choose the ingress by measurement;
then MLServer's gRPC (which it serves by default), with and without its adaptive batching, on the
same models and bodies (its own virtual environment, as `make bench-peers` sets it up), and
Vigil's ratio to the better of the two.

    python -m load_tests.bench_grpc [--quick] [--no-mlserver] [--out load_tests/results/bench_grpc.json]

Both loaders are Python asyncio clients in this process (load_tests.grpc_load): on a small machine
the client shares the cores with the server, so absolute figures are the pair's, and the ratios
are what to read. The throughput rows (c=64, 1024-row c=8) are run again with h2load, a C client
for both protocols (load_tests.h2load), for Vigil and MLServer alike: a ratio that holds with both
clients is the servers', not the Python clients'. Exit status 0 whatever the numbers; 2 when a
server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from load_tests import peer_envs
from load_tests.grpc_load import LoadResult, grpc_load, http_load
from load_tests.peer_servers import MLServerPeer
from load_tests.targets import REPO_ROOT, RayCluster, RayPorts, StartError, vigil_config
from serving import grpc_threads
from serving.proto import wire
from vigil.tools.haproxy_header_timeout import ray_environment

PORTS = RayPorts(gcs=6395, dashboard=8271, client_server=6497, dashboard_agent=52470, http=8106,
                 haproxy_stats=8498, haproxy_metrics=9195, fallback_http=8594, fallback_grpc=9594,
                 ingress_http_min=32300, ingress_grpc_min=42300)
GRPC_PORT = 8107
MODEL = "breast_cancer"
FEATURES = 30
INFER = "/inference.GRPCInferenceService/ModelInfer"
METADATA = (("application", "vigil"),)
# (name, rows, concurrency, HTTP payloads, gRPC payloads)
SHAPES = [("1-row c=1", 1, 1), ("1-row c=64", 1, 64), ("1024-row c=8", 1024, 8)]


def payloads(rows: int) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """The same rows four ways: HTTP JSON and binary, gRPC typed and raw."""
    x = np.random.default_rng(7).normal(size=(rows, FEATURES)).astype(np.float32)
    head = {"inputs": [{"name": "input", "shape": [rows, FEATURES], "datatype": "FP32"}],
            "parameters": {"binary_data_output": True}}
    json_body = orjson.dumps({"inputs": [{**head["inputs"][0], "data": x.ravel().tolist()}]})
    head["inputs"][0]["parameters"] = {"binary_data_size": x.nbytes}
    header = orjson.dumps(head)
    typed = wire.ModelInferRequest(model_name=MODEL)
    tensor = typed.inputs.add(name="input", datatype="FP32", shape=[rows, FEATURES])
    raw = wire.ModelInferRequest()
    raw.CopyFrom(typed)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    raw.raw_input_contents.append(x.tobytes())
    return {
        "http_json": ("http", json_body, {"content-type": "application/json"}),
        "http_binary": ("http", header + x.tobytes(),
                        {"inference-header-content-length": str(len(header))}),
        "grpc_typed": ("grpc", typed.SerializeToString(), {}),
        "grpc_raw": ("grpc", raw.SerializeToString(), {}),
    }


MLSERVER_PORT = 8129  # HTTP; its gRPC is on +100 (peer_servers.MLServerPeer)


def measure(kind: str, body: bytes, headers: dict[str, str], concurrency: int, warmup_s: float,
            measure_s: float, grpc_target: str = f"127.0.0.1:{GRPC_PORT}") -> LoadResult:
    if kind == "grpc":
        return asyncio.run(grpc_load(grpc_target, INFER, body, METADATA,
                                     concurrency, warmup_s, measure_s))
    url = f"http://127.0.0.1:{PORTS.http}/v2/models/{MODEL}/infer"
    return asyncio.run(http_load(url, body, headers, concurrency, warmup_s, measure_s))


def interleaved(shapes: list[tuple[str, int, int]], variants: dict[str, list[str]], rounds: int,
                run_one: Callable[[tuple[str, bytes, dict[str, str]], int], Any],
                describe: Callable[[Any], str], client: str = "") -> dict[str, dict[str, Any]]:
    """Each shape's variants interleaved, `rounds` times (`run_one(payload, concurrency)` gives a
    result with `rps` and `to_dict()`); the median round's figures kept and printed."""
    out: dict[str, dict[str, Any]] = {}
    for shape, rows, concurrency in shapes:
        built = payloads(rows)
        results: dict[str, list[Any]] = {v: [] for v in variants[shape]}
        for _ in range(rounds):
            for variant in variants[shape]:
                results[variant].append(run_one(built[variant], concurrency))
        out[shape] = {}
        for variant, runs in results.items():
            chosen = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
            out[shape][variant] = {**chosen.to_dict(), "rounds_rps": [round(r.rps, 1)
                                                                       for r in runs]}
            print(f"  {client}{shape:<13} {variant:<12} {chosen.rps:8.1f} req/s  "
                  f"{describe(chosen)}", flush=True)
    return out


def run_rows(variants: dict[str, list[str]], warmup_s: float, measure_s: float,
             rounds: int, grpc_target: str = f"127.0.0.1:{GRPC_PORT}") -> dict[str, dict[str, Any]]:
    """Every shape from this process's Python clients (load_tests.grpc_load)."""
    return interleaved(
        SHAPES, variants, rounds,
        lambda payload, concurrency: measure(*payload, concurrency, warmup_s, measure_s,
                                             grpc_target),
        lambda r: f"p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms  errors {r.errors}")


C_CLIENT_SHAPES = [s for s in SHAPES if s[2] > 1]  # throughput rows; latency stays Python's


def c_client_rows(variants: dict[str, list[str]], grpc_target: str, headers: dict[str, str],
                  warmup_s: float, measure_s: float, rounds: int) -> dict[str, dict[str, Any]]:
    """The throughput rows again from h2load, a C client (load_tests.h2load): HTTP/1.1 with one
    connection per caller, gRPC on one connection with a stream per caller, as grpc.aio's
    channel does; each body first answered by a real gRPC call (h2load sees only HTTP 200)."""
    from load_tests import h2load

    def run_one(payload: tuple[str, bytes, dict[str, str]], concurrency: int) -> Any:
        kind, body, extra = payload
        if kind == "grpc":
            return h2load.run(f"http://{grpc_target}{INFER}", h2load.grpc_frame(body),
                              {**h2load.GRPC_HEADERS, **headers}, 1, concurrency,
                              warmup_s, measure_s)
        return h2load.run(f"http://127.0.0.1:{PORTS.http}/v2/models/{MODEL}/infer", body, extra,
                          concurrency, 1, warmup_s, measure_s, h1=True)

    return interleaved(C_CLIENT_SHAPES, variants, rounds, run_one,
                       lambda r: f"mean {r.mean_ms:7.2f} ms  errors {r.errors}", "h2load ")


# HAProxy's buffers and largest HTTP/2 frame, as the Makefile, the chart and the image set them.
SHIPPED_BUFFERS = {"RAY_SERVE_HAPROXY_TUNE_BUFSIZE": "65536",
                   "RAY_SERVE_HAPROXY_H2_MAX_FRAME_SIZE": "65536"}


def start(ha_proxy: bool, replica_server: str = "http1") -> RayCluster:
    """Vigil on a cluster of its own, behind HAProxy (direct ingress) or Serve's gRPC proxy;
    `replica_server` the replicas' gRPC server (serving.grpc_threads.SERVER_MODES)."""
    # HAProxy as `make serve` runs it: through vigil-haproxy, which (unless the replicas serve
    # HTTP/2 only) has it speak HTTP/1.1 to them.
    wrapper = {**ray_environment(10), **SHIPPED_BUFFERS} if ha_proxy else {}
    cluster = RayCluster("grpc-haproxy" if ha_proxy else "grpc-proxy", PORTS, ha_proxy=ha_proxy,
                         num_cpus=os.cpu_count() or 2,
                         extra_env={**wrapper, grpc_threads.SERVER_ENV: replica_server})
    try:
        cluster.start()
        config = vigil_config(PORTS, batching_enabled=True, sampling_enabled=True)
        config["grpc_options"]["port"] = GRPC_PORT
        cluster.deploy(config, "vigil-grpc.yaml")
        cluster.wait_running("vigil")
    except BaseException:
        cluster.stop()  # a cluster that started but could not serve: leave nothing behind
        raise
    return cluster


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for shape, figures in rows.items():
        base = "http_binary" if "1024" in shape else "http_json"
        for variant in ("grpc_raw", "grpc_typed"):
            if variant in figures and base in figures and figures[base]["rps"]:
                out[f"{shape} {variant}/{base}"] = round(figures[variant]["rps"]
                                                         / figures[base]["rps"], 3)
    return out


def check_grpc(target: str, metadata: tuple[tuple[str, str], ...] = ()) -> str | None:
    """None when the gRPC server at `target` (Vigil with the bench's metadata, or MLServer)
    answers the bench's raw 1-row and 1024-row requests with both outputs, else why not."""
    for rows in (1, 1024):
        if (why := _check_one(target, payloads(rows)["grpc_raw"][1], metadata)) is not None:
            return f"{rows}-row: {why}"
    return None


def _check_one(target: str, body: bytes, metadata: tuple[tuple[str, str], ...]) -> str | None:
    import grpc

    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(INFER, request_serializer=lambda b: b,
                                  response_deserializer=wire.ModelInferResponse.FromString)
        try:
            answer = rpc(body, timeout=30, metadata=metadata)
        except grpc.RpcError as exc:
            return f"{exc.code()}: {exc.details()}"
    names = sorted(o.name for o in answer.outputs)
    return None if names == ["label", "probabilities"] else f"unexpected outputs {names}"


def mlserver_rows(variants: dict[str, list[str]], warmup_s: float, measure_s: float,
                  rounds: int, work: Path) -> dict[str, Any]:
    """MLServer 1.7 (without and with adaptive batching), gRPC rows only; {label: rows} or
    {label: {"unavailable": why}}."""
    env = peer_envs.peer_envs()["mlserver"]
    why = peer_envs.ensure(env, lambda line: print(f"  {line}", flush=True))
    if why:
        return {"mlserver": {"unavailable": why}}
    out: dict[str, Any] = {}
    for batching in (False, True):
        server = MLServerPeer(env, MLSERVER_PORT, batching, REPO_ROOT / "models", work)
        try:
            print(f"{server.label}: starting", flush=True)
            server.start()
            target = f"127.0.0.1:{MLSERVER_PORT + 100}"
            if (why := check_grpc(target)) is not None:
                out[server.label] = {"unavailable": why}
                continue
            out[server.label] = run_rows(variants, warmup_s, measure_s, rounds, target)
            out[server.label]["h2load"] = c_client_rows(
                {shape: ["grpc_raw"] for shape, _, _ in C_CLIENT_SHAPES}, target, {},
                warmup_s, measure_s, rounds)
        except StartError as exc:
            out[server.label] = {"unavailable": str(exc)}
        finally:
            server.stop()
    return out


def peer_ratios(vigil: dict[str, dict[str, Any]], peers: dict[str, Any],
                client: str | None = None) -> dict[str, Any]:
    """Vigil's gRPC raw rows over the better MLServer's, shape by shape; `client` "h2load":
    the C client's rows of both."""
    out: dict[str, Any] = {}
    for shape, figures in vigil.items():
        best = max(((rows[client] if client else rows)[shape]["grpc_raw"]["rps"], label)
                   for label, rows in peers.items() if "unavailable" not in rows)
        if best[0]:
            out[f"{shape} vigil/{best[1]}"] = round(figures["grpc_raw"]["rps"] / best[0], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, one round")
    parser.add_argument("--mlserver", action=argparse.BooleanOptionalAction, default=True,
                        help="MLServer's gRPC rows too (installs its environment once)")
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "load_tests" / "results" / "bench_grpc.json")
    args = parser.parse_args(argv)
    warmup_s, measure_s, rounds = (1.0, 4.0, 1) if args.quick else (2.0, 6.0, 3)
    every = {s: (["http_json", "http_binary", "grpc_typed", "grpc_raw"] if rows == 1
                 else ["http_binary", "grpc_raw"]) for s, rows, _ in SHAPES}
    grpc_only = {s: (["grpc_raw"]) for s, _, _ in SHAPES}
    report: dict[str, Any] = {"model": MODEL, "warmup_s": warmup_s, "measure_s": measure_s,
                              "rounds": rounds, "cpus": os.cpu_count()}
    # The shipped setup (HAProxy speaking HTTP/1.1 to the replicas' loops, serving.grpc_http1);
    # HTTP/2 to grpc's threaded server in the replicas instead (the setup before it,
    # VIGIL_GRPC_SERVER=threads); Serve's gRPC proxy instead of HAProxy's direct ingress.
    for ingress, ha_proxy, server, variants in (
            ("haproxy_direct_ingress", True, "http1", every),
            ("threaded_replica_server", True, "threads", grpc_only),
            ("serve_grpc_proxy", False, "http1", grpc_only)):
        print(f"{ingress}: starting Ray and Vigil", flush=True)
        began = time.monotonic()
        try:
            cluster = start(ha_proxy, server)
        except StartError as exc:
            print(f"could not start: {exc}", file=sys.stderr)
            return 2
        try:
            print(f"  up in {time.monotonic() - began:.0f}s", flush=True)
            if (why := check_grpc(f"127.0.0.1:{GRPC_PORT}", METADATA)) is not None:
                print(f"{ingress}: gRPC does not answer the bench's bodies: {why}",
                      file=sys.stderr)
                return 2
            shipped = ingress == "haproxy_direct_ingress"
            report[ingress] = run_rows(variants, warmup_s, measure_s, rounds if shipped else 1)
            if ha_proxy:
                report[f"h2load_{ingress}" if not shipped else "h2load"] = c_client_rows(
                    every if shipped else grpc_only, f"127.0.0.1:{GRPC_PORT}", dict(METADATA),
                    warmup_s, measure_s, rounds if shipped else 1)
        finally:
            cluster.stop()
    report["ratios"] = ratios(report["haproxy_direct_ingress"])
    report["h2load_ratios"] = ratios(report["h2load"])
    report["ingress_ratios"] = {
        shape: round(report["haproxy_direct_ingress"][shape]["grpc_raw"]["rps"]
                     / report["serve_grpc_proxy"][shape]["grpc_raw"]["rps"], 3)
        for shape in report["serve_grpc_proxy"]
        if report["serve_grpc_proxy"][shape]["grpc_raw"]["rps"]}
    report["replica_server_ratios"] = {  # HTTP/1.1 to the loop over HTTP/2 to grpc's threads
        f"{shape} {client}": round(ours[shape]["grpc_raw"]["rps"] / theirs[shape]["grpc_raw"]["rps"], 3)
        for client, ours, theirs in (
            ("python", report["haproxy_direct_ingress"], report["threaded_replica_server"]),
            ("h2load", report["h2load"], report["h2load_threaded_replica_server"]))
        for shape in theirs if theirs[shape]["grpc_raw"]["rps"]}
    if args.mlserver:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vigil-bench-grpc-") as work:
            report["mlserver"] = mlserver_rows(grpc_only, warmup_s, measure_s, rounds, Path(work))
        if any("unavailable" not in rows for rows in report["mlserver"].values()):
            report["vigil_over_mlserver"] = peer_ratios(report["haproxy_direct_ingress"],
                                                        report["mlserver"])
            report["h2load_vigil_over_mlserver"] = peer_ratios(report["h2load"],
                                                               report["mlserver"], "h2load")
    print(json.dumps({"ratios": report["ratios"], "h2load_ratios": report["h2load_ratios"],
                      "h2load_vigil_over_mlserver": report.get("h2load_vigil_over_mlserver"),
                      "haproxy_over_serve_proxy": report["ingress_ratios"],
                      "http1_front_over_threaded_server": report["replica_server_ratios"],
                      "vigil_over_mlserver": report.get("vigil_over_mlserver")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
