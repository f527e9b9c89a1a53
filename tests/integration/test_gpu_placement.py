"""configs/serve.gpu.yaml on a Ray node that declares two GPUs (this host has none): Ray places
the model-server replicas by their num_gpus, whole or shared, and the runtime, finding no CUDA,
serves on the CPU and says so, or refuses to start where the config requires a GPU.

The check runs in a process of its own (tests/gpu_placement_check.py): the integration session
already holds a Ray instance, started without GPUs, and a process has one Ray instance at most."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        "CUDAExecutionProvider" in ort.get_available_providers(),
        reason="checks the CPU fallback; this host's onnxruntime has CUDA",
    ),
]


@pytest.fixture(scope="module")
def placement(tmp_path_factory) -> dict:
    from vigil.tools.examples import build_examples

    models_dir = tmp_path_factory.mktemp("gpu-models")
    build_examples(models_dir)
    # Ray's Python proxy is disabled in the check, and HAProxy with it: its ports (from
    # tests/conftest.py) belong to the session's Ray instance.
    env = {**os.environ, "RAY_SERVE_ENABLE_HA_PROXY": "0"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.gpu_placement_check", str(models_dir)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,  # < pytest-timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the placement check ran past 280 s; its stderr: {exc.stderr!r:.4000}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _gpu_ids(phase: dict) -> list[str]:
    ids = []
    for replica in phase["replicas"].values():
        (gpu,) = replica["accelerators"]["GPU"]  # exactly one GPU id each, whole or shared
        ids.append(gpu)
    return ids


def test_as_shipped_a_replica_without_cuda_refuses_to_start(placement):
    refused = placement["refused"]
    assert refused["status"] == "DEPLOY_FAILED"
    assert "GpuUnavailable: runtime.require_gpu is set but onnxruntime offers no " \
           "CUDAExecutionProvider here" in refused["message"]


def test_one_gpu_per_replica_gives_each_its_own_gpu(placement):
    whole = placement["whole"]
    assert whole["status"] == "RUNNING"
    assert whole["required_resources"] == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert whole["gpus_total"] == 2.0 and whole["gpus_available"] == 0.0
    assert len(whole["replicas"]) == 2
    assert sorted(_gpu_ids(whole)) == ["0", "1"]


def test_half_a_gpu_per_replica_puts_two_replicas_on_each_gpu(placement):
    shared = placement["shared"]
    assert shared["status"] == "RUNNING"
    assert shared["required_resources"] == [{"CPU": 1.0, "GPU": 0.5}] * 4
    assert shared["gpus_total"] == 2.0 and shared["gpus_available"] == 0.0
    assert len(shared["replicas"]) == 4
    assert Counter(_gpu_ids(shared)) == {"0": 2, "1": 2}


def test_without_cuda_every_replica_serves_on_the_cpu_and_says_so(placement):
    phases = [placement["whole"], placement["shared"]]
    for phase in phases:
        for replica in phase["replicas"].values():
            assert replica["providers"] == {
                "breast_cancer/1": ["CPUExecutionProvider"],
                "mlp/1": ["CPUExecutionProvider"],
            }
    lines = placement["fallback_log_lines"]
    # One warning per replica process (the runtime warns once per process).
    assert len(lines) >= sum(len(p["replicas"]) for p in phases)
    assert all(line.endswith("; serving on the CPU") and "CUDA was asked for" in line
               for line in lines)
