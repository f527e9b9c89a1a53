"""The replica's request path in process (its real Starlette app over httpx's ASGI transport, real
onnxruntime sessions, a real tokens file; no Ray): which status and reason each failure gets,
what model metadata shows to whom, the errors of the routes Starlette dispatches, versions loaded
on demand, and requests accounted once, cancelled ones included."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from load_tests.inprocess import InProcessServer, run_client, server_app, tokens_for
from tests.graphs import SLOW_MODEL, gather_graph, identity_graph
from vigil.core import model_ops
from vigil.core.repository import publish
from vigil.core.tensors import TensorSpec

IDENT_IN = (TensorSpec("x", "FP32", (-1, 2)),)
IDENT_OUT = (TensorSpec("x_out", "FP32", (-1, 2)),)
LINEAGE = {"published_by": "ci-bot", "source_file": "/home/ci/work/ident.onnx",
           "training_data": {"path": "/data/private/train.parquet"}}


@pytest.fixture
def repo(tmp_path: Path, example_root: Path) -> Path:
    """breast_cancer/1, ident/1 (lets NaN through; its lineage names the publisher's files),
    gather/1 (fails on an index outside its table), slow/1."""
    root = tmp_path / "models"
    shutil.copytree(example_root / "breast_cancer", root / "breast_cancer")
    publish(root, "ident", "1", identity_graph([("x", "FP32", (-1, 2))]).SerializeToString(),
            IDENT_IN, IDENT_OUT, metadata={"task": "identity"}, lineage=LINEAGE)
    publish(root, "gather", "1", gather_graph([10, 20, 30]).SerializeToString(),
            (TensorSpec("idx", "INT64", (-1,)),), (TensorSpec("out", "INT64", (-1,)),))
    builder, inputs, outputs = SLOW_MODEL
    publish(root, "slow", "1", builder().SerializeToString(), inputs, outputs)
    return root


@pytest.fixture
def tokens(repo: Path) -> dict[str, str]:
    return tokens_for(repo, user="infer", operator="infer,admin")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _facts(server: InProcessServer) -> dict[str, list[int]]:
    """The status of every request the replica accounted, by model/version (its sample buffer,
    what the monitor's error ratios are computed from)."""
    assert server.samples is not None
    return {f"{b.model}/{b.version}": b.status.tolist() for b in server.samples.drain()}


def test_a_model_answering_nan_as_json_is_a_server_error_with_its_own_reason(repo, tokens):
    """NaN sent to a model that lets it through comes back NaN: as JSON that is 502 (the
    model's answer cannot travel, after the request was accepted), not the client's 400; the
    message still says how to get it as binary data."""
    server, app = server_app(repo)
    x = np.array([[np.nan, 1.0]], "<f4")
    head = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]})
    headers = {**_auth(tokens["user"]), "Inference-Header-Content-Length": str(len(head))}
    answer = run_client(app, lambda c: c.post("/v2/models/ident/infer", content=head + x.tobytes(),
                                              headers=headers))
    assert answer.status_code == 502
    assert answer.json()["error"].startswith("output 'x_out' holds NaN or Inf, which JSON cannot "
                                             "carry; ask for it as binary data")
    assert _facts(server) == {"ident/1": [502]}


def test_a_model_that_fails_to_run_is_a_502_and_bad_input_stays_a_400(repo, tokens):
    """An index outside gather's table passes every check of the request, then onnxruntime
    fails: 502 naming the model (before: 500, as if Vigil had a bug). A misspelt input is still
    the client's 400."""
    server, app = server_app(repo)

    async def go(client: httpx.AsyncClient) -> list[httpx.Response]:
        post = [{"name": "idx", "shape": [1], "datatype": "INT64", "data": [7]}]
        bad = [{"name": "index", "shape": [1], "datatype": "INT64", "data": [1]}]
        return [await client.post("/v2/models/gather/infer", json={"inputs": inputs},
                                  headers=_auth(tokens["user"])) for inputs in (post, bad)]

    failed, refused = run_client(app, go)
    assert failed.status_code == 502
    assert failed.json() == {"error": "model 'gather' version '1' failed to run on this request "
                                      "(onnxruntime InvalidArgument; the server log has the detail)"}
    assert refused.status_code == 400 and "has no inputs ['index']" in refused.json()["error"]
    assert _facts(server) == {"gather/1": [502, 400]}


