"""The peers' one-row V2 JSON bodies, on a row whose probabilities are not saturated, and the
strict check of every server's answer against onnxruntime run in this process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from load_tests.onnx_models import BareModel

JSON_HEADERS = {"Content-Type": "application/json"}
# The largest probability of a row at most this, and the second largest at least SECOND_LEAST:
# an answer of 0.02/0.98 (or 0/1) would let a server that rounds or clips pass the check.
TOP_MOST = 0.9
SECOND_LEAST = 0.05
# Same onnxruntime version, same session options: answers should match to the bit; this leaves
# room only for a float32 -> decimal -> float32 round trip done differently.
ABS_TOLERANCE = 1e-6

_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


class NoRowFound(RuntimeError):
    """No candidate row, nor any point between two of them, has unsaturated probabilities."""


def unsaturated(probabilities: np.ndarray) -> bool:
    """One row's probabilities are informative: top <= TOP_MOST and runner-up >= SECOND_LEAST."""
    ordered = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    return bool(ordered[0] <= TOP_MOST and ordered[1] >= SECOND_LEAST)


def pick_row(
    probabilities: Callable[[np.ndarray], np.ndarray],
    features: int,
    seed: int = 20241127,
    candidates: int = 256,
) -> np.ndarray:
    """A [1, features] float32 row whose probabilities are not saturated: the first such
    standard-normal candidate (seeded), else a point on the segment between two candidates of
    different classes, found by bisection (for a monotone model such as a logistic regression
    this lands near its decision boundary, where the probabilities are close to even)."""
    rows = np.random.default_rng(seed).standard_normal((candidates, features), dtype=np.float32)
    probs = np.asarray(probabilities(rows))
    for i in range(candidates):
        if unsaturated(probs[i]):
            return rows[i : i + 1].copy()
    top = probs.argmax(axis=1)
    first = rows[0]
    others = np.flatnonzero(top != top[0])
    if others.size == 0:
        raise NoRowFound(f"all {candidates} candidates fall in class {int(top[0])}")
    a, b = first, rows[others[0]]
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        point = (a + np.float32(mid) * (b - a)).astype(np.float32)[None, :]
        if int(np.asarray(probabilities(point))[0].argmax()) == int(top[0]):
            lo = mid
        else:
            hi = mid
        if unsaturated(np.asarray(probabilities(point))[0]):
            return point
    raise NoRowFound("bisection between two classes found no unsaturated point")


@dataclass
class PeerPayload:
    """One model's request body (on disk, for wrk) and the outputs it must produce."""

    model: str
    body_path: Path
    row: np.ndarray = field(repr=False)
    expected: dict[str, tuple[str, np.ndarray]] = field(repr=False)  # name -> (datatype, value)

    @property
    def path(self) -> str:
        return f"/v2/models/{self.model}/infer"

    def body(self) -> bytes:
        return self.body_path.read_bytes()


def build_payload(model: BareModel, folder: Path) -> PeerPayload:
    """The V2 JSON body of one unsaturated row for `model` and onnxruntime's answer to it."""
    names = [n for n, _ in model.outputs]
    prob_index = names.index("probabilities") if "probabilities" in names else len(names) - 1

    def probabilities(rows: np.ndarray) -> np.ndarray:
        return model.session.run([names[prob_index]], {model.input_name: rows})[0]

    features = int(model.session.get_inputs()[0].shape[1])
    row = pick_row(probabilities, features)
    results = model.session.run(names, {model.input_name: row})
    expected = {name: (dt, r) for (name, dt), r in zip(model.outputs, results, strict=True)}
    body = orjson.dumps(
        {"inputs": [{"name": model.input_name, "shape": list(row.shape), "datatype": "FP32",
                     "data": row.ravel()}]},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )  # fmt: skip
    if not np.array_equal(
        np.asarray(orjson.loads(body)["inputs"][0]["data"], dtype=np.float32), row.ravel()
    ):
        raise ValueError("the JSON body does not carry the row's float32 values exactly")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{model.name}-peers.json"
    path.write_bytes(body)
    return PeerPayload(model.name, path, row, expected)


