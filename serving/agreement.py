"""Row agreement between two versions' outputs for one request (production against its shadow).

The outputs compared are those both sides return (by name). A row is one index of the first axis
(every compared array on both sides must have that axis, of one length; otherwise nothing is
compared: (0, 0)). When any compared output is not floating point (class labels, flags, strings),
the model is a classifier: a row agrees when every non-float output is equal in that row, and
its float outputs (scores) are not looked at. Otherwise a row agrees when every float output
agrees in it: the argmax along the last axis where the output is 2-D or more with a last axis
longer than 1 (class scores), else every value within ``rtol`` 1e-2 and ``atol`` 1e-6 of the
other (regression; NaN agrees with NaN). An output whose shapes differ beyond the row axis
agrees in no row. Pure numpy: no I/O, no Ray.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

RTOL = 1e-2
ATOL = 1e-6


def agreement(
    production_outputs: Mapping[str, np.ndarray], shadow_outputs: Mapping[str, np.ndarray]
) -> tuple[int, int]:
    """(agreeing rows, compared rows) of one request's two answers."""
    names = [n for n in production_outputs if n in shadow_outputs]
    pairs = [(np.asarray(production_outputs[n]), np.asarray(shadow_outputs[n])) for n in names]
    rows = _common_rows(pairs)
    if not rows:
        return 0, 0
    labels = [(a, b) for a, b in pairs if not _is_float(a) or not _is_float(b)]
    agree = np.ones(rows, dtype=bool)
    for a, b in labels or pairs:
        if a.shape != b.shape:
            return 0, rows
        agree &= _equal_rows(a, b) if labels else _close_rows(a, b)
    return int(agree.sum()), rows


def _common_rows(pairs: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """The first-axis length every array shares; 0 when none (no arrays, a scalar, a mismatch)."""
    lengths = {a.shape[0] if a.ndim else -1 for pair in pairs for a in pair}
    if len(lengths) != 1:
        return 0
    return max(lengths.pop(), 0)


def _is_float(array: np.ndarray) -> bool:
    return array.dtype.kind in "fc"


def _equal_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _whole_rows(np.asarray(a == b, dtype=bool))


def _close_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.ndim >= 2 and a.shape[-1] > 1:
        return _equal_rows(np.argmax(a, axis=-1), np.argmax(b, axis=-1))
    return _whole_rows(np.asarray(np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)))


def _whole_rows(matches: np.ndarray) -> np.ndarray:
    """Per row (first axis): whether every element of it matched."""
    return np.asarray(matches.reshape(matches.shape[0], -1).all(axis=1), dtype=bool)
