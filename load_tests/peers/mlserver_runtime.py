"""An MLServer custom runtime: one onnxruntime session per model, named by model-settings.json.

MLServer imports it by `implementation: load_tests.peers.mlserver_runtime.OnnxRuntime`; the model
repository comes from BENCH_MODEL_REPOSITORY. Outputs are built here rather than by NumpyCodec's
encode_output, which reshapes a [N] output to [N, 1] (inject_batch_dimension).
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

from load_tests.peers.onnx_v2 import Model, open_model


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        self._onnx: Model = open_model(self.settings.name)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        model = self._onnx
        if len(payload.inputs) != 1 or payload.inputs[0].name != model.input_name:
            raise MLServerError(f"expected one input '{model.input_name}'", status_code=400)
        rows = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        if rows.ndim != 2 or rows.shape[1] != model.width or rows.dtype != np.float32:
            raise MLServerError(f"expected FP32 [N, {model.width}]", status_code=400)
        results = model.run(rows)
        return InferenceResponse(
            model_name=self.name,
            model_version=model.version,
            outputs=[
                ResponseOutput(name=name, datatype=dt, shape=list(r.shape), data=r.ravel().tolist())
                for (name, dt), r in zip(model.outputs, results, strict=True)
            ],
        )
