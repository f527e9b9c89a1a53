"""The pure ground every floor stands on: numpy, yaml and pydantic only (no Ray, no web
framework, no onnxruntime), so `vigil tokens` and the monitor run where onnxruntime is absent."""
