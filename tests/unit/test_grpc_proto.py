"""Vigil's gRPC service against the protocol as tritonclient ships it: every RPC and every field
of every message Vigil declares, by name, number, type and cardinality; and the committed
compiled descriptor against the proto it is compiled from."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from serving.proto import build, wire

triton = pytest.importorskip("tritonclient.grpc.service_pb2")


def _field(f: FieldDescriptor) -> tuple:
    return (f.name, f.number, f.type, f.is_repeated,
            f.message_type.full_name if f.message_type else None,
            f.containing_oneof.name if f.containing_oneof else None)


def _shape(d: Descriptor) -> dict:
    """A message as comparable data: its fields and its nested messages, recursively."""
    return {"fields": sorted(_field(f) for f in d.fields),
            "nested": {n.name: _shape(n) for n in d.nested_types}}


def test_every_message_matches_tritonclients_field_by_field():
    ours = wire.POOL.FindFileByName("open_inference.proto")
    theirs = triton.DESCRIPTOR
    assert ours.package == theirs.package == "inference"
    assert len(ours.message_types_by_name) == 21
    for name, message in ours.message_types_by_name.items():
        assert _shape(message) == _shape(theirs.message_types_by_name[name]), name


def test_every_rpc_matches_tritonclients_and_the_rest_are_listed():
    ours = {m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                     m.server_streaming) for m in wire.SERVICE.methods}
    service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = {m.name: (m.input_type.full_name, m.output_type.full_name, m.client_streaming,
                       m.server_streaming) for m in service.methods}
    assert wire.SERVICE.full_name == service.full_name == wire.SERVICE_NAME
    for name, signature in ours.items():
        assert theirs[name] == signature, name
    from serving.grpc_service import UNIMPLEMENTED_BY_DESIGN

    assert set(theirs) == set(ours) | set(UNIMPLEMENTED_BY_DESIGN)
    assert not set(ours) & set(UNIMPLEMENTED_BY_DESIGN)


def test_a_request_survives_both_ways_between_the_two_pools():
    ours = wire.ModelInferRequest(model_name="mlp", model_version="2", id="7")
    tensor = ours.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    tensor.parameters["p"].uint64_param = 2**63
    ours.raw_input_contents.append(b"\x00\x01")
    theirs = triton.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.inputs[0].contents.fp32_contents == [1.5, -2.0]
    assert theirs.inputs[0].parameters["p"].uint64_param == 2**63
    assert wire.ModelInferRequest.FromString(theirs.SerializeToString()) == ours


def test_the_committed_descriptor_is_the_compiled_proto():
    assert build.COMPILED.read_bytes() == build.compiled_now(), (
        "serving/proto/open_inference.binpb is stale: run `python -m serving.proto.build`")


def test_every_message_pickles_as_serves_grpc_proxy_sends_it():
    """Serve's gRPC proxy (HAProxy's fallback while no replica is up) pickles each request to
    the replica and each answer back: every message class is found by name in serving's wire."""
    import pickle

    from serving.proto import wire

    request = wire.ModelInferRequest(model_name="mlp", id="r1")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 2]).contents.fp32_contents.extend(
        [1.0, 2.0])
    assert pickle.loads(pickle.dumps(request)) == request
    for method in wire.SERVICE.methods:
        for descriptor in (method.input_type, method.output_type):
            empty = wire.message(descriptor.name)()
            assert pickle.loads(pickle.dumps(empty)) == empty
