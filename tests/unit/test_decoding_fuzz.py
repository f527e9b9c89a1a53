"""Hypothesis on what Vigil decodes from others (issue 25, "Bad input at scale"): the V2 request
codec, JSON and binary tensor data extension, raises nothing but InferenceError (a 4xx with its
message), and the replica-to-monitor messages are read or refused as UnreadableMessage, whatever
they hold."""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import codecs, tensor_data
from serving.protocol import InferenceError
from vigil.core.messages import SampleMessage, UnreadableMessage, read_message
from vigil.core.prediction_messages import PredictionMessage, read_predictions
from vigil.core.tensors import V2_TO_NUMPY

FUZZ = settings(max_examples=int(os.environ.get("VIGIL_HYPOTHESIS_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DATATYPES = list(V2_TO_NUMPY)

# JSON values as a client may send them: ints past every numpy type, floats at the edges.
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 3.5e38, 6.6e4, 5e-324, -0.0]),
    st.text(max_size=8),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=30)
shapes = st.one_of(
    st.lists(st.integers(min_value=0, max_value=4), max_size=4),
    st.lists(st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=2),
                       st.floats()), max_size=5),
    json_values,
)
datatypes = st.one_of(st.sampled_from(DATATYPES), json_values)


def _check(go: Any) -> Any:
    """The call's result, or None where it raised InferenceError with a 4xx; anything else
    raised fails the test."""
    try:
        return go()
    except InferenceError as exc:
        assert 400 <= exc.status_code < 500, exc
        assert str(exc)
        return None


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A request of the binary extension, mostly well formed: inputs whose binary_data_size
    usually matches shape x datatype, bytes that may not, and a header length that may lie."""
    inputs, chunks = [], []
    for i in range(draw(st.integers(min_value=1, max_value=3))):
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=3))
        count = math.prod(shape)
        if datatype == "BYTES":
            items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
            raw = b"".join(struct.pack("<I", len(b)) + b for b in items)
            if draw(st.booleans()):  # a lying length prefix or trailing bytes
                raw = draw(st.binary(max_size=40))
        else:
            size = count * V2_TO_NUMPY[datatype].itemsize
            raw = draw(st.binary(min_size=size, max_size=size)) if draw(
                st.integers(0, 3)) else draw(st.binary(max_size=40))
        declared = draw(st.one_of(st.just(len(raw)), json_values))
        entry: dict[str, Any] = {"name": f"in{i}", "datatype": datatype, "shape": shape,
                                 "parameters": {"binary_data_size": declared}}
        if draw(st.integers(0, 9)) == 0:
            entry["data"] = draw(json_values)
        inputs.append(entry)
        chunks.append(raw)
    doc: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        doc["outputs"] = draw(st.lists(st.fixed_dictionaries(
            {"name": st.text(max_size=4)},
            optional={"parameters": st.dictionaries(st.just("binary_data"), json_values)}),
            max_size=2))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(st.just("binary_data_output"), json_values))
    header = json.dumps(doc).encode()
    body = header + b"".join(chunks)
    length = draw(st.one_of(st.just(len(header)), st.none(), st.integers(-2, len(body) + 2)))
    return body, length


@FUZZ
@given(raw=st.one_of(st.none(), st.text(max_size=30)))
def test_the_header_length_header_is_a_number_or_a_400(raw) -> None:
    value = _check(lambda: codecs.parse_header_length(raw))
    assert value is None or (isinstance(value, int) and value >= 0)


@FUZZ
@given(body=st.binary(max_size=200), length=st.one_of(st.none(), st.integers(-5, 250)))
def test_any_bytes_decode_or_get_a_400(body: bytes, length: int | None) -> None:
    _check(lambda: codecs.decode_request(body, length))


@FUZZ
@given(doc=st.fixed_dictionaries(
    {"inputs": st.lists(st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=4), json_values), "datatype": datatypes,
         "shape": shapes, "data": json_values},
        optional={"parameters": json_values}), max_size=3)},
    optional={"id": json_values, "outputs": json_values, "parameters": json_values}))
def test_json_requests_decode_to_their_shape_or_get_a_400(doc: dict) -> None:
    decoded = _check(lambda: codecs.decode_request(json.dumps(doc).encode()))
    if decoded is not None:
        for spec in doc["inputs"]:
            array = decoded.inputs[spec["name"]]
            assert array.shape == tuple(spec["shape"])
            assert array.dtype == V2_TO_NUMPY[spec["datatype"]]


@FUZZ
@given(request=binary_requests(), max_bytes=st.one_of(st.none(), st.integers(0, 8)))
def test_binary_requests_decode_to_their_shape_or_get_a_4xx(request, max_bytes) -> None:
    body, length = request

    def decode() -> dict[str, np.ndarray]:
        parsed, binary = codecs.parse_request(body, length)
        return codecs.decode_inputs(parsed, binary, max_bytes)

    decoded = _check(decode)
    if decoded is not None:
        for declared in codecs.parse_request(body, length)[0].inputs:
            assert decoded[declared.name].shape == declared.shape


@FUZZ
@given(chunk=st.binary(max_size=64), datatype=st.sampled_from(DATATYPES),
       shape=st.lists(st.integers(min_value=0, max_value=5), max_size=3))
def test_tensor_bytes_of_any_length_decode_or_get_a_400(chunk: bytes, datatype: str,
                                                       shape: list[int]) -> None:
    """from_binary on its own: the codec checks sizes first, but the element decoder must not
    trust them either."""
    size = V2_TO_NUMPY[datatype].itemsize
    if datatype != "BYTES" and len(chunk) != math.prod(shape) * size:
        return  # codecs.check_binary_size refuses these first (tested above, end to end)
    array = _check(lambda: tensor_data.from_binary("x", memoryview(chunk), tuple(shape),
                                                   datatype))
    if array is not None:
        assert array.shape == tuple(shape)


# ------------------------------------------------------------------ the monitor's messages

arrays = st.one_of(
    st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=3),
    st.builds(np.asarray, st.lists(st.floats(allow_nan=True), max_size=4)),
    st.builds(np.asarray, st.lists(st.integers(-3, 500), max_size=4)),
    st.builds(lambda n: np.zeros((n, 2), dtype=np.float32), st.integers(0, 3)),
    st.builds(lambda n: np.zeros(n, dtype=object), st.integers(0, 3)),
    st.builds(lambda: np.float64(1.0)), st.builds(lambda: np.zeros((), dtype=np.int64)),
    st.builds(lambda n: np.full(n, -1.0), st.integers(0, 3)),
    st.builds(lambda n: np.ones(n, dtype=bool), st.integers(0, 3)),
)
tensors = st.one_of(st.none(), st.lists(arrays, max_size=2),
                    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), arrays,
                                    max_size=3))
counts = st.one_of(st.integers(-2, 5), st.booleans(), st.none(), st.floats(), st.text(max_size=2))
names = st.one_of(st.text(max_size=4), st.none(), st.integers())


@FUZZ
@given(model=names, version=names, inputs=tensors, outputs=tensors, latency=arrays,
       status=arrays, dropped_rows=counts, dropped_requests=counts, agreeing=counts,
       compared=counts, schema=st.one_of(st.just(2), counts))
def test_a_sample_message_is_read_or_refused_as_unreadable(
        model, version, inputs, outputs, latency, status, dropped_rows, dropped_requests,
        agreeing, compared, schema) -> None:
    message = SampleMessage(model, version, inputs, outputs, latency, status, dropped_rows,
                            dropped_requests, agreeing, compared, schema)
    try:
        read = read_message(message)
    except UnreadableMessage as exc:
        assert exc.reason in UnreadableMessage.REASONS
        assert exc.rows >= 0 and exc.requests >= 0
        return
    assert read.rows >= 0 and read.requests == read.status.size


@FUZZ
@given(model=names, version=names,
       ids=st.one_of(st.lists(st.text(max_size=3), max_size=3).map(tuple), json_values),
       answered=arrays, rows=arrays, outputs=tensors, dropped=counts,
       schema=st.one_of(st.just(1), counts))
def test_a_prediction_message_is_read_or_refused_as_unreadable(
        model, version, ids, answered, rows, outputs, dropped, schema) -> None:
    message = PredictionMessage(model, version, ids, answered, rows, outputs, dropped, schema)
    try:
        read_predictions(message)
    except UnreadableMessage as exc:
        assert exc.reason in UnreadableMessage.REASONS


@pytest.mark.parametrize("raw", [None, b"", {"model": "m"}, ["SampleMessage"], 1.5])
def test_what_is_not_a_message_is_refused_as_such(raw) -> None:
    for read in (read_message, read_predictions):
        with pytest.raises(UnreadableMessage) as caught:
            read(raw)
        assert caught.value.reason == "not_a_message"


# ------------------------------------------------------------------ what the monitor does with them

def _column(n: int) -> st.SearchStrategy[np.ndarray]:
    """One sampled tensor of `n` rows as a replica of this or another release might send it."""
    floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
    return st.one_of(
        st.builds(lambda v, w: np.full((n, w), v, np.float32), floats, st.integers(1, 31)),
        st.builds(lambda vs: np.resize(np.asarray(vs, np.float64), (n, 30)),
                  st.lists(st.floats(), min_size=1, max_size=5)),
        st.builds(lambda v: np.full((n, 30), v, np.int64), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: np.full(n, v, object), st.one_of(st.text(max_size=3), st.none())),
        st.builds(lambda: np.zeros((n, 30), bool)),
        st.builds(lambda: np.zeros((n, 2, 15), np.float16)),
    )


@st.composite
def cancer_messages(draw: st.DrawFn) -> SampleMessage:
    """breast_cancer/1's samples, read as well formed by read_message, with any values."""
    n = draw(st.integers(0, 60))
    requests = draw(st.integers(0, 5))
    return SampleMessage(
        "breast_cancer", "1",
        {"input": draw(_column(n))} if draw(st.integers(0, 5)) else {},
        draw(st.dictionaries(st.sampled_from(["label", "probabilities", "other"]), _column(n),
                             max_size=3)),
        np.asarray(draw(st.lists(st.floats(min_value=0), min_size=requests,
                                 max_size=requests)), np.float64),
        np.asarray(draw(st.lists(st.integers(-1, 999), min_size=requests, max_size=requests)),
                   np.int64),
        draw(st.integers(0, 3)), draw(st.integers(0, 3)), 0, draw(st.integers(0, 2)))


@pytest.fixture(scope="module")
def monitor_service(example_root):
    from monitoring.service import MonitorService
    from monitoring.settings import MonitorAppSettings, MonitorSettings

    return MonitorService(MonitorAppSettings(model_repository=example_root),
                          MonitorSettings(window={"rows": 100, "seconds": None}), now=0.0)


@settings(max_examples=int(os.environ.get("VIGIL_HYPOTHESIS_EXAMPLES", "150")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(messages=st.lists(cancer_messages(), min_size=1, max_size=4))
def test_the_monitor_takes_or_drops_any_readable_message_and_never_raises(
        monitor_service, messages) -> None:
    """Values a profile does not expect (NaN, Inf, strings, other shapes) are counted as dropped
    or evaluated; windows close and are judged; nothing raises into the replica's call."""
    before = monitor_service.versions[("breast_cancer", "1")].rows_received
    monitor_service.ingest(messages, now=1.0)
    state = monitor_service.versions[("breast_cancer", "1")]
    assert state.rows_received == before + sum(m.rows for m in messages)
