"""What every HTTP route of both apps takes and answers, as OpenAPI 3.1 pieces (pure data).

vigil.adapters.openapi assembles the document from these and the routes the apps declare; a unit
test fails when a route has no entry here, or an entry names no route. Paths are as a client
calls them: the model server's app at /, the monitor's at /monitor (configs/serve.yaml's
route_prefix). Every route needs a bearer token with the scope its path needs (`SCOPES` names
them; `monitor` also grants `metrics`), except the health probes, the server metadata and this
document itself (scope "").
"""

from __future__ import annotations

from typing import Any

from vigil.core.actions import AliasAction
from vigil.core.audit import MAX_HISTORY_LIMIT
from vigil.core.prediction_messages import MAX_ID_LENGTH
from vigil.core.tensors import V2_TO_NUMPY

OPENAPI_PATH = "/v2/openapi.json"
MONITOR_PREFIX = "/monitor"
HEADER_LENGTH = "Inference-Header-Content-Length"
SCOPES = {
    "infer": "inference and model metadata",
    "feedback": "labels for served requests",
    "monitor": "the monitor's statistics and sampled rows, and the batching state",
    "metrics": "scraping the monitor's Prometheus metrics (also granted by monitor)",
    "admin": "the model repository: versions' records, aliases, history and changes",
}
JSON = "application/json"
BINARY = "application/octet-stream"

# Model and version names as the repository accepts them (vigil.core.repository.valid_name).
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ADMIN_ACTIONS = sorted({a.spec.route for a in AliasAction if a.spec.route is not None})

# The examples are the models `vigil examples build` makes; alias changes name another, so that
# a tool that tries the examples (a fuzzer) never moves a served model's aliases.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "model": {"type": "string", "pattern": NAME_PATTERN, "examples": ["breast_cancer", "mlp"]},
    "version": {"type": "string", "pattern": NAME_PATTERN, "examples": ["1"]},
    "action": {"type": "string", "enum": ADMIN_ACTIONS},
}
CHANGED_MODEL = {"type": "string", "pattern": NAME_PATTERN, "examples": ["my-model"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_OBJECT: dict[str, Any] = {"type": "object"}
_TENSOR_META: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": {"type": "string"}, "datatype": _ref("Datatype"),
                   "shape": {"type": "array", "items": {"type": "integer"}}},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What is wrong, for a person."}},
        "description": "Every refusal: {\"error\": \"...\"}; 400 bad input, 401/403 auth, 404 "
                       "unknown model or version, 413 too large, 503 not ready; a 500 is a bug.",
    },
    "Datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
    "RequestInput": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {
                    "type": "integer", "minimum": 0,
                    "description": "Bytes of this input in the binary part of the body (binary "
                                   "tensor data extension); then 'data' is left out."}},
            },
            "data": {"description": "The tensor's values, flat or nested, row-major."},
        },
    },
    "RequestOutput": {
        "type": "object", "additionalProperties": False, "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"type": "object",
                           "properties": {"binary_data": {"type": "boolean"}}},
        },
    },
    "InferenceRequest": {
        "type": "object", "additionalProperties": False, "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object",
                           "properties": {"binary_data_output": {"type": "boolean"}}},
            "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
            "outputs": {"type": "array", "minItems": 1, "items": _ref("RequestOutput")},
        },
    },
    "ResponseOutput": {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {**_TENSOR_META["properties"], "data": {}, "parameters": _OBJECT},
    },
    "InferenceResponse": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                       "id": {"type": "string"},
                       "outputs": {"type": "array", "items": _ref("ResponseOutput")}},
    },
    "ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "extensions": {"type": "array", "items": {"type": "string"}}},
    },
    "ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"},
                       "versions": {"type": "array", "items": {"type": "string"}},
                       "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": _TENSOR_META},
                       "outputs": {"type": "array", "items": _TENSOR_META},
                       "parameters": _OBJECT},
    },
    "ModelReady": {
        "type": "object", "required": ["name", "version", "ready"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "ready": {"type": "boolean"}},
    },
    "Labels": {
        "oneOf": [_ref("Label"), {"type": "array", "minItems": 1, "items": _ref("Label")}],
    },
    "Label": {
        "type": "object", "additionalProperties": False, "required": ["id", "label"],
        "properties": {"id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
                       "label": {"description": "The ground truth for that request."}},
    },
    "FeedbackAnswer": {
        "type": "object", "required": ["model", "counts", "labels"],
        "properties": {"model": {"type": "string"}, "counts": _OBJECT,
                       "labels": {"type": "array", "items": _OBJECT},
                       "error": {"type": "string"}},
    },
    "IndexRequest": {
        "type": "object", "additionalProperties": False,
        "properties": {"ready": {"type": "boolean",
                                 "description": "Only the versions served here."}},
    },
    "IndexRow": {
        "type": "object", "required": ["name", "version", "state", "reason"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "state": {"type": "string", "enum": ["READY", "UNAVAILABLE"]},
                       "reason": {"type": "string"},
                       "aliases": {"type": "array", "items": {"type": "string"}},
                       "faults": {"type": "array", "items": {"type": "string"}}},
    },
    "Change": {
        "type": "object", "additionalProperties": False,
        "properties": {
            "version": {"type": ["string", "integer"],
                        "description": "The version the change is about (promote, canary, "
                                       "shadow, rollout, load, retire), or that must hold the "
                                       "alias for the change to apply."},
            "weight": {"type": "number", "description": "The canary's share of requests."},
            "sticky_header": {"type": "string"},
            "reason": {"type": "string", "description": "For the audit log."},
            "force": {"type": "boolean"},
            "plan": {"type": "object", "description": "A rollout's plan (vigil.core.rollout)."},
            "parameters": _OBJECT,
        },
    },
    "ChangeResult": {"type": "object", "required": ["converged", "replicas", "behind", "faults"],
                     "properties": {"converged": {"type": "boolean"},
                                    "replicas": {}, "behind": {},
                                    "faults": {"type": "array", "items": _OBJECT}}},
    "Aliases": {"type": "object",
                "required": ["model", "aliases", "published", "serving", "broken", "faults"]},
    "History": {"type": "object", "required": ["model", "entries", "limit", "more"],
                "properties": {"entries": {"type": "array", "items": _OBJECT},
                               "limit": {"type": "integer"}, "more": {"type": "boolean"}}},
    "Batching": {"type": "object", "required": ["batching", "loading", "models"]},
    "MonitorStatus": {"type": "object", "required": ["settings", "versions"]},
    "Drift": _OBJECT,
    "WindowRows": {"type": "object", "required": ["model", "version", "window", "columns"]},
}

