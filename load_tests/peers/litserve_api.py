"""A LitServe server for every model of the repository: one LitAPI per model on its V2 path.

    BENCH_MODEL_REPOSITORY=... PEER_PORT=8124 PEER_MAX_BATCH=64 PEER_BATCH_TIMEOUT_S=0.002 \
        python -m load_tests.peers.litserve_api

PEER_WORKERS inference processes per model (workers_per_device on the CPU), PEER_API_SERVERS
uvicorn processes; PEER_MAX_BATCH 1 turns batching off.
"""

from __future__ import annotations

import os

import litserve as ls
import numpy as np
from fastapi import HTTPException

from load_tests.peers.onnx_v2 import BadInput, Model, decode, encode, model_names, open_model


class OnnxAPI(ls.LitAPI):
    def __init__(self, name: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            api_path=f"/v2/models/{name}/infer",
        )
        self.model_name = name

    def setup(self, device: str) -> None:
        self.model: Model = open_model(self.model_name)

    def decode_request(self, request: dict) -> np.ndarray:
        try:
            return decode(self.model, request.get("inputs"))
        except BadInput as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc

    def batch(self, inputs: list[np.ndarray], context: list[dict]) -> np.ndarray:
        for ctx, rows in zip(context, inputs, strict=True):
            ctx["rows"] = len(rows)
        return np.concatenate(inputs)

    def predict(self, rows: np.ndarray) -> list[np.ndarray]:
        return self.model.run(rows)

    def unbatch(self, output: list[np.ndarray], context: list[dict]) -> list[list[np.ndarray]]:
        cuts = np.cumsum([ctx["rows"] for ctx in context])[:-1]
        per_output = [np.split(result, cuts) for result in output]
        return [list(parts) for parts in zip(*per_output, strict=True)]

    def encode_response(self, output: list[np.ndarray]) -> dict:
        return encode(self.model, output)


def main() -> None:
    max_batch = int(os.environ.get("PEER_MAX_BATCH", "1"))
    timeout = float(os.environ.get("PEER_BATCH_TIMEOUT_S", "0")) if max_batch > 1 else 0.0
    apis = [OnnxAPI(name, max_batch, timeout) for name in model_names()]
    server = ls.LitServer(
        apis,
        accelerator="cpu",
        devices=1,
        workers_per_device=int(os.environ.get("PEER_WORKERS", "2")),
        timeout=60,
    )
    server.run(
        host="127.0.0.1",
        port=int(os.environ["PEER_PORT"]),
        num_api_servers=int(os.environ.get("PEER_API_SERVERS", "2")),
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
