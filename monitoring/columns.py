"""The one column naming rule: model tensors <-> the 1-D columns that profiles and windows hold.

- a 1-D tensor ``t`` (one value per row) is the column ``t``;
- a 2-D tensor ``t`` of width k is k columns: the names in the version's
  ``metadata.feature_names`` when ``t`` is the model's only input and k matches, else
  ``t_0 .. t_{k-1}``. Outputs follow the same rule without feature names (``label``,
  ``probabilities_0``, ``probabilities_1``).

Tensors of more than two dimensions (images, sequences) have no columns: such a model cannot be
profiled, and the monitor keeps only its latency and errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Signature = Sequence[tuple[str, Sequence[int]]]  # (tensor name, declared shape; -1 is dynamic)


@dataclass(frozen=True)
class TensorColumns:
    """One tensor and the columns it becomes, in order."""

    tensor: str
    ndim: int  # 1 or 2
    columns: tuple[str, ...]  # empty while the width of a 2-D tensor is unknown (dynamic)

    @property
    def width(self) -> int | None:
        """Columns per row for a 2-D tensor whose width is known; None otherwise."""
        return len(self.columns) if self.ndim == 2 and self.columns else None

    def mismatch(self, array: Any) -> str | None:
        """Why `array` (rows first) cannot be this tensor, or None when it fits."""
        shape = np.shape(array)
        if len(shape) != self.ndim:
            return f"tensor {self.tensor!r} has shape {list(shape)}, expected {self.ndim}-D"
        if self.width is not None and shape[1] != self.width:
            return f"tensor {self.tensor!r} has width {shape[1]}, expected {self.width}"
        return None

    def split(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """The tensor's rows as 1-D columns (views; copy before keeping them)."""
        array = np.asarray(array)
        if self.ndim == 1:
            return {self.columns[0]: array}
        return {name: array[:, i] for i, name in enumerate(self.columns)}

    def join(self, data: Mapping[str, Any]) -> np.ndarray:
        """The tensor from its columns in `data` (the inverse of split)."""
        if self.ndim == 1:
            return np.asarray(data[self.columns[0]])
        return np.stack([np.asarray(data[c]) for c in self.columns], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "ndim": self.ndim, "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TensorColumns:
        return cls(str(doc["tensor"]), int(doc["ndim"]), tuple(str(c) for c in doc["columns"]))


def tensor_columns(
    tensor: str,
    shape: Sequence[int],
    *,
    feature_names: Sequence[str] | None = None,
    width: int | None = None,
) -> TensorColumns:
    """The columns of one tensor. `shape` is the declared shape (rows first, -1 dynamic);
    `width` resolves a dynamic second dimension; `feature_names` apply when their count matches."""
    ndim = len(shape)
    if ndim == 1:
        return TensorColumns(tensor, 1, (tensor,))
    if ndim != 2:
        raise ValueError(
            f"tensor {tensor!r} has {ndim} dimensions; monitoring profiles 1-D and 2-D tensors only"
        )
    declared = int(shape[1])
    if declared != -1 and width is not None and width != declared:
        raise ValueError(f"tensor {tensor!r} is declared {declared} wide, data is {width} wide")
    k = declared if declared != -1 else width
    if k is None:
        return TensorColumns(tensor, 2, ())
    if feature_names is not None and len(feature_names) == k:
        return TensorColumns(tensor, 2, tuple(str(n) for n in feature_names))
    return TensorColumns(tensor, 2, tuple(f"{tensor}_{i}" for i in range(k)))


@dataclass(frozen=True)
class ColumnLayout:
    """Every input and output tensor of a model version with its columns."""

    inputs: tuple[TensorColumns, ...]
    outputs: tuple[TensorColumns, ...]

    def __post_init__(self) -> None:
        names = [*self.feature_columns, *self.output_columns]
        duplicates = sorted(n for n, k in Counter(names).items() if k > 1)
        if duplicates:
            raise ValueError(f"tensors map to the same column names: {duplicates}")

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return tuple(c for t in self.inputs for c in t.columns)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(c for t in self.outputs for c in t.columns)

    def mismatch(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> str | None:
        """Why a batch of tensors does not fit this layout (names, shapes, row counts), or None."""
        rows: set[int] = set()
        for kind, tensors, given in (("inputs", self.inputs, inputs), ("outputs", self.outputs, outputs)):
            want = [t.tensor for t in tensors]
            if sorted(given) != sorted(want):
                return f"{kind} {sorted(given)} differ from the expected {sorted(want)}"
            for t in tensors:
                reason = t.mismatch(given[t.tensor])
                if reason is not None:
                    return reason
                rows.add(int(np.shape(given[t.tensor])[0]))
        if len(rows) > 1:
            return f"tensors disagree on the number of rows: {sorted(rows)}"
        return None

    def split(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Every feature and output column of a batch that fits (see mismatch) as 1-D arrays."""
        columns: dict[str, np.ndarray] = {}
        for t in self.inputs:
            columns.update(t.split(inputs[t.tensor]))
        for t in self.outputs:
            columns.update(t.split(outputs[t.tensor]))
        return columns

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ColumnLayout:
        return cls(
            tuple(TensorColumns.from_dict(t) for t in doc["inputs"]),
            tuple(TensorColumns.from_dict(t) for t in doc["outputs"]),
        )


def layout_for(
    inputs: Signature,
    outputs: Signature,
    *,
    feature_names: Sequence[str] | None = None,
    widths: Mapping[str, int] | None = None,
) -> ColumnLayout:
    """The layout of a signature. `widths` resolves dynamic widths by tensor name (e.g. from the
    data a profile is built from); feature names apply only when there is exactly one input."""
    widths = widths or {}
    names = feature_names if len(inputs) == 1 else None
    return ColumnLayout(
        tuple(
            tensor_columns(n, s, feature_names=names, width=widths.get(n)) for n, s in inputs
        ),
        tuple(tensor_columns(n, s, width=widths.get(n)) for n, s in outputs),
    )
