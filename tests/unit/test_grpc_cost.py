"""load_tests.grpc_cost measures what it says: each layer's server answers the bench's call (the
fixed answers shaped as the model's), and the no-transport costs run the real request paths."""

from __future__ import annotations

import shutil

import grpc
import pytest

from load_tests import grpc_cost
from load_tests.bench_grpc import INFER, MODEL, payloads
from serving.proto import wire


@pytest.fixture(scope="module")
def models(tmp_path_factory, example_root):
    # The session's built examples, not the checkout's models/ (a clean clone builds that later).
    models = tmp_path_factory.mktemp("cost") / "models"
    shutil.copytree(example_root / MODEL, models / MODEL)
    return models


@pytest.mark.parametrize("layer", grpc_cost.LAYERS)
@pytest.mark.parametrize("rows", [1, 1024])
def test_each_layer_answers_the_benchs_call_with_the_models_outputs(models, layer, rows):
    with grpc_cost.layer_target(layer, rows, models) as target, \
            grpc.insecure_channel(target) as channel:
        answer = channel.unary_unary(INFER, request_serializer=lambda b: b,
                                     response_deserializer=wire.ModelInferResponse.FromString)(
            payloads(rows)["grpc_raw"][1], timeout=10)
    assert [(o.name, list(o.shape)) for o in answer.outputs] == [
        ("label", [rows]), ("probabilities", [rows, 2])]
    assert [len(r) for r in answer.raw_output_contents] == [8 * rows, 8 * rows]


@pytest.mark.parametrize("rows", [1, 1024])
def test_the_no_transport_costs_run_both_request_paths(models, monkeypatch, rows):
    monkeypatch.setattr(grpc_cost, "DIRECT_CALLS", 20)
    costs = grpc_cost.direct_costs(models, rows)
    assert set(costs) == {"servicer, gRPC", "app, HTTP"}
    assert all(v > 0 for v in costs.values())