def test_metadata_shows_a_client_what_it_needs_and_the_record_is_for_admin(repo, tokens):
    """Under scope infer, model metadata carries the signature and sha256, created,
    max_batch_rows and aliases, never the lineage (the publisher's paths, who published, the
    training data, the gate's verdict) nor free-form metadata; the whole record is
    GET /v2/repository/models/{m}/versions/{v}, scope admin (an infer token: 403)."""
    _, app = server_app(repo)

    async def go(client: httpx.AsyncClient) -> list[httpx.Response]:
        user, operator = _auth(tokens["user"]), _auth(tokens["operator"])
        return [await client.get("/v2/models/ident", headers=user),
                await client.get("/v2/models/ident/versions/1", headers=user),
                await client.get("/v2/repository/models/ident/versions/1", headers=user),
                await client.get("/v2/repository/models/ident/versions/1",
                                 headers=operator),
                await client.get("/v2/repository/models/ident/versions/9",
                                 headers=operator)]

    model, version, refused, record, unknown = run_client(app, go)
    assert model.json() == version.json()
    meta = version.json()
    assert set(meta) == {"name", "versions", "platform", "inputs", "outputs", "parameters"}
    assert set(meta["parameters"]) == {"sha256", "created", "max_batch_rows", "aliases"}
    assert meta["parameters"]["aliases"] == ["production"]
    assert "lineage" not in version.text and "/home/ci" not in version.text
    assert refused.status_code == 403
    full = record.json()
    assert full["parameters"] == {**meta["parameters"], "lineage": LINEAGE,
                                  "metadata": {"task": "identity"}}
    assert {k: v for k, v in full.items() if k != "parameters"} == {
        k: v for k, v in meta.items() if k != "parameters"}
    assert unknown.status_code == 404 and "has no version '9'" in unknown.json()["error"]


def test_errors_of_routes_starlette_dispatches_come_from_the_apps_handler(repo, tokens):
    """Metadata and ready raise InferenceError; the app's one handler answers {"error"} with its
    status: 404 unknown model or version, 503 for a model unloaded by an operator."""
    server, app = server_app(repo)
    model_ops.apply(repo, "ident", "unload", actor="t")
    server.models.refresh()

    async def go(client: httpx.AsyncClient) -> list[httpx.Response]:
        user = _auth(tokens["user"])
        return [await client.get(p, headers=user) for p in (
            "/v2/models/nope", "/v2/models/breast_cancer/versions/9/ready",
            "/v2/models/ident/ready")]

    unknown, no_version, unloaded = run_client(app, go)
    assert unknown.status_code == 404 and "not served here" in unknown.json()["error"]
    assert no_version.status_code == 404 and "no version '9'" in no_version.json()["error"]
    assert unloaded.status_code == 503 and "is unloaded" in unloaded.json()["error"]


def _old(root: Path, version: str) -> None:
    """ident/<version>, published a day ago: no longer recent, so loaded only when named."""
    proto = identity_graph([("x", "FP32", (-1, 2))])
    proto.doc_string = version
    publish(root, "ident", version, proto.SerializeToString(), IDENT_IN, IDENT_OUT,
            created=datetime.now(UTC) - timedelta(days=1))


def test_a_version_no_alias_points_at_loads_when_named_and_unloads_when_idle(repo, tokens):
    """ident/2 and /3, published long ago, with production on 1: not loaded at start. A request
    naming 2 loads it and is answered; with unaliased_idle_s 0 the next refresh unloads it (its
    session closed once drained), and naming it again loads it again. A retired version is 404,
    never loaded."""
    for v in ("2", "3"):
        _old(repo, v)
    model_ops.apply(repo, "ident", "retire", actor="t", version="3")
    server, app = server_app(repo, loading={"unaliased_idle_s": 0.0, "drain_timeout_s": 5.0})
    assert server.models.router.versions("ident") == ["1"]
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}

    def ask(version: str) -> httpx.Response:
        return run_client(app, lambda c: c.post(f"/v2/models/ident/versions/{version}/infer",
                                                json=body, headers=_auth(tokens["user"])))

    assert ask("2").json()["model_version"] == "2"
    two = server.models.router.resolve("ident", "2").target
    assert server.models.router.versions("ident") == ["1", "2"]
    assert server.models.refresh().released == ["ident/2"]
    assert server.models.wait_drained(10) and two.model.session is None
    index = run_client(app, lambda c: c.post("/v2/repository/index", json={},
                                              headers=_auth(tokens["operator"]))).json()
    row = next(r for r in index if (r["name"], r["version"]) == ("ident", "2"))
    assert row["state"] == "UNAVAILABLE"
    assert row["reason"] == ("no alias points at it: unloaded while idle, loaded when a request "
                             "names it")
    assert ask("2").status_code == 200 and server.models.router.versions("ident") == ["1", "2"]
    retired = ask("3")
    assert retired.status_code == 404 and "retired" in retired.json()["error"]


