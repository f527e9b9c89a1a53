"""OnnxModel: outputs equal a plain session, request validation, signature and sha256 checks,
provider selection with the CPU fallback (this machine has no CUDA provider)."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_breast_cancer

from serving import runtime
from serving.protocol import BadRequest
from vigil.core.tensors import TensorSpec
from vigil.core.repository import ModelVersion, RepositoryError, version_metadata
from serving.runtime import GpuUnavailable, OnnxModel, select_providers
from serving.settings import RuntimeSettings

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
cpu_only = pytest.mark.skipif(HAS_CUDA, reason="checks the CPU fallback; this host has CUDA")

# Rows 0, 1 (malignant) and 19, 20, 21 (benign) of sklearn's breast cancer set.
ROWS = [0, 1, 19, 20, 21]


@pytest.fixture(scope="module")
def cancer_rows() -> np.ndarray:
    return load_breast_cancer().data[ROWS].astype(np.float32)


def _plain(version: ModelVersion, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(version.model_file), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _fail(model: OnnxModel, inputs: dict[str, np.ndarray]) -> str:
    with pytest.raises(BadRequest) as info:
        model.validate(inputs)
    assert info.value.status_code == 400
    return str(info.value)


# ---------------------------------------------------------------- running


def test_breast_cancer_equals_a_plain_session(
    cancer: OnnxModel, example_versions: dict[str, ModelVersion], cancer_rows: np.ndarray
) -> None:
    inputs, rows = cancer.validate({"input": cancer_rows})
    assert rows == 5
    out = cancer.run(inputs)
    assert list(out) == ["label", "probabilities"]
    label, proba = _plain(example_versions["breast_cancer"], {"input": cancer_rows})
    np.testing.assert_array_equal(out["label"], label)
    np.testing.assert_array_equal(out["probabilities"], proba)
    assert out["label"].dtype == np.int64 and out["probabilities"].dtype == np.float32
    np.testing.assert_array_equal(out["label"], [0, 0, 1, 1, 1])  # the dataset's own targets


def test_mlp_equals_a_plain_session(
    mlp: OnnxModel, example_versions: dict[str, ModelVersion]
) -> None:
    x = np.random.default_rng(3).standard_normal((37, 256)).astype(np.float32)
    inputs, rows = mlp.validate({"input": x})
    assert rows == 37
    out = mlp.run(inputs)
    logits, proba = _plain(example_versions["mlp"], {"input": x})
    np.testing.assert_array_equal(out["logits"], logits)
    np.testing.assert_array_equal(out["probabilities"], proba)
    assert out["logits"].shape == (37, 10)


def test_fp64_input_is_cast_and_gives_the_fp32_answer(
    cancer: OnnxModel, cancer_rows: np.ndarray
) -> None:
    inputs, _ = cancer.validate({"input": cancer_rows.astype(np.float64)})
    assert inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(inputs["input"], cancer_rows)
    np.testing.assert_array_equal(
        cancer.run(inputs)["probabilities"],
        cancer.run({"input": cancer_rows})["probabilities"],
    )


def test_fp16_input_is_a_safe_cast(mlp: OnnxModel) -> None:
    x = np.array([[0.5, -2.0] * 128], np.float16)
    inputs, rows = mlp.validate({"input": x})
    assert rows == 1 and inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(inputs["input"], x.astype(np.float32))


def test_metadata(cancer: OnnxModel) -> None:
    """The V2 metadata the server and the CLI both build (vigil.core.repository.version_metadata):
    what a client needs; the lineage (publisher, paths, training data) only when full."""
    m = cancer.manifest
    client = version_metadata(m, ["1"], ["production"])
    assert client == {
        "name": "breast_cancer",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
        ],
        "parameters": {"sha256": m.sha256, "created": m.created, "max_batch_rows": 1024,
                       "aliases": ["production"]},
    }
    full = version_metadata(m, ["1"], ["production"], full=True)
    assert full["parameters"] == {**client["parameters"], "lineage": m.lineage,
                                  "metadata": m.metadata}
    assert cancer.output_names == ["label", "probabilities"]


def test_examples_declare_batching(cancer: OnnxModel, mlp: OnnxModel) -> None:
    assert (cancer.batchable, cancer.max_batch_rows) == (True, 1024)
    assert (mlp.batchable, mlp.max_batch_rows) == (True, 256)


# ---------------------------------------------------------------- validation


def test_missing_input(cancer: OnnxModel) -> None:
    assert _fail(cancer, {}) == "model 'breast_cancer' needs inputs ['input'] (missing)"


def test_unknown_input(cancer: OnnxModel) -> None:
    message = _fail(
        cancer, {"input": np.zeros((1, 30), np.float32), "extra": np.zeros(1, np.float32)}
    )
    assert message == "model 'breast_cancer' has no inputs ['extra']; it takes ['input']"


@pytest.mark.parametrize(
    ("dtype", "got"),
    [(np.int32, "INT32"), (np.int64, "INT64"), (np.uint32, "UINT32"), (np.bool_, None)],
)
def test_datatype_must_cast_safely(cancer: OnnxModel, dtype: type, got: str | None) -> None:
    x = np.ones((2, 30), dtype)
    if got is None:  # BOOL -> FP32 is safe: no value can change
        inputs, _ = cancer.validate({"input": x})
        assert inputs["input"].dtype == np.float32
        return
    assert _fail(cancer, {"input": x}) == (
        f"input 'input' is {got}; model 'breast_cancer' takes FP32"
    )


def test_bytes_input_to_a_numeric_model(cancer: OnnxModel) -> None:
    x = np.full((1, 30), b"1", dtype=object)
    assert _fail(cancer, {"input": x}) == "input 'input' is BYTES; model 'breast_cancer' takes FP32"


@pytest.mark.parametrize("shape", [(30,), (1, 1, 30), (2, 29), (2, 31), ()])
def test_shape_must_match(cancer: OnnxModel, shape: tuple[int, ...]) -> None:
    message = _fail(cancer, {"input": np.zeros(shape, np.float32)})
    assert message == (
        f"input 'input' has shape {list(shape)}; model 'breast_cancer' takes [-1, 30] "
        "(-1: any size)"
    )


def test_zero_rows(cancer: OnnxModel) -> None:
    assert _fail(cancer, {"input": np.zeros((0, 30), np.float32)}) == (
        "request has 0 rows along the batch axis"
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused_by_breast_cancer(cancer: OnnxModel, bad: float) -> None:
    x = np.zeros((3, 30), np.float32)
    x[2, 7] = bad
    assert _fail(cancer, {"input": x}) == (
        "input 'input' holds NaN or Inf, which model 'breast_cancer' forbids"
    )


@pytest.mark.parametrize("model_name", ["breast_cancer", "mlp"])  # forbids / allows non-finite
def test_fp64_overflowing_fp32_is_refused_with_that_reason(
    cancer: OnnxModel, mlp: OnnxModel, model_name: str
) -> None:
    model = cancer if model_name == "breast_cancer" else mlp
    x = np.zeros((2, 30 if model is cancer else 256), np.float64)
    x[1, 3] = -1e300  # finite as FP64, -Inf once cast to FP32
    assert _fail(model, {"input": x}) == "input 'input': value -1e+300 overflows FP32"
    x[1, 3] = np.inf  # Inf sent as Inf is no overflow: the model's own rule decides
    if model is cancer:
        assert "holds NaN or Inf" in _fail(model, {"input": x})
    else:
        assert np.isinf(model.validate({"input": x})[0]["input"][1, 3])


def test_non_finite_allowed_by_mlp(mlp: OnnxModel) -> None:
    x = np.zeros((2, 256), np.float32)
    x[0, 0], x[1, 1] = np.nan, np.inf
    inputs, rows = mlp.validate({"input": x})
    assert rows == 2
    assert np.isnan(mlp.run(inputs)["logits"][0]).all()


def test_select_outputs(cancer: OnnxModel) -> None:
    assert cancer.select_outputs(None) == ["label", "probabilities"]
    assert cancer.select_outputs(["probabilities"]) == ["probabilities"]
    with pytest.raises(BadRequest) as info:
        cancer.select_outputs(["probabilities", "score"])
    assert info.value.status_code == 400
    assert str(info.value) == (
        "model 'breast_cancer' has no outputs ['score']; it gives ['label', 'probabilities']"
    )


# ---------------------------------------------------------------- tiny graphs


def _spec(name: str, datatype: str, shape: tuple[int, ...]) -> TensorSpec:
    return TensorSpec(name, datatype, shape)


def test_inputs_disagreeing_on_rows(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.identity([("a", "FP32", (-1, 2)), ("b", "INT64", (-1,))]),
        (_spec("a", "FP32", (-1, 2)), _spec("b", "INT64", (-1,))),
        (_spec("a_out", "FP32", (-1, 2)), _spec("b_out", "INT64", (-1,))),
        max_batch_rows=8,
    )
    assert model.batchable is True
    message = _fail(model, {"a": np.zeros((2, 2), np.float32), "b": np.zeros(3, np.int64)})
    assert message == "inputs disagree on the batch axis: 'b' has 3 rows, others 2"
    _inputs, rows = model.validate({"a": np.zeros((2, 2), np.float32), "b": np.arange(2)})
    assert rows == 2


def test_small_datatypes_cast_and_run(load_tiny, graphs) -> None:
    specs = [("flag", "BOOL", (-1,)), ("small", "INT8", (-1,)), ("half", "FP16", (-1,)),
             ("text", "BYTES", (-1,))]  # fmt: skip
    model = load_tiny(
        graphs.identity(specs),
        tuple(_spec(*s) for s in specs),
        tuple(_spec(f"{n}_out", d, s) for n, d, s in specs),
        max_batch_rows=8,
    )
    text = np.empty(2, dtype=object)
    text[:] = [b"ab", b"c\xc3\xa9"]
    inputs, rows = model.validate(
        {
            "flag": np.array([True, False]),
            "small": np.array([True, False]),  # BOOL -> INT8 is safe
            "half": np.array([-1, 127], np.int8),  # INT8 -> FP16 is safe
            "text": text,
        }
    )
    assert rows == 2
    assert inputs["small"].dtype == np.int8 and inputs["half"].dtype == np.float16
    # onnxruntime reads a bytes element as its repr ("b'ab'"): validate hands it str.
    assert inputs["text"].tolist() == ["ab", "cé"]
    out = model.run(inputs)
    np.testing.assert_array_equal(out["flag_out"], [True, False])
    np.testing.assert_array_equal(out["small_out"], np.array([1, 0], np.int8))
    np.testing.assert_array_equal(out["half_out"], np.array([-1.0, 127.0], np.float16))
    assert out["half_out"].dtype == np.float16
    assert list(out["text_out"]) == ["ab", "cé"]  # onnxruntime hands strings back as str

    assert _fail(model, {**inputs, "small": np.array([1, 2], np.int16)}) == (
        "input 'small' is INT16; model 'tiny' takes INT8"
    )
    assert _fail(model, {**inputs, "half": np.array([1, 2], np.float32)}) == (
        "input 'half' is FP32; model 'tiny' takes FP16"
    )
    assert _fail(model, {**inputs, "flag": np.array([1, 0], np.uint8)}) == (
        "input 'flag' is UINT8; model 'tiny' takes BOOL"
    )
    assert _fail(model, {**inputs, "text": np.array([1.0, 2.0])}) == (
        "input 'text' is FP64; model 'tiny' takes BYTES"
    )
    latin1 = np.empty(2, dtype=object)
    latin1[:] = [b"ok", b"caf\xe9"]
    assert _fail(model, {**inputs, "text": latin1}) == (
        "input 'text' holds bytes that are not UTF-8 text"
    )


def test_fixed_first_dim_is_not_batchable(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.identity([("x", "FP32", (2, 3))]),
        (_spec("x", "FP32", (2, 3)),),
        (_spec("x_out", "FP32", (2, 3)),),
    )
    assert model.batchable is False
    inputs, rows = model.validate({"x": np.ones((2, 3), np.float32)})
    assert rows == 1  # one request, not two stackable rows
    np.testing.assert_array_equal(model.run(inputs)["x_out"], np.ones((2, 3), np.float32))
    assert _fail(model, {"x": np.ones((4, 3), np.float32)}) == (
        "input 'x' has shape [4, 3]; model 'tiny' takes [2, 3] (-1: any size)"
    )


def test_a_rowwise_signature_is_batched_only_when_declared(load_tiny, graphs) -> None:
    specs = ((_spec("x", "FP32", (-1, 3)),), (_spec("x_out", "FP32", (-1, 3)),))
    graph = graphs.identity([("x", "FP32", (-1, 3))])
    undeclared = load_tiny(graph, *specs)
    assert (undeclared.batchable, undeclared.max_batch_rows) == (False, 0)
    declared = load_tiny(graph, *specs, version="2", max_batch_rows=32)
    assert (declared.batchable, declared.max_batch_rows) == (True, 32)


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        (
            (_spec("y", "FP32", (-1, 3)),),
            (_spec("x_out", "FP32", (-1, 3)),),
            "tiny/1: model.yaml inputs ['y'] differ from the ONNX graph's ['x']",
        ),
        (
            (_spec("x", "FP32", (-1, 3)),),
            (_spec("x_out", "FP32", (-1, 3)), _spec("extra", "FP32", (-1,))),
            "tiny/1: model.yaml outputs ['extra', 'x_out'] differ from the ONNX graph's ['x_out']",
        ),
        (
            (_spec("x", "FP64", (-1, 3)),),
            (_spec("x_out", "FP32", (-1, 3)),),
            (
                "tiny/1: input 'x' is tensor(float) ['N', 3] in the graph but FP64 [-1, 3] in "
                "model.yaml"
            ),
        ),
        (
            (_spec("x", "FP32", (-1,)),),
            (_spec("x_out", "FP32", (-1, 3)),),
            "tiny/1: input 'x' is tensor(float) ['N', 3] in the graph but FP32 [-1] in model.yaml",
        ),
        (
            (_spec("x", "FP32", (-1, 4)),),
            (_spec("x_out", "FP32", (-1, 3)),),
            (
                "tiny/1: input 'x' is tensor(float) ['N', 3] in the graph but FP32 [-1, 4] in "
                "model.yaml"
            ),
        ),
        (
            (_spec("x", "FP32", (-1, 3)),),
            (_spec("x_out", "FP32", (-1, -1)),),
            (
                "tiny/1: output 'x_out' is tensor(float) ['N', 3] in the graph but FP32 [-1, -1] "
                "in model.yaml"
            ),
        ),
    ],
    ids=["input name", "output names", "datatype", "rank", "fixed dim", "dim declared dynamic"],
)
def test_signature_mismatch_refused_at_load(
    load_tiny, graphs, inputs: tuple, outputs: tuple, message: str
) -> None:
    with pytest.raises(RepositoryError) as info:
        load_tiny(graphs.identity([("x", "FP32", (-1, 3))]), inputs, outputs)
    assert str(info.value) == message


def test_yaml_may_fix_a_dim_the_graph_leaves_dynamic(load_tiny, graphs) -> None:
    model = load_tiny(
        graphs.identity([("x", "FP32", (-1, -1))]),
        (_spec("x", "FP32", (-1, 4)),),
        (_spec("x_out", "FP32", (-1, 4)),),
    )
    assert model.inputs["x"].shape == (-1, 4)
    assert "model 'tiny' takes [-1, 4]" in _fail(model, {"x": np.zeros((1, 5), np.float32)})


def test_sha256_mismatch_refuses_to_load(publish_tiny, graphs) -> None:
    version = publish_tiny(
        graphs.identity([("x", "FP32", (-1, 3))]),
        (_spec("x", "FP32", (-1, 3)),),
        (_spec("x_out", "FP32", (-1, 3)),),
    )
    OnnxModel(version, RuntimeSettings())  # loads as published
    other = graphs.identity([("x", "FP32", (-1, 3))])
    other.producer_name = "someone else"
    version.model_file.write_bytes(other.SerializeToString())
    with pytest.raises(RepositoryError) as info:
        OnnxModel(version, RuntimeSettings())
    assert "does not match" in str(info.value)
    assert "refusing to load a modified version" in str(info.value)
    assert version.manifest.sha256 in str(info.value)


# ---------------------------------------------------------------- providers


def test_cpu_providers() -> None:
    assert select_providers(RuntimeSettings()) == ["CPUExecutionProvider"]


@cpu_only
def test_cuda_falls_back_to_cpu_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "_warned_cuda_fallback", False)
    settings = RuntimeSettings(providers=["cuda", "cpu"])
    with caplog.at_level(logging.WARNING, logger="vigil.runtime"):
        assert select_providers(settings) == ["CPUExecutionProvider"]
        assert select_providers(settings) == ["CPUExecutionProvider"]
        assert select_providers(RuntimeSettings(providers=["cuda"])) == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if r.name == "vigil.runtime"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "CUDA was asked for" in warnings[0].getMessage()
    assert "serving on the CPU" in warnings[0].getMessage()


@cpu_only
def test_cuda_fallback_model_runs_on_cpu(
    example_versions: dict[str, ModelVersion], cancer_rows: np.ndarray
) -> None:
    model = OnnxModel(example_versions["breast_cancer"], RuntimeSettings(providers=["cuda", "cpu"]))
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    label, _ = _plain(example_versions["breast_cancer"], {"input": cancer_rows})
    np.testing.assert_array_equal(model.run({"input": cancer_rows})["label"], label)


@cpu_only
def test_require_gpu_raises(example_versions: dict[str, ModelVersion]) -> None:
    settings = RuntimeSettings(providers=["cuda", "cpu"], require_gpu=True)
    with pytest.raises(GpuUnavailable, match="require_gpu"):
        select_providers(settings)
    with pytest.raises(GpuUnavailable, match="require_gpu"):
        OnnxModel(example_versions["breast_cancer"], settings)


@cpu_only
def test_require_gpu_without_cuda_in_the_list_refuses_the_model(
    example_versions: dict[str, ModelVersion],
) -> None:
    settings = RuntimeSettings(providers=["cpu"], require_gpu=True)
    with pytest.raises(GpuUnavailable) as info:
        OnnxModel(example_versions["mlp"], settings)
    assert str(info.value).startswith("mlp/1: ")
    assert "require_gpu" in str(info.value)


def _fake_gpu_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake of onnxruntime-gpu on a node without a usable GPU: it lists CUDA among its
    providers (it was built with it) but cannot load it, so sessions come out on the CPU."""
    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: listed)


