"""Vigil's serving side: ONNX models over the Open Inference Protocol on Ray Serve."""

import importlib.util as _importlib_util

if _importlib_util.find_spec("onnxruntime") is None:
    raise ImportError(
        "Vigil's serving package needs an onnxruntime build and none is installed. "
        "Install exactly one flavour: pip install 'vigil[cpu]' (onnxruntime) or "
        "pip install 'vigil[gpu]' (onnxruntime-gpu, CUDA); the two conflict."
    )
