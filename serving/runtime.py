"""One onnxruntime InferenceSession per model version: providers, signature checks, run."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

try:
    import onnxruntime as ort
except ImportError as exc:  # said here, where a session is needed, not on importing serving
    raise ImportError(
        "Vigil's serving runtime needs an onnxruntime build and none is installed. Install "
        "exactly one flavour: pip install 'vigil[cpu]' (onnxruntime) or pip install "
        "'vigil[gpu]' (onnxruntime-gpu, CUDA); the two conflict."
    ) from exc

from serving.protocol import BadRequest, ModelRunFailed, fit_datatype
from serving.settings import RuntimeSettings
from vigil.core.repository import ModelVersion, RepositoryError
from vigil.core.tensors import NUMPY_TO_V2, ONNX_TO_V2, V2_TO_NUMPY, TensorSpec, can_cast

logger = logging.getLogger("vigil.runtime")

_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_warned_cuda_fallback = False
# What onnxruntime raises from a run (its exceptions share no base class but Exception).
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    error for error in vars(ort.capi.onnxruntime_pybind11_state).values()
    if isinstance(error, type) and issubclass(error, Exception)
)


def cpu_session(model_bytes: bytes) -> Any:
    """A one-thread CPU session of a model's bytes, onnxruntime's warnings left out: how the
    command line reads a file it publishes or judges (the servers build theirs in OnnxModel)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: callers say what failed
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class GpuUnavailable(RuntimeError):
    """CUDA was required by the config and this process cannot use it."""


