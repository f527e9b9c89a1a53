"""Vigil's serving side: ONNX models over the Open Inference Protocol on Ray Serve.

Importing the package runs nothing: serving.runtime says what to install when onnxruntime is
missing, and modules that need no model (settings, protocol, codecs) import without it."""