@dataclass(frozen=True)
class Verdict:
    """A server's answer to one payload: usable or not, why, and what differs in form."""

    ok: bool
    reason: str = ""
    envelope: str = ""  # how the V2 response was wrapped, when it was
    extra_keys: tuple[str, ...] = ()  # top-level keys beyond model_name/model_version/outputs
    max_abs_diff: float = 0.0
    exact: bool = False
    answer_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "reason": self.reason, "envelope": self.envelope,
            "extra_keys": list(self.extra_keys), "max_abs_diff": self.max_abs_diff,
            "exact": self.exact, "answer_bytes": self.answer_bytes,
        }  # fmt: skip


_PLAIN_KEYS = {"model_name", "model_version", "outputs"}


def check_answer(status: int, body: bytes, payload: PeerPayload) -> Verdict:
    """Strict: a 200 with a V2 JSON response whose outputs are exactly the expected names, each
    with the expected datatype and shape, integers equal and floats within ABS_TOLERANCE. The one
    form accepted besides a bare V2 object is a one-element JSON list around it (BentoML's batched
    APIs answer that way); it is reported as the envelope."""
    size = len(body)
    if status != 200:
        return Verdict(False, f"status {status}: {body[:200]!r}", answer_bytes=size)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Verdict(False, f"not JSON: {exc}: {body[:200]!r}", answer_bytes=size)
    envelope = ""
    if isinstance(doc, list) and len(doc) == 1 and isinstance(doc[0], dict):
        doc, envelope = doc[0], "one-element list"
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        return Verdict(False, f"no V2 'outputs' list: {body[:200]!r}", envelope, answer_bytes=size)
    extra = tuple(sorted(set(doc) - _PLAIN_KEYS))
    got: dict[str, dict[str, Any]] = {}
    for out in doc["outputs"]:
        if not isinstance(out, dict) or "name" not in out:
            return Verdict(False, f"malformed output {str(out)[:120]}", envelope, extra,
                           answer_bytes=size)  # fmt: skip
        if out["name"] in got:
            return Verdict(False, f"output {out['name']} twice", envelope, extra, answer_bytes=size)
        got[out["name"]] = out
    if set(got) != set(payload.expected):
        return Verdict(False, f"outputs {sorted(got)}, expected {sorted(payload.expected)}",
                       envelope, extra, answer_bytes=size)  # fmt: skip
    worst, exact = 0.0, True
    for name, (datatype, want) in payload.expected.items():
        out = got[name]
        if out.get("datatype") != datatype:
            return Verdict(False, f"{name}: datatype {out.get('datatype')}, expected {datatype}",
                           envelope, extra, answer_bytes=size)  # fmt: skip
        if list(out.get("shape") or []) != list(want.shape):
            return Verdict(False, f"{name}: shape {out.get('shape')}, expected {list(want.shape)}",
                           envelope, extra, answer_bytes=size)  # fmt: skip
        try:
            have = np.asarray(out["data"], dtype=_NUMPY[datatype]).reshape(want.shape)
        except (KeyError, ValueError, TypeError) as exc:
            return Verdict(False, f"{name}: data unreadable: {exc!r}", envelope, extra,
                           answer_bytes=size)  # fmt: skip
        if want.dtype.kind == "f":
            diff = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64))))
            worst, exact = max(worst, diff), exact and bool(np.array_equal(have, want))
            if not diff <= ABS_TOLERANCE:
                return Verdict(False, f"{name}: max |diff| {diff:.3g} > {ABS_TOLERANCE:g}",
                               envelope, extra, diff, answer_bytes=size)  # fmt: skip
        elif not np.array_equal(have, want):
            return Verdict(False, f"{name}: {have.ravel().tolist()} != {want.ravel().tolist()}",
                           envelope, extra, answer_bytes=size)  # fmt: skip
    return Verdict(True, "", envelope, extra, worst, exact, size)