_STATUS_TEXT = {
    400: "Bad input: the message says what is wrong.",
    401: "No token, or not a valid one (WWW-Authenticate: Bearer).",
    403: "A valid token without the scope this route needs.",
    404: "Unknown model, version or route.",
    405: "The method is not allowed here.",
    408: "The body did not arrive in time.",
    409: "The request is valid but cannot be answered in this state.",
    413: "The body is too large.",
    429: "This client has too many requests in flight (Retry-After).",
    502: "The model failed on an accepted request, or answered what cannot be sent.",
    503: "The model, version or a dependency is not ready (Retry-After where known).",
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _STATUS_TEXT[s], "content": {JSON: {"schema": _ref("Error")}}}
            for s in statuses}


def _ok(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": {JSON: {"schema": _ref(schema)}}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_VERSION_QUERY = _query("version", {"type": "string", "pattern": NAME_PATTERN},
                        "The version (default: the model's newest with windows).")

_INFER: dict[str, Any] = {
    "summary": "Run the model (Open Inference Protocol).",
    "description": "A JSON body, or the binary tensor data extension: a JSON header of "
                   f"{HEADER_LENGTH} bytes followed by the tensors' bytes (inputs with "
                   "parameters.binary_data_size), sent as application/octet-stream.",
    "parameters": [
        {"name": HEADER_LENGTH, "in": "header", "required": False,
         "schema": {"type": "integer", "minimum": 0},
         "description": "Length of the JSON header of a binary body (binary tensor data "
                        "extension). Present in the answer when an output is binary."},
    ],
    "requestBody": {"required": True, "content": {
        JSON: {"schema": _ref("InferenceRequest")},
        BINARY: {"schema": {"type": "string", "format": "binary",
                            "contentMediaType": BINARY}},
    }},
    "responses": {
        "200": {"description": "The outputs; binary outputs follow a JSON header.",
                "headers": {HEADER_LENGTH: {"schema": {"type": "integer", "minimum": 0}}},
                "content": {JSON: {"schema": _ref("InferenceResponse")},
                            BINARY: {"schema": {"type": "string", "format": "binary"}}}},
        **_errors(400, 404, 408, 413, 429, 502, 503),
    },
}
_METADATA: dict[str, Any] = {"summary": "Model metadata: versions, platform, signature.",
                             "responses": {**_ok("ModelMetadata"), **_errors(404, 503)}}
_READY: dict[str, Any] = {"summary": "Whether the model (version) is served here.",
                          "responses": {**_ok("ModelReady"), **_errors(404, 503)}}

