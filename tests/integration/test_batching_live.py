"""Batching on a live deployment: concurrent requests, live reconfigure, failure isolation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.conftest import wait_for


def _replica_states(vigil, samples: int = 40) -> dict[str, dict]:
    """Which replicas answered and with what batching knobs (HAProxy spreads the requests)."""
    seen: dict[str, dict] = {}
    for _ in range(samples):  # a new connection each time, so HAProxy may pick another replica
        doc = vigil.get("/v2/vigil/batching", headers={"connection": "close"}).json()
        seen[doc["replica"]] = doc["batching"]
    return seen


def test_concurrent_requests_each_get_their_own_rows(vigil):
    session = ort.InferenceSession(str(vigil.models_dir / "mlp" / "1" / "model.onnx"))
    rng = np.random.default_rng(7)
    requests = [rng.normal(size=(int(rng.integers(1, 9)), 256)).astype(np.float32) for _ in range(96)]

    def call(x: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}], "outputs": [{"name": "logits"}]}
        with httpx.Client(base_url=vigil.base_url, timeout=30, headers=vigil.auth) as c:
            doc = c.post("/v2/models/mlp/infer", json=body).json()
        return np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 10)

    with ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(call, requests))
    for x, got in zip(requests, results):
        (want,) = session.run(["logits"], {"input": x})
        # Stacked rows may take another kernel path than a lone row: equal to float32 rounding.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_serve_deploy_changes_batching_live_without_replacing_replicas(vigil):
    actors = vigil.replica_actor_ids()
    before = _replica_states(vigil)
    assert len(before) == 2 and all(s["max_batch_rows"] == 256 for s in before.values())
    try:
        vigil.deploy(vigil.with_user_config(max_batch_rows=32, batch_wait_timeout_s=0.0))
        after = wait_for(
            lambda: (s := _replica_states(vigil))
            and all(v["max_batch_rows"] == 32 for v in s.values())
            and s,
            60,
            "new batching knobs on every replica",
        )
        assert set(after) == set(before), "reconfigure replaced replicas"
        assert vigil.replica_actor_ids() == actors
        assert all(v["batch_wait_timeout_s"] == 0.0 for v in after.values())
    finally:
        vigil.deploy(vigil.config)
        wait_for(
            lambda: all(v["max_batch_rows"] == 256 for v in _replica_states(vigil).values()),
            60,
            "knobs restored",
        )


@pytest.mark.slow
def test_invalid_user_config_is_refused_and_the_old_knobs_stay(vigil):
    from ray import serve

    before = _replica_states(vigil)
    try:
        vigil.deploy(vigil.with_user_config(max_batch_rows=0))
        wait_for(
            lambda: serve.status().applications["vigil"].status in ("DEPLOY_FAILED", "UNHEALTHY")
            or "max_batch_rows" in serve.status().applications["vigil"].deployments["ModelServer"].message,
            60,
            "the bad user_config reported",
        )
        message = serve.status().applications["vigil"].deployments["ModelServer"].message
        assert "max_batch_rows" in message
        # The replicas that were serving keep serving with their old knobs.
        response = httpx.get(f"{vigil.base_url}/v2/health/ready", timeout=5)
        assert response.status_code == 200
    finally:
        vigil.deploy(vigil.config)
        wait_for(
            lambda: serve.status().applications["vigil"].status == "RUNNING"
            and all(v["max_batch_rows"] == 256 for v in _replica_states(vigil).values()),
            120,
            "recovered",
        )
    assert _replica_states(vigil)
    assert before
