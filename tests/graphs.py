"""Tiny hand-built ONNX graphs shared by the unit and integration tests.

Besides plain row-wise graphs, the class of models that must never be batched: graphs whose
answer for a row depends on the other rows of the run (a sum or a cumulative sum over the batch
axis), and a graph with a fixed batch of one. And a graph that runs as long as asked (a loop of
matrix products), for requests that are still running when their client goes away.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vigil.core.tensors import TensorSpec

OPSET = 17
IR_VERSION = 8

# V2 datatype -> ONNX element type.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _dim(d: int) -> int | str:
    return "N" if d == -1 else d


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _fp32(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def identity_graph(specs: list[tuple[str, str, tuple[int, ...]]]) -> onnx.ModelProto:
    """One Identity per (name, datatype, shape): input `name` -> output `name`_out."""
    nodes, inputs, outputs = [], [], []
    for name, datatype, shape in specs:
        dims = [_dim(d) for d in shape]
        inputs.append(helper.make_tensor_value_info(name, V2_TO_ONNX[datatype], dims))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", V2_TO_ONNX[datatype], dims))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _model(helper.make_graph(nodes, "identity", inputs, outputs))


def gather_graph(table: list[int]) -> onnx.ModelProto:
    """out[i] = table[idx[i]] over INT64 [-1]: an index outside the table fails at run time."""
    init = numpy_helper.from_array(np.array(table, np.int64), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N"])],
        initializer=[init],
    )
    return _model(graph)


def double_graph() -> onnx.ModelProto:
    """y = 2 * x over FP32 [-1, -1]: any row width, so requests of several widths can arrive."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "double",
        [_fp32("x", ["N", "W"])],
        [_fp32("y", ["N", "W"])],
        initializer=[two],
    )
    return _model(graph)


# ---------------------------------------------------------------- not row-independent

def reduce_sum_graph() -> onnx.ModelProto:
    """y[2] = sum of x[-1, 2] over the rows: one answer for the whole run."""
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
        "reduce_sum",
        [_fp32("x", ["N", 2])],
        [_fp32("y", [2])],
        initializer=[axes],
    )
    return _model(graph)


def cumsum_graph() -> onnx.ModelProto:
    """y[-1, 2] = running sum of x over the rows: row-shaped, but each row sees the rows above."""
    axis = numpy_helper.from_array(np.array(0, np.int64), "axis")
    graph = helper.make_graph(
        [helper.make_node("CumSum", ["x", "axis"], ["y"])],
        "cumsum",
        [_fp32("x", ["N", 2])],
        [_fp32("y", ["N", 2])],
        initializer=[axis],
    )
    return _model(graph)


def fixed_pair_graph() -> onnx.ModelProto:
    """y[1, 2] = 3 * x[1, 2]: a fixed first dimension of one."""
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "three"], ["y"])],
        "fixed_pair",
        [_fp32("x", [1, 2])],
        [_fp32("y", [1, 2])],
        initializer=[three],
    )
    return _model(graph)


# name -> (graph builder, inputs, outputs): models that must never share a run with another
# request, and none of them declares max_batch_rows.
COUPLED_MODELS = {
    "reduce_sum": (
        reduce_sum_graph,
        (TensorSpec("x", "FP32", (-1, 2)),),
        (TensorSpec("y", "FP32", (2,)),),
    ),
    "cumsum": (
        cumsum_graph,
        (TensorSpec("x", "FP32", (-1, 2)),),
        (TensorSpec("y", "FP32", (-1, 2)),),
    ),
    "fixed_pair": (
        fixed_pair_graph,
        (TensorSpec("x", "FP32", (1, 2)),),
        (TensorSpec("y", "FP32", (1, 2)),),
    ),
}


# ---------------------------------------------------------------- slow on request

SLOW_WIDTH = 512


def slow_graph() -> onnx.ModelProto:
    """y[-1, 512] = tanh(... tanh(x W) W ...) applied `iterations` (INT64 [1]) times: a run that
    takes as long as the request asks, without sleeping."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
            helper.make_node("Identity", ["cond"], ["cond_out"]),
        ],
        "step",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            _fp32("state", ["N", SLOW_WIDTH]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            _fp32("state_out", ["N", SLOW_WIDTH]),
        ],
    )
    scalar = numpy_helper.from_array(np.array([], np.int64), "scalar_shape")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["iterations", "scalar_shape"], ["trips"]),
            helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body),
        ],
        "slow",
        [_fp32("x", ["N", SLOW_WIDTH]),
         helper.make_tensor_value_info("iterations", TensorProto.INT64, [1])],
        [_fp32("y", ["N", SLOW_WIDTH])],
        initializer=[numpy_helper.from_array(weight, "w"), scalar],
    )
    return _model(graph)


SLOW_MODEL = (
    slow_graph,
    (TensorSpec("x", "FP32", (-1, SLOW_WIDTH)), TensorSpec("iterations", "INT64", (1,))),
    (TensorSpec("y", "FP32", (-1, SLOW_WIDTH)),),
)