def test_a_cancelled_request_is_accounted_once_as_499_and_lets_its_version_go(repo, tokens):
    """A client that goes away while its request runs: the handler is cancelled, and the
    request still counts, as 499; the version it held is free to be drained."""
    server, app = server_app(repo)
    x = np.zeros((1, 512), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": x[0].tolist()},
                       {"name": "iterations", "shape": [1], "datatype": "INT64",
                        "data": [20000]}]}

    async def go(client: httpx.AsyncClient) -> None:
        task = asyncio.ensure_future(client.post("/v2/models/slow/infer", json=body,
                                                 headers=_auth(tokens["user"])))
        started = time.monotonic()
        served = server.models.router.resolve("slow").target
        while served.users == 0 and time.monotonic() - started < 10:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert served.users == 0

    run_client(app, go)
    assert _facts(server) == {"slow/1": [499]}


def test_a_shadow_that_cannot_take_productions_inputs_is_a_server_error(repo, tokens):
    """ident/2 takes INT32 where production (ident/1) takes FP32: as a shadow it refuses every
    copy. The client's request was accepted and answered (200); the shadow's refusal is the
    deployment's fault, counted 502 (shadow_refused), not a 400 that error ratios never see."""
    publish(repo, "ident", "2", identity_graph([("x", "INT32", (-1, 2))]).SerializeToString(),
            (TensorSpec("x", "INT32", (-1, 2)),), (TensorSpec("x_out", "INT32", (-1, 2)),))
    model_ops.apply(repo, "ident", "shadow", actor="t", version="2")
    server, app = server_app(repo)
    body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    answer = run_client(app, lambda c: c.post("/v2/models/ident/infer", json=body,
                                              headers=_auth(tokens["user"])))
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert _facts(server) == {"ident/1": [200], "ident/2": [502]}


def test_production_answers_a_share_of_the_canarys_requests_to_compare(repo, tokens):
    """ident/3 (a canary at weight 0.5, the identity as production is) answers; production
    (ident/1) answers the same inputs off the response path: every row agrees, counted for the
    canary's window, with no request of production's own."""
    publish(repo, "ident", "3", identity_graph([("x", "FP32", (-1, 2))]).SerializeToString(),
            (TensorSpec("x", "FP32", (-1, 2)),), (TensorSpec("x_out", "FP32", (-1, 2)),))
    model_ops.apply(repo, "ident", "promote", actor="t", version="1", force=True, reason="r")
    model_ops.apply(repo, "ident", "canary", actor="t", version="3", weight=0.5, force=True,
                    reason="r")
    server, app = server_app(repo)
    server._compare_draw = lambda: 0.0  # every canary answer is compared
    body = {"inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32",
                        "data": [1, 2, 3, 4, 5, 6]}]}

    async def go(client: httpx.AsyncClient) -> list[str]:
        versions = []
        for _ in range(20):
            r = await client.post("/v2/models/ident/infer", json=body,
                                  headers=_auth(tokens["user"]))
            versions.append(r.json()["model_version"])
        await asyncio.sleep(0.2)  # the background comparisons
        return versions

    versions = run_client(app, go)
    batches = {b.version: b for b in server.samples.drain()}
    canary_answers = versions.count("3")
    assert canary_answers > 0
    assert batches["3"].requests == canary_answers
    assert (batches["3"].agreeing_rows, batches["3"].compared_rows) == (
        3 * canary_answers, 3 * canary_answers)  # identity against identity: every row agrees
    production = batches.get("1")
    assert (production.requests if production else 0) == 20 - canary_answers  # not its requests
    server._compare_share = 0.0
    run_client(app, lambda c: c.post("/v2/models/ident/infer", json=body,
                                     headers=_auth(tokens["user"])))
    assert all(b.compared_rows == 0 for b in server.samples.drain())
