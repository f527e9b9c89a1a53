"""Request bodies for each scenario, the expected outputs, response checks and the in-process ceiling."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from load_tests.onnx_models import BareModel
from serving.protocol import HEADER_LENGTH
from vigil.core.tensors import V2_TO_NUMPY

JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Scenario:
    model: str
    payload: str  # "json" | "binary" (KServe binary tensor data extension)
    rows: int
    concurrency: int

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    def same_load(self) -> tuple[str, str, int, int]:
        return (self.model, self.payload, self.rows, self.concurrency)


@dataclass
class Payload:
    """One request body on disk (wrk reads it), its headers and the outputs it must produce."""

    body_path: Path
    headers: dict[str, str]
    expected: dict[str, np.ndarray] = field(repr=False)

    def body(self) -> bytes:
        return self.body_path.read_bytes()


class Payloads:
    """Bodies are built once per (model, payload, rows) from a seeded generator, so every server
    receives exactly the same bytes."""

    def __init__(self, models: dict[str, BareModel], folder: Path, seed: int = 20241127) -> None:
        self.models, self.folder = models, folder
        self.rng = np.random.default_rng(seed)
        self._cache: dict[tuple[str, str, int], Payload] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def features(self, model: str) -> int:
        return int(self.models[model].session.get_inputs()[0].shape[1])

    def get(self, scenario: Scenario) -> Payload:
        key = (scenario.model, scenario.payload, scenario.rows)
        if key not in self._cache:
            self._cache[key] = self._build(*key)
        return self._cache[key]

    def _build(self, model_name: str, payload: str, rows: int) -> Payload:
        model = self.models[model_name]
        data = self.rng.standard_normal((rows, self.features(model_name)), dtype=np.float32)
        results = model.session.run([n for n, _ in model.outputs], {model.input_name: data})
        expected = {name: r for (name, _), r in zip(model.outputs, results, strict=True)}
        spec = {"name": model.input_name, "shape": list(data.shape), "datatype": "FP32"}
        if payload == "json":
            body = orjson.dumps(
                {"inputs": [{**spec, "data": data.ravel()}]}, option=orjson.OPT_SERIALIZE_NUMPY
            )
            headers = {"Content-Type": JSON_TYPE}
        else:
            raw = data.astype("<f4").tobytes()
            header = orjson.dumps(
                {
                    "inputs": [{**spec, "parameters": {"binary_data_size": len(raw)}}],
                    "parameters": {"binary_data_output": True},
                }
            )
            body = header + raw
            headers = {
                "Content-Type": BINARY_TYPE,
                "Inference-Header-Content-Length": str(len(header)),
            }
        path = self.folder / f"{model_name}-{payload}-{rows}.body"
        path.write_bytes(body)
        return Payload(path, headers, expected)


def check_response(
    status: int, headers: dict[str, str], body: bytes, scenario: Scenario, payload: Payload
) -> tuple[bool, str]:
    """(usable, note). Not usable: not a 200, unparsable, or wrong output names/shapes; the note
    also reports values that differ from in-process onnxruntime and a binary request answered
    in JSON."""
    if status != 200:
        return False, f"status {status}: {body[:200]!r}"
    notes = []
    try:
        raw_length = headers.get(HEADER_LENGTH)
        if raw_length is None:
            doc, binary = orjson.loads(body), b""
            if scenario.payload == "binary":
                notes.append("binary_data_output asked, JSON answered")
        else:
            length = int(raw_length)
            doc, binary = orjson.loads(body[:length]), memoryview(body)[length:]
        got: dict[str, np.ndarray] = {}
        offset = 0
        for out in doc["outputs"]:
            dtype = V2_TO_NUMPY[out["datatype"]]
            if "data" in out:
                array = np.asarray(out["data"], dtype=dtype)
            else:
                size = out["parameters"]["binary_data_size"]
                array = np.frombuffer(binary[offset : offset + size], dtype=dtype.newbyteorder("<"))
                offset += size
            got[out["name"]] = array.reshape(out["shape"])
    except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
        return False, f"unparsable response: {exc!r}: {body[:200]!r}"
    for name, want in payload.expected.items():
        have = got.get(name)
        if have is None:
            return False, f"output {name} missing (got {sorted(got)})"
        if have.shape != want.shape:
            return False, f"output {name} has shape {list(have.shape)}, expected {list(want.shape)}"
        if want.dtype.kind == "f":
            if not np.allclose(have, want, rtol=1e-3, atol=1e-4):
                notes.append(f"{name}: max |diff| {float(np.max(np.abs(have - want))):.3g}")
        elif np.mean(have == want) < 0.99:
            notes.append(f"{name}: {int(np.sum(have != want))} values differ")
    return True, "; ".join(notes)


def inprocess_rows_per_s(model: BareModel, features: int, rows: int, seconds: float) -> dict:
    """onnxruntime in this process, no HTTP: repeated runs of one `rows`-row batch."""
    data = np.random.default_rng(1).standard_normal((rows, features), dtype=np.float32)
    names = [n for n, _ in model.outputs]
    feed = {model.input_name: data}
    for _ in range(3):
        model.session.run(names, feed)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or runs < 5:
        model.session.run(names, feed)
        runs += 1
    return {
        "rows_per_run": rows,
        "runs": runs,
        "seconds": round(elapsed, 3),
        "rows_s": rows * runs / elapsed,
        "ms_per_run": 1000 * elapsed / runs,
    }
