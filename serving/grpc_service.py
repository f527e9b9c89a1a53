"""The Open Inference Protocol's gRPC service (inference.GRPCInferenceService) on the model
server: one method per RPC, named as the RPC (the replica's gRPC server, serving.grpc_threads, and
Serve's gRPC proxy call them by name), over the same core as HTTP: auth, routing, validation,
batching, sampling, metrics and the audit.

HTTP statuses become gRPC codes (`GRPC_CODES`); requests are still accounted by the HTTP
status (a cancelled call is 499), so that one set of metrics, rules and alerts covers both."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import grpc

from serving import grpc_codec
from serving.feedback import REQUEST_ID_HEADER
from serving.intake import LARGE_BODY_BYTES, Received, check_parsed
from serving.outcome import Outcome
from serving.proto import wire
from serving.protocol import (
    SERVER_EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    BadRequest,
    InferenceError,
    NotReady,
    PayloadTooLarge,
    Reason,
)
from serving.runtime import OnnxModel

GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,  # the client's cap on requests in flight
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    502: grpc.StatusCode.INTERNAL,  # the model's fault: retrying the same request fails again
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

REQUEST_ID_METADATA = REQUEST_ID_HEADER.lower()  # a call's id when its request has none
OPEN = ""  # the scope of an RPC anyone may call (as vigil.adapters.web.OPEN)
SCOPES = {
    "ServerLive": OPEN, "ServerReady": OPEN, "ServerMetadata": OPEN,
    "ModelReady": "infer", "ModelMetadata": "infer", "ModelInfer": "infer",
    "RepositoryIndex": "admin", "RepositoryModelLoad": "admin", "RepositoryModelUnload": "admin",
}

# The RPCs of Triton's service that Vigil does not serve; gRPC answers them UNIMPLEMENTED.
UNIMPLEMENTED_BY_DESIGN = {
    "ModelStreamInfer": "bidirectional streaming: every request here is unary (HTTP's too)",
    "ModelConfig": "Triton's config.pbtxt; a version's model.yaml is read with ModelMetadata "
                   "and the admin record route",
    "ModelStatistics": "Prometheus metrics (ray_vigil_*) and the monitor carry these",
    "SystemSharedMemoryStatus": "shared memory needs the client on the replica's host",
    "SystemSharedMemoryRegister": "shared memory needs the client on the replica's host",
    "SystemSharedMemoryUnregister": "shared memory needs the client on the replica's host",
    "CudaSharedMemoryStatus": "CUDA IPC needs the client on the replica's GPU",
    "CudaSharedMemoryRegister": "CUDA IPC needs the client on the replica's GPU",
    "CudaSharedMemoryUnregister": "CUDA IPC needs the client on the replica's GPU",
    "TraceSetting": "Triton's tracer; Ray Serve's tracing applies",
    "LogSettings": "logging is set in the Serve config (logging_config)",
}
# Repository parameters tritonclient sends that mean nothing here (Vigil has no ensembles).
TRITON_ONLY_PARAMETERS = frozenset({"unload_dependents"})
_RAW_HINT = "; send large tensors as raw_input_contents"


def refuse(context: Any, status: int, message: str) -> None:
    """Answer a call with the gRPC code of HTTP `status` and the same message."""
    context.set_code(GRPC_CODES.get(status, grpc.StatusCode.UNKNOWN))
    context.set_details(message)


class GrpcInference:
    """The RPC methods of ModelServer (serving.deployments), which provides the core they use:
    models, settings, the gRPC guard, the admin, and the accounted inference steps."""

    models: Any
    settings: Any
    grpc_guard: Any
    clients: Any  # serving.clients.ClientCap, shared with HTTP
    admin: Any
    predictions: Any  # the prediction log labels join to; None when feedback is off
    _decoder: Any
    _background: set[asyncio.Task]

    # ------------------------------------------------------------------ health and metadata

    async def ServerLive(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        return wire.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        return wire.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        return wire.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION,
                                           extensions=SERVER_EXTENSIONS)

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """Ready or not (a model not served now is not ready); NOT_FOUND for an unknown one."""
        answer = wire.ModelReadyResponse(ready=False)
        if self._admitted(grpc_context, "ModelReady") is None:
            return answer
        router = self.models.router
        try:
            if request.version:
                router.resolve(request.name, request.version)
            else:
                router.production(request.name)
        except NotReady:
            return answer
        except InferenceError as exc:
            refuse(grpc_context, exc.status_code, str(exc))
            return answer
        return wire.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        if self._admitted(grpc_context, "ModelMetadata") is None:
            return wire.ModelMetadataResponse()
        try:
            doc = self.models.metadata(request.name, request.version or None)
        except InferenceError as exc:
            refuse(grpc_context, exc.status_code, str(exc))
            return wire.ModelMetadataResponse()
        return grpc_codec.model_metadata(doc)

    # ------------------------------------------------------------------ inference

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """Auth, then one accounted request: `protocol` grpc (typed contents) or grpc_raw."""
        admitted = self._admitted(grpc_context, "ModelInfer")
        if admitted is None:
            return wire.ModelInferResponse()
        metadata, actor = admitted
        outcome = Outcome(time.perf_counter(),
                          "grpc_raw" if request.raw_input_contents else "grpc")
        # The per-client cap, as HTTP's: the token's name, else the peer's address (or the
        # x-forwarded-for a trusted proxy set).
        client = self.clients.name(actor, peer_address(grpc_context.peer()),
                                   lambda: metadata.get("x-forwarded-for"))
        if not self.clients.admit(client):
            refuse(grpc_context, 429, self._client_refused(outcome))  # type: ignore[attr-defined]
            return wire.ModelInferResponse()
        try:
            return await self._accounted(  # type: ignore[attr-defined]
                outcome, self._grpc_answer(request, metadata, grpc_context, outcome))
        finally:
            self.clients.leave(client)

    async def _grpc_answer(self, request: Any, metadata: dict[str, str], grpc_context: Any,
                           outcome: Outcome) -> Any:
        try:
            response = await self._grpc_run(request, metadata, outcome)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, a bug as INTERNAL
            refuse(grpc_context, *self._failed(exc, outcome,  # type: ignore[attr-defined]
                                               request.model_name))
            return wire.ModelInferResponse()
        outcome.end(200, Reason.OK)
        # The shadow's copy and the canary's comparison, as HTTP runs them after the answer.
        for work, args in self._follow_ups(outcome):  # type: ignore[attr-defined]
            self._in_background(work(*args))
        return response

    async def _grpc_run(self, request: Any, metadata: dict[str, str], outcome: Outcome) -> Any:
        """Route (sticky key from the metadata), judge, decode, run and encode one request."""
        route = await self._route(  # type: ignore[attr-defined]
            request.model_name, request.model_version or None,
            lambda key: metadata.get(key.lower()), outcome)
        model = route.target.model
        received = await self._grpc_receive(request, model)
        wanted, results = await self._execute(  # type: ignore[attr-defined]
            route.target, received, outcome)
        request_id = received.parsed.id
        if self.predictions is not None:  # every answer can be labelled, as HTTP's: it gets an id
            request_id = outcome.request_id = (request_id or metadata.get(REQUEST_ID_METADATA)
                                               or str(uuid.uuid4()))
        return grpc_codec.encode(model.name, model.version, request_id,
                                 [(n, model.outputs[n].datatype, results[n]) for n, _ in wanted])

    async def _grpc_receive(self, request: Any, model: OnnxModel) -> Received:
        """The request judged by the size limits and the signature before its tensor data is
        decoded (off the event loop when large), as HTTP's intake judges a body: raw tensors
        up to max_body_bytes, typed contents up to max_json_body_bytes."""
        s = self.settings
        size = request.ByteSize()
        raw = bool(request.raw_input_contents)
        limit = s.max_body_bytes if raw else s.max_json_body_bytes
        if size > limit:
            what = "request" if raw else "request with typed contents"
            raise PayloadTooLarge(f"{what} of {size} bytes exceeds the limit of {limit}"
                                  f"{'' if raw else _RAW_HINT}")
        parsed = grpc_codec.describe(request)
        rows = check_parsed(model, parsed)

        def decode() -> Received:
            return Received(parsed, model.conform(grpc_codec.decode(parsed,
                                                                    s.max_bytes_elements)), rows)

        if size <= LARGE_BODY_BYTES:
            return decode()
        return await asyncio.get_running_loop().run_in_executor(self._decoder, decode)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` after the answer, holding the task until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ repository extension

    async def RepositoryIndex(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        if self._admitted(grpc_context, "RepositoryIndex") is None:
            return wire.RepositoryIndexResponse()
        rows = self.admin.index_rows(request.ready)
        return wire.RepositoryIndexResponse(models=[
            {k: row[k] for k in ("name", "version", "state", "reason")} for row in rows])

    async def RepositoryModelLoad(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        await self._repository_change("load", request, grpc_context)
        return wire.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        await self._repository_change("unload", request, grpc_context)
        return wire.RepositoryModelUnloadResponse()

    async def _repository_change(self, action: str, request: Any, grpc_context: Any) -> None:
        """The admin route's change (audited under the caller's token name, spread to every
        replica), its parameters as the route's body fields."""
        rpc = "RepositoryModelLoad" if action == "load" else "RepositoryModelUnload"
        admitted = self._admitted(grpc_context, rpc)
        if admitted is None:
            return
        try:
            body = {key: _parameter_value(key, value)
                    for key, value in request.parameters.items()
                    if key not in TRITON_ONLY_PARAMETERS}
            name = request.model_name
            change = self.admin.change_request(
                action, body, admitted[1], f"/inference.GRPCInferenceService/{rpc} {name}")
            await self.admin.apply(name, change)
        except Exception as exc:  # noqa: BLE001 - answered as the admin route answers it
            refuse(grpc_context, *self.admin.failure(exc))

    # ------------------------------------------------------------------ auth

    def _admitted(self, grpc_context: Any, rpc: str) -> tuple[dict[str, str], str] | None:
        """The call's metadata and who made it, when the caller may make this RPC; else None,
        the call refused (UNAUTHENTICATED or PERMISSION_DENIED, with HTTP's message)."""
        metadata = dict(grpc_context.invocation_metadata())
        admission = self.grpc_guard.admit(metadata, grpc_context.peer(), SCOPES[rpc])
        if not admission.decision.allowed:
            refuse(grpc_context, admission.decision.status, admission.decision.message)
            return None
        return metadata, admission.actor


def peer_address(peer: str) -> str:
    """The address in grpc's peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000'); any other
    kind ('unix:...') as it is."""
    kind, _, rest = peer.partition(":")
    return rest.rsplit(":", 1)[0].strip("[]") if kind in ("ipv4", "ipv6") else peer


def _parameter_value(key: str, value: Any) -> Any:
    """A ModelRepositoryParameter as the JSON value of the admin body field `key`."""
    kind = value.WhichOneof("parameter_choice")
    if kind is None or kind == "bytes_param":
        raise BadRequest(f"parameter '{key}' must be a bool, int64 or string value")
    return getattr(value, kind)
