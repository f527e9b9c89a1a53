"""The gRPC messages and service registration, from the compiled open_inference.proto.

They live in a descriptor pool of Vigil's own: tritonclient registers the same `inference.*` names in
protobuf's default pool, and both must load in one process (a client and a server in a test)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE_NAME = "inference.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
_compiled = descriptor_pb2.FileDescriptorSet.FromString(
    (Path(__file__).resolve().parent / "open_inference.binpb").read_bytes())
for _file in _compiled.file:
    POOL.Add(_file)
SERVICE = POOL.FindServiceByName(SERVICE_NAME)
RPCS = tuple(method.name for method in SERVICE.methods)


def message(name: str) -> Any:
    """The message class of `inference.<name>` (nested names with dots)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"inference.{name}"))


# Every message class is this module's, under its name, so that pickle finds it: Serve's gRPC
# proxy (HAProxy's fallback while no replica is up) pickles requests and answers to the replica.
for _name in POOL.FindFileByName(_compiled.file[-1].name).message_types_by_name:
    _class = message(_name)
    _class.__module__ = __name__
    globals().setdefault(_name, _class)


ServerLiveResponse = message("ServerLiveResponse")
ServerReadyResponse = message("ServerReadyResponse")
ModelReadyResponse = message("ModelReadyResponse")
ServerMetadataResponse = message("ServerMetadataResponse")
ModelMetadataRequest = message("ModelMetadataRequest")
ModelMetadataResponse = message("ModelMetadataResponse")
ModelInferRequest = message("ModelInferRequest")
ModelInferResponse = message("ModelInferResponse")
RepositoryIndexResponse = message("RepositoryIndexResponse")
RepositoryModelLoadResponse = message("RepositoryModelLoadResponse")
RepositoryModelUnloadResponse = message("RepositoryModelUnloadResponse")


def add_GRPCInferenceServiceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802
    """Register `servicer`'s methods, one per RPC and named as it, on a grpc server: what
    Serve's `grpc_servicer_functions` names (Serve swaps in its own handlers and keeps these
    deserializers)."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=message(method.input_type.name).FromString,
            response_serializer=message(method.output_type.name).SerializeToString,
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME,
                                                                         handlers),))