def select_providers(settings: RuntimeSettings) -> list[Any]:
    """onnxruntime provider list from the config, dropping CUDA (logged once) where missing."""
    global _warned_cuda_fallback
    available = ort.get_available_providers()
    chosen: list[Any] = []
    for name in settings.providers:
        if name == "cpu":
            chosen.append("CPUExecutionProvider")
            continue
        if "CUDAExecutionProvider" in available:
            options: dict[str, Any] = {"device_id": settings.cuda_device_id}
            if settings.cuda_memory_limit_bytes is not None:
                options["gpu_mem_limit"] = settings.cuda_memory_limit_bytes
            chosen.append(("CUDAExecutionProvider", options))
        elif settings.require_gpu:
            raise GpuUnavailable(
                "runtime.require_gpu is set but onnxruntime offers no CUDAExecutionProvider "
                f"here (available: {available}); install vigil[gpu] on a node with a GPU"
            )
        elif not _warned_cuda_fallback:
            _warned_cuda_fallback = True
            logger.warning(
                "CUDA was asked for but onnxruntime offers only %s; serving on the CPU", available
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")  # onnxruntime's own fallback for unsupported ops
    return chosen


class OnnxModel:
    """A loaded, verified model version that validates requests and runs them."""

    def __init__(self, version: ModelVersion, settings: RuntimeSettings) -> None:
        self.name = version.manifest.name
        self.version = version.manifest.version
        self.manifest = version.manifest
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.intra_op_threads
        options.inter_op_num_threads = settings.inter_op_threads
        options.graph_optimization_level = _OPT_LEVELS[settings.graph_optimization_level]
        providers = select_providers(settings)
        self.session = ort.InferenceSession(
            version.read_verified_bytes(), options, providers=providers
        )
        # What the session really runs on: onnxruntime-gpu offers CUDA even where it cannot load
        # it (no driver, no GPU), and then quietly builds a CPU session.
        self.providers: list[str] = self.session.get_providers()
        if "CUDAExecutionProvider" not in self.providers:
            if settings.require_gpu:
                raise GpuUnavailable(
                    f"{self.name}/{self.version}: the CUDA provider failed to initialise "
                    "(see onnxruntime's log above) and runtime.require_gpu is set"
                )
            if any(isinstance(p, tuple) and p[0] == "CUDAExecutionProvider" for p in providers):
                logger.warning(
                    "%s/%s: onnxruntime offers CUDA but its provider failed to initialise (see "
                    "onnxruntime's log above); serving on the CPU",
                    self.name, self.version,
                )
        self.inputs = {s.name: s for s in version.manifest.inputs}
        self.outputs = {s.name: s for s in version.manifest.outputs}
        self._check_signature()
        # Rows of several requests are stacked only when the version declares it (model.yaml
        # max_batch_rows; the manifest refuses a declaration its signature cannot honour).
        self.max_batch_rows = version.manifest.max_batch_rows
        self.batchable = self.max_batch_rows > 0
        self.output_names = list(self.outputs)

    def _check_signature(self) -> None:
        where = f"{self.name}/{self.version}"
        for kind, declared, actual in (
            ("input", self.inputs, self.session.get_inputs()),
            ("output", self.outputs, self.session.get_outputs()),
        ):
            actual_by_name = {a.name: a for a in actual}
            if set(declared) != set(actual_by_name):
                raise RepositoryError(
                    f"{where}: model.yaml {kind}s {sorted(declared)} differ from the ONNX graph's "
                    f"{sorted(actual_by_name)}"
                )
            for name, spec in declared.items():
                onnx = actual_by_name[name]
                if (
                    ONNX_TO_V2.get(onnx.type) != spec.datatype
                    or len(onnx.shape) != len(spec.shape)
                    # A dim the graph fixes must be declared as that size; a symbolic one may be
                    # declared as anything.
                    or any(isinstance(g, int) and g != d for g, d in zip(onnx.shape, spec.shape))
                ):
                    raise RepositoryError(
                        f"{where}: {kind} '{name}' is {onnx.type} {onnx.shape} in the graph but "
                        f"{spec.datatype} {list(spec.shape)} in model.yaml"
                    )

    def check_declared(self, declared: Iterable[tuple[str, str, tuple[int, ...]]]) -> int:
        """Check (name, datatype, shape) of every input against the signature, before any data
        is decoded: names, datatypes (safe casts only), shapes, and the batch axis. Returns the
        request's row count (1 for a version that is not batched)."""
        declared = list(declared)
        names = {name for name, _, _ in declared}
        if names != self.inputs.keys():
            # Unknown names first: a misspelt input is also a missing one, and this says both.
            unknown = names - self.inputs.keys()
            if unknown:
                raise BadRequest(f"model '{self.name}' has no inputs {sorted(unknown)}; it takes "
                                 f"{list(self.inputs)}")
            missing = self.inputs.keys() - names
            raise BadRequest(f"model '{self.name}' needs inputs {sorted(missing)} (missing)")
        rows: int | None = None
        for name, datatype, shape in declared:
            spec = self.inputs[name]
            if not can_cast(datatype, spec.datatype):
                raise BadRequest(
                    f"input '{name}' is {datatype}; model '{self.name}' takes {spec.datatype}"
                )
            if len(shape) != len(spec.shape) or not _fits(spec.shape, shape):
                raise BadRequest(
                    f"input '{name}' has shape {list(shape)}; model '{self.name}' takes "
                    f"{list(spec.shape)} (-1: any size)"
                )
            if self.batchable:
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise BadRequest(
                        f"inputs disagree on the batch axis: '{name}' has {shape[0]} rows, "
                        f"others {rows}"
                    )
        if rows == 0:
            raise BadRequest("request has 0 rows along the batch axis")
        return rows if rows is not None else 1

    def validate(self, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """check_declared on decoded arrays, then convert them as the model wants them: safe
        casts (refusing values that overflow the model's float type), UTF-8 text for BYTES, and
        finiteness where the model forbids NaN and Inf. Returns them and the row count."""
        rows = self.check_declared((n, _datatype_of(a), a.shape) for n, a in inputs.items())
        return self.conform(inputs), rows

    def conform(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays whose names, datatypes and shapes check_declared has passed, converted as
        validate converts them."""
        return {name: self._conform(self.inputs[name], a) for name, a in inputs.items()}

    def _conform(self, spec: TensorSpec, array: np.ndarray) -> np.ndarray:
        if _datatype_of(array) != spec.datatype:
            if V2_TO_NUMPY[spec.datatype].kind == "f":
                array = fit_datatype(spec.name, array, spec.datatype)
            else:
                array = array.astype(V2_TO_NUMPY[spec.datatype])
        if spec.datatype == "BYTES" and array.dtype == object:
            array = _utf8_strings(spec.name, array)
        if (
            not spec.allow_non_finite
            and array.dtype.kind == "f"
            and not np.isfinite(array).all()
        ):
            raise BadRequest(f"input '{spec.name}' holds NaN or Inf, which model '{self.name}' forbids")
        return array

    def select_outputs(self, names: list[str] | None) -> list[str]:
        if names is None:
            return self.output_names
        unknown = [n for n in names if n not in self.outputs]
        if unknown:
            raise BadRequest(
                f"model '{self.name}' has no outputs {unknown}; it gives {self.output_names}"
            )
        return names

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on validated inputs; every output, by name. onnxruntime's own errors
        are the model's fault on an accepted request: ModelRunFailed (502), the cause chained."""
        try:
            results = self.session.run(self.output_names, inputs)
        except _ORT_ERRORS as exc:
            raise ModelRunFailed(
                f"model '{self.name}' version '{self.version}' failed to run on this request "
                f"(onnxruntime {type(exc).__name__}; the server log has the detail)"
            ) from exc
        return dict(zip(self.output_names, results))


def _fits(declared: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether `shape` is one the signature's `declared` shape takes (-1: any size). A plain
    loop: it runs for every input of every request."""
    for want, have in zip(declared, shape):
        if want != -1 and want != have:
            return False
    return True


def _datatype_of(array: np.ndarray) -> str:
    got = NUMPY_TO_V2.get(array.dtype)
    if got is None:  # a byte-swapped numeric dtype, or an object array (BYTES)
        got = NUMPY_TO_V2.get(array.dtype.newbyteorder("="), "BYTES")
    return got


def _utf8_strings(name: str, array: np.ndarray) -> np.ndarray:
    """BYTES elements as str: onnxruntime's tensor(string) would take a bytes element as its
    repr ("b'...'")."""
    try:
        items = [v.decode() if isinstance(v, bytes) else v for v in array.ravel()]
    except UnicodeDecodeError:
        raise BadRequest(f"input '{name}' holds bytes that are not UTF-8 text") from None
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(array.shape)