# (method, path) -> the OpenAPI operation, less its path parameters and security (from the route).
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v2/models/{model}/infer"): _INFER,
    ("POST", "/v2/models/{model}/versions/{version}/infer"): _INFER,
    ("GET", "/v2"): {"summary": "Server metadata.", "responses": _ok("ServerMetadata")},
    ("GET", OPENAPI_PATH): {"summary": "This document.",
                            "responses": {"200": {"description": "OpenAPI 3.1",
                                                  "content": {JSON: {"schema": _OBJECT}}}}},
    ("GET", "/v2/health/live"): {
        "summary": "Liveness.", "responses": {"200": {"description": "Live", "content": {
            JSON: {"schema": {"type": "object", "required": ["live"],
                              "properties": {"live": {"type": "boolean"}}}}}}}},
    ("GET", "/v2/health/ready"): {
        "summary": "Readiness.", "responses": {"200": {"description": "Ready", "content": {
            JSON: {"schema": {"type": "object", "required": ["ready"],
                              "properties": {"ready": {"type": "boolean"}}}}}}}},
    ("GET", "/v2/vigil/batching"): {
        "summary": "The live batching knobs, each version's batching and providers, the replica.",
        "responses": _ok("Batching")},
    ("GET", "/v2/models/{model}"): _METADATA,
    ("GET", "/v2/models/{model}/versions/{version}"): _METADATA,
    ("GET", "/v2/models/{model}/ready"): _READY,
    ("GET", "/v2/models/{model}/versions/{version}/ready"): _READY,
    ("POST", "/v2/models/{model}/feedback"): {
        "summary": "Ground-truth labels for served requests, by request id.",
        "parameters": [_query("overwrite", {"type": "string", "enum": ["true", "false"]},
                              "Replace a label already given for an id.")],
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Labels")}}},
        "responses": {
            **_ok("FeedbackAnswer", "Each label's outcome."),
            "409": {"description": "Some labels were second labels for their id (refused; the "
                                   "others kept).",
                    "content": {JSON: {"schema": _ref("FeedbackAnswer")}}},
            **_errors(400, 404, 413, 503)},
    },
    ("GET", "/v2/repository/models/{model}/versions/{version}"): {
        "summary": "A version's whole record: metadata, lineage, the gate's verdict.",
        "responses": {**_ok("ModelMetadata"), **_errors(400, 404, 409)}},
    ("POST", "/v2/repository/index"): {
        "summary": "The repository index (Triton's model repository extension).",
        "requestBody": {"required": False, "content": {JSON: {"schema": _ref("IndexRequest")}}},
        "responses": {"200": {"description": "Every version with its state.", "content": {
            JSON: {"schema": {"type": "array", "items": _ref("IndexRow")}}}},
            **_errors(400, 413)}},
    ("GET", "/v2/repository/models/{model}/aliases"): {
        "summary": "The model's aliases, what is served and what is broken.",
        "responses": {**_ok("Aliases"), **_errors(404, 409)}},
    ("GET", "/v2/repository/models/{model}/history"): {
        "summary": "The model's newest audit entries, oldest first.",
        "parameters": [_query("limit", {"type": "integer", "minimum": 1,
                                        "maximum": MAX_HISTORY_LIMIT}, "Entries (default 100).")],
        "responses": {**_ok("History"), **_errors(400)}},
    ("POST", "/v2/repository/models/{model}/{action}"): {
        "path_parameters": {"model": CHANGED_MODEL},
        "summary": "Change the model's aliases; answered once every replica serves it.",
        "requestBody": {"required": False, "content": {JSON: {"schema": _ref("Change")}}},
        "responses": {**_ok("ChangeResult"), **_errors(400, 404, 409, 413, 503)}},
    ("GET", f"{MONITOR_PREFIX}/metrics"): {
        "summary": "The monitor's Prometheus metrics.",
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}},
    ("GET", f"{MONITOR_PREFIX}/v1/status"): {
        "summary": "The monitor's settings and every version's window state.",
        "responses": _ok("MonitorStatus")},
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/drift"): {
        "summary": "The drift of the model's evaluated windows.",
        "parameters": [_VERSION_QUERY, _query(
            "windows", {"type": "integer", "minimum": 1, "maximum": 100_000},
            "The newest windows to return (default: all kept).")],
        "responses": {**_ok("Drift"), **_errors(400, 404, 409)}},
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/report"): {
        "summary": "Evidently's HTML drift report of the last closed window with rows.",
        "parameters": [_VERSION_QUERY],
        "responses": {"200": {"description": "HTML, gzip-encoded when accepted",
                              "content": {"text/html": {"schema": {"type": "string"}}}},
                      **_errors(400, 404, 409)}},
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/rows"): {
        "summary": "The sampled rows of the last closed window with rows, by column.",
        "parameters": [_VERSION_QUERY],
        "responses": {**_ok("WindowRows"), **_errors(400, 404, 409)}},
}

# The monitor's routes (another app: the model server cannot read them) and their scopes.
MONITOR_ROUTES: dict[tuple[str, str], str] = {
    ("GET", f"{MONITOR_PREFIX}/metrics"): "metrics",
    ("GET", f"{MONITOR_PREFIX}/v1/status"): "monitor",
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/drift"): "monitor",
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/report"): "monitor",
    ("GET", f"{MONITOR_PREFIX}/v1/models/{{model}}/rows"): "monitor",
}

