"""GET /v2/openapi.json: the OpenAPI 3.1 document is valid, open to read, and equal to the routes
both apps declare (a route added without its description, or a description left without its
route, fails here), each with the scope its app's guard demands."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31

from load_tests.inprocess import run_client, server_app, tokens_for
from monitoring.monitor import Monitor, monitor_scope
from monitoring.monitor import build_asgi_app as monitor_app
from serving.deployments import serving_scope
from vigil.adapters.openapi import UndocumentedRoute, declared, document
from vigil.core import http_api


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, example_root: Path) -> Iterator[tuple]:
    """The model server's app and its document as a client gets it, without a token."""
    root = tmp_path_factory.mktemp("openapi") / "models"
    root.mkdir()
    tokens_for(root, user="infer")
    server, app = server_app(root)
    answer = run_client(app, lambda c: c.get(http_api.OPENAPI_PATH))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    yield app, answer.json()


@pytest.fixture(scope="module")
def monitor_routes(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> set:
    m = Monitor({"model_repository": str(example_root), "auth": "none",
                 "outbox_path": str(tmp_path_factory.mktemp("outbox") / "outbox.sqlite")})
    try:
        return set(declared(monitor_app(m).routes, http_api.MONITOR_PREFIX))
    finally:
        m._worker.shutdown(wait=True)
        m._report_worker.shutdown(wait=True)


def _operations(doc: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): op for path, item in doc["paths"].items()
            for method, op in item.items()}


def test_the_document_is_valid_openapi_3_1(served) -> None:
    _, doc = served
    jsonschema.Draft202012Validator(OPENAPI_31).validate(doc)
    assert doc["openapi"] == "3.1.0"
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_document_holds_exactly_the_routes_of_both_apps(served, monitor_routes) -> None:
    app, doc = served
    documented = set(_operations(doc))
    assert documented == set(declared(app.routes)) | monitor_routes
    assert documented == set(http_api.OPERATIONS)  # no description without its route
    assert set(http_api.MONITOR_ROUTES) == monitor_routes


def test_each_route_declares_the_scope_its_guard_demands(served) -> None:
    """Bearer auth on every route but the open ones (health, server metadata, this document),
    with the scope the app's ScopeRule gives its path."""
    _, doc = served
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for (method, path), op in _operations(doc).items():
        sample = path.replace("{model}", "m").replace("{version}", "1").replace("{action}",
                                                                                 "promote")
        if path.startswith(http_api.MONITOR_PREFIX):
            scope = monitor_scope(sample[len(http_api.MONITOR_PREFIX):])
        else:
            scope = serving_scope(sample)
        if scope == "":
            assert op["security"] == [], (method, path)
            assert "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearer": [scope]}], (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)
    assert serving_scope(http_api.OPENAPI_PATH) == ""  # read as the server metadata is


def test_inference_takes_json_and_the_binary_extension(served) -> None:
    _, doc = served
    infer = doc["paths"]["/v2/models/{model}/infer"]["post"]
    assert set(infer["requestBody"]["content"]) == {"application/json",
                                                    "application/octet-stream"}
    assert http_api.HEADER_LENGTH in {p["name"] for p in infer["parameters"]}
    assert set(infer["responses"]["200"]["content"]) == {"application/json",
                                                         "application/octet-stream"}


def test_a_route_without_a_description_is_refused() -> None:
    with pytest.raises(UndocumentedRoute, match="GET /v2/undocumented"):
        document([("GET", "/v2/undocumented", "")], "0")
