"""A BentoML service with one API per model on its V2 path (breast_cancer and mlp).

    BENCH_MODEL_REPOSITORY=... PEER_MAX_BATCH=64 \
        bentoml serve load_tests.peers.bentoml_service:OnnxService --host 127.0.0.1 --port 8126

Read at import: PEER_WORKERS (worker processes), PEER_MAX_BATCH (1: no batching; above: the APIs
are batchable with that max_batch_size) and PEER_MAX_LATENCY_MS (the batcher's latency budget).
The request is V2 JSON: its `inputs` list is the API's one parameter (list[dict]), so a batched
API gets every request's tensors in one list and each answer comes back as a one-element list.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np

from load_tests.peers.onnx_v2 import Model, decode, encode, open_model

WORKERS = int(os.environ.get("PEER_WORKERS", "2"))
MAX_BATCH = int(os.environ.get("PEER_MAX_BATCH", "1"))
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "1000"))
BATCHING = {"batchable": True, "max_batch_size": MAX_BATCH, "max_latency_ms": MAX_LATENCY_MS}


def _one(model: Model, inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return encode(model, model.run(decode(model, inputs)))


def _many(model: Model, tensors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each element is one request's single input tensor: stack, run once, split by request."""
    parts = [decode(model, [t]) for t in tensors]
    results = model.run(np.concatenate(parts))
    cuts = np.cumsum([len(p) for p in parts])[:-1]
    split = [np.split(r, cuts) for r in results]
    return [encode(model, [s[i] for s in split]) for i in range(len(parts))]


def _api(model: str) -> dict[str, Any]:
    return {"route": f"/v2/models/{model}/infer", **(BATCHING if MAX_BATCH > 1 else {})}


@bentoml.service(workers=WORKERS, threads=1, logging={"access": {"enabled": False}})
class OnnxService:
    def __init__(self) -> None:
        self.models = {name: open_model(name) for name in ("breast_cancer", "mlp")}

    if MAX_BATCH > 1:

        @bentoml.api(**_api("breast_cancer"))
        def breast_cancer(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return _many(self.models["breast_cancer"], inputs)

        @bentoml.api(**_api("mlp"))
        def mlp(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return _many(self.models["mlp"], inputs)

    else:

        @bentoml.api(**_api("breast_cancer"))
        def breast_cancer(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            return _one(self.models["breast_cancer"], inputs)

        @bentoml.api(**_api("mlp"))
        def mlp(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            return _one(self.models["mlp"], inputs)