@cpu_only
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_offered_but_unusable_serves_on_cpu_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    example_versions: dict[str, ModelVersion],
    cancer_rows: np.ndarray,
) -> None:
    _fake_gpu_package(monkeypatch)
    settings = RuntimeSettings(providers=["cuda", "cpu"])
    with caplog.at_level(logging.WARNING, logger="vigil.runtime"):
        model = OnnxModel(example_versions["breast_cancer"], settings)
    assert model.providers == ["CPUExecutionProvider"]
    (warning,) = [r for r in caplog.records if r.name == "vigil.runtime"]
    assert warning.getMessage() == (
        "breast_cancer/1: onnxruntime offers CUDA but its provider failed to initialise (see "
        "onnxruntime's log above); serving on the CPU"
    )
    np.testing.assert_array_equal(model.run({"input": cancer_rows})["label"], [0, 0, 1, 1, 1])


@cpu_only
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_offered_but_unusable_with_require_gpu_refuses(
    monkeypatch: pytest.MonkeyPatch, example_versions: dict[str, ModelVersion]
) -> None:
    _fake_gpu_package(monkeypatch)
    settings = RuntimeSettings(providers=["cuda", "cpu"], require_gpu=True)
    with pytest.raises(GpuUnavailable) as info:
        OnnxModel(example_versions["mlp"], settings)
    assert str(info.value) == (
        "mlp/1: the CUDA provider failed to initialise (see onnxruntime's log above) and "
        "runtime.require_gpu is set"
    )


def test_providers_report_what_the_session_runs_on(mlp: OnnxModel) -> None:
    assert mlp.providers == mlp.session.get_providers()


@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime's CUDA provider")
def test_cuda_provider_options_when_available() -> None:
    settings = RuntimeSettings(
        providers=["cuda", "cpu"], cuda_device_id=0, cuda_memory_limit_bytes=256 * 1024 * 1024
    )
    assert select_providers(settings) == [
        ("CUDAExecutionProvider", {"device_id": 0, "gpu_mem_limit": 256 * 1024 * 1024}),
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_optimisation_levels_give_the_same_labels(
    example_versions: dict[str, ModelVersion], cancer_rows: np.ndarray, level: str
) -> None:
    model = OnnxModel(
        example_versions["breast_cancer"],
        RuntimeSettings(graph_optimization_level=level, intra_op_threads=2),
    )
    np.testing.assert_array_equal(model.run({"input": cancer_rows})["label"], [0, 0, 1, 1, 1])
