"""The statistical tests behind monitoring.drift: p-values, distances, binning, normed Wasserstein.

Pure functions over numpy arrays and profile summaries, each reproducing the Evidently 0.7 test of
the same name (legacy/calculations/stattests/); see monitoring.drift for which one a column gets.
A test may raise on inputs it cannot handle (values whose span exceeds float64, say): the caller
then marks that column "failed"; `wasserstein_all`, which computes many columns at once, does so
itself and reports which columns failed and why.
"""

from __future__ import annotations

import math
import weakref
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial import distance

from monitoring.profile import ColumnProfile, Profile
from monitoring.quality import PreparedColumn, PreparedWindow, failure_reason
from monitoring.settings import Correction

HISTOGRAM_MIN_UNIQUE = 20  # Evidently get_binned_data: numeric with more distinct values -> histogram
WASSERSTEIN_MIN_NORM = 0.001


def adjust_p_values(p_values: np.ndarray, correction: Correction) -> np.ndarray:
    """Bonferroni (p * k, capped at 1) or Benjamini-Hochberg step-up (scipy) adjusted p-values."""
    p = np.asarray(p_values, dtype=np.float64)
    k = p.size
    if correction == "none" or k == 0:
        return p.copy()
    if correction == "bonferroni":
        return np.minimum(p * k, 1.0)
    return np.asarray(stats.false_discovery_control(p, method="bh"), dtype=np.float64)


# --- the tests -------------------------------------------------------------------------------


def ks_p_value(ref: np.ndarray, cur: np.ndarray, exact: bool, ref_count: int) -> float:
    """Two-sample KS p-value (scipy, as Evidently); from a sketch: asymptotic with the true n."""
    if exact:
        return float(stats.ks_2samp(ref, cur).pvalue)
    d = float(stats.ks_2samp(ref, cur).statistic)
    en = ref_count * cur.size / (ref_count + cur.size)
    return float(stats.kstwo.sf(d, np.round(en)))


def chisquare_p_value(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Evidently's chi-squared: expected = reference counts scaled to the window size."""
    if ref_counts.size < 2:
        return 1.0
    expected = ref_counts * (cur_counts.sum() / ref_counts.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = float((((cur_counts - expected) ** 2) / expected).sum())
    return float(stats.chi2.sf(stat, ref_counts.size - 1))


def z_p_value(ref_counts: np.ndarray, cur_counts: np.ndarray, first: int) -> float:
    """Evidently's two-proportion Z-test of 'not the smallest key' (`first`), two-sided."""
    n1, n2 = float(ref_counts.sum()), float(cur_counts.sum())
    if np.count_nonzero(ref_counts) == 1 and np.count_nonzero(cur_counts) == 1 and (
        np.argmax(ref_counts) == np.argmax(cur_counts)
    ):
        return 1.0
    p1 = (n1 - ref_counts[first]) / n1
    p2 = (n2 - cur_counts[first]) / n2
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2 * (1 - stats.norm.cdf(abs(z))))  # Evidently's form (not norm.sf): same numbers


def jensenshannon_distance(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    return float(distance.jensenshannon(ref_share, cur_share))


def psi_value(ref_share: np.ndarray, cur_share: np.ndarray) -> float:
    """Population stability index after Evidently's zero filling of empty bins."""
    ref, cur = _fill_zeroes(ref_share.copy()), _fill_zeroes(cur_share.copy())
    return float(np.sum((ref - cur) * np.log(ref / cur)))


def _fill_zeroes(share: np.ndarray) -> np.ndarray:
    smallest = share[share != 0].min()
    share[share == 0] = smallest / 10**6 if smallest <= 0.0001 else 0.0001
    return share



# --- binning -------------------------------------------------------------------------------


def keyed_counts(col: ColumnProfile, cur: PreparedColumn) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Counts by value over the union of reference and window values, and the smallest key."""
    if col.kind == "categorical":
        assert col.unique_counts is not None and cur.counts is not None
        k, u = col.unique_counts.size, len(cur.unseen_values)
        ref = np.concatenate([col.unique_counts, np.zeros(u, np.int64)]).astype(np.float64)
        now = np.concatenate([cur.counts, cur.unseen_counts]).astype(np.float64)
        keys = [*(col.unique_values.tolist()[:1] if k else []), *cur.unseen_values]
        positions = [0] * min(k, 1) + list(range(k, k + u))
        try:
            first = positions[min(range(len(keys)), key=keys.__getitem__)]
        except TypeError:  # unorderable mix of types: order by string form
            first = positions[min(range(len(keys)), key=lambda i: str(keys[i]))]
        return ref, now, first, False
    assert cur.values is not None
    approximate = False
    if col.unique_values is not None:
        ref_keys, ref_counts = col.unique_values, col.unique_counts.astype(np.float64)
    else:
        assert col.values is not None
        ref_keys, counts = np.unique(col.values, return_counts=True)
        ref_counts = counts * (col.count / col.values.size)
        approximate = not col.exact
    cur_keys, cur_counts = np.unique(cur.values, return_counts=True)
    keys = np.union1d(ref_keys, cur_keys)
    ref = np.zeros(keys.size)
    now = np.zeros(keys.size)
    ref[np.searchsorted(keys, ref_keys)] = ref_counts
    now[np.searchsorted(keys, cur_keys)] = cur_counts
    return ref, now, 0, approximate


def binned_shares(col: ColumnProfile, cur: PreparedColumn) -> tuple[np.ndarray, np.ndarray, bool]:
    """Evidently's get_binned_data: shares per value, or per Sturges bin for many-valued numerics."""
    if col.kind == "numeric" and col.n_unique > HISTOGRAM_MIN_UNIQUE:
        assert col.values is not None and cur.values is not None
        lo, hi = min(col.min, cur.values[0]), max(col.max, cur.values[-1])
        dtype = np.result_type(np.dtype(col.dtype), np.dtype(cur.dtype or "float64"))
        edges = sturges_edges(lo, hi, col.count + cur.values.size, dtype)
        ref = np.diff(_cumulative(col.values, edges)) / col.values.size
        now = np.diff(_cumulative(cur.values, edges)) / cur.values.size
        return ref, now, not col.exact
    ref, now, _, approximate = keyed_counts(col, cur)
    return ref / ref.sum(), now / now.sum(), approximate


def sturges_edges(lo: float, hi: float, size: int, dtype: np.dtype) -> np.ndarray:
    """np.histogram_bin_edges(data, "sturges") from the data's min, max, size and dtype alone
    (numpy computes in the data's dtype: float32 edges for float32 data, width >= 1 for ints).

    Where the span max - min overflows a float dtype narrower than float64 (float32 values near
    +-3.4e38: numpy, and so Evidently, fail there with NaN bins), the edges are computed in float64
    instead; a span beyond float64 raises ValueError."""
    if dtype.kind == "f" and not np.isfinite(_quiet_span(dtype.type(hi), dtype.type(lo))):
        if dtype.itemsize >= 8 or not np.isfinite(_quiet_span(np.float64(hi), np.float64(lo))):
            raise ValueError(f"the values span more than {dtype} can hold ({float(lo)!r} to "
                             f"{float(hi)!r}): no histogram bins")
        dtype = np.dtype(np.float64)
    first, last = dtype.type(lo), dtype.type(hi)
    width = _span(last, first) / (np.log2(size) + 1.0)
    if first == last:
        first, last = first - 0.5, last + 0.5
    if width:
        if dtype.kind in "iu" and width < 1:
            width = 1
        bins = int(np.ceil(_span(last, first) / width))
    else:
        bins = 1
    bin_type = np.result_type(first, last, dtype)
    if bin_type.kind in "iu":
        bin_type = np.result_type(bin_type, float)
    return np.linspace(first, last, bins + 1, endpoint=True, dtype=bin_type).astype(np.float64)


def _quiet_span(a: Any, b: Any) -> Any:
    with np.errstate(over="ignore"):
        return _span(a, b)


def _span(a: Any, b: Any) -> Any:
    """a - b as numpy's histogram takes it: in the dtype, unsigned for integers."""
    dtype = np.result_type(a, b)
    if dtype.kind == "i":
        return np.subtract(a, b, dtype=np.dtype(f"u{dtype.itemsize}"), casting="unsafe")
    return np.subtract(a, b, dtype=dtype)


def _cumulative(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Values below each edge (the last edge inclusive), as np.histogram counts them."""
    below = np.searchsorted(sorted_values, edges, side="left")
    below[-1] = np.searchsorted(sorted_values, edges[-1], side="right")
    return below



# --- normed Wasserstein, vectorised over columns ------------------------------------------------
#
# W1(u, v) = integral over q in [0, 1] of |Q_u(q) - Q_v(q)|, with Q the empirical quantile
# functions. On the window's step [j/m, (j+1)/m) Q_v is the constant v_j, and
#   integral |Q_u - v_j| = integral (Q_u - v_j) + 2 * integral (v_j - Q_u)+ ,
# the first summing over all j to mean(u) - mean(v). The positive part is 0 when v_j <= Q_u(j/m),
# the whole step when v_j > Q_u just below (j+1)/m, and otherwise ends where Q_u crosses v_j, found
# by a short binary search inside that step (about n/m reference values). With P the prefix
# integral of Q_u (precomputed), each window costs O(m log m) for its sort plus O(m) here,
# independent of the reference size; the per-step reference values depend only on (columns, m)
# and are cached, so fixed-size windows skip them. Values are centred on the reference mean first.


class _Compiled:
    """Numeric reference values laid out flat for vectorised gathers, with their prefix sums."""

    def __init__(self, profile: Profile) -> None:
        cols = [c for c in profile.columns if c.kind == "numeric" and c.values is not None]
        self.position = {c.name: i for i, c in enumerate(cols)}
        self.n = np.array([c.values.size for c in cols], dtype=np.int64)
        self.center = np.array([c.mean for c in cols], dtype=np.float64)
        self.norm = np.array([max(c.std, WASSERSTEIN_MIN_NORM) for c in cols], dtype=np.float64)
        self.approximate = np.array([not c.exact for c in cols])
        self.u_off = np.concatenate([[0], np.cumsum(self.n)])
        self.s_off = self.u_off + np.arange(len(cols) + 1)
        self.u = np.zeros(self.u_off[-1] + 1)  # one pad value: index n of the last column
        self.s = np.zeros(self.s_off[-1])
        with np.errstate(over="ignore", invalid="ignore"):  # a column that overflows fails alone
            for i, c in enumerate(cols):
                centred = c.values - self.center[i]
                self.u[self.u_off[i]:self.u_off[i + 1]] = centred
                np.cumsum(centred, out=self.s[self.s_off[i] + 1:self.s_off[i + 1]])
                self.s[self.s_off[i] + 1:self.s_off[i + 1]] /= c.values.size
        self.steps: OrderedDict[tuple, tuple[np.ndarray, ...]] = OrderedDict()

    def step_bounds(self, idx: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per window step j: Q_u at j/m, Q_u just below (j+1)/m, and the integral of Q_u over it."""
        key = (idx.tobytes(), m)
        hit = self.steps.get(key)
        if hit is not None:
            self.steps.move_to_end(key)
            return hit  # type: ignore[return-value]
        ia, frac, ibl = _grid(int(self.n[idx[0]]), m)
        ub, sb = self.u_off[idx][:, None], self.s_off[idx][:, None]
        p = self.s[sb + ia] + self.u[ub + ia] * frac
        bounds = (self.u[ub + ia[:-1]], self.u[ub + ibl], np.diff(p, axis=1))
        self.steps[key] = bounds
        while len(self.steps) > 4:
            self.steps.popitem(last=False)
        return bounds


_COMPILED: weakref.WeakKeyDictionary[Profile, _Compiled] = weakref.WeakKeyDictionary()


def _compiled(profile: Profile) -> _Compiled:
    comp = _COMPILED.get(profile)
    if comp is None:
        comp = _COMPILED[profile] = _Compiled(profile)
    return comp


@lru_cache(maxsize=32)
def _grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference indices for window steps: floor(jn/m) with remainder, and ceil((j+1)n/m) - 1."""
    j = np.arange(m + 1, dtype=np.int64)
    ia, rem = np.divmod(j * n, m)
    ibl = ((j[:-1] + 1) * n + m - 1) // m - 1
    return ia, rem / (n * m), ibl


Scores = dict[str, tuple[float, bool]]  # column -> (score, approximate)
Failures = dict[str, str]  # column -> why its test failed


def wasserstein_all(
    profile: Profile, cols: list[ColumnProfile], window: PreparedWindow
) -> tuple[Scores, Failures]:
    """Normed Wasserstein distance of each column, vectorised over the columns that share a
    reference and window size. Floating-point overflow or invalid values raise inside; a group
    that raises is computed again column by column, so only the column at fault fails."""
    scores: Scores = {}
    failures: Failures = {}
    if not cols:
        return scores, failures
    comp = _compiled(profile)
    groups: dict[tuple[int, int], list[int]] = {}
    for c in cols:
        i = comp.position[c.name]
        groups.setdefault((int(comp.n[i]), window.columns[c.name].count), []).append(i)
    names = {comp.position[c.name]: c.name for c in cols}
    for (n, m), members in groups.items():
        _wasserstein_group(comp, members, names, window, n, m, scores, failures)
    return scores, failures


def _wasserstein_group(
    comp: _Compiled, members: list[int], names: dict[int, str], window: PreparedWindow,
    n: int, m: int, scores: Scores, failures: Failures,
) -> None:
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            idx = np.array(members, dtype=np.int64)
            block = np.empty((idx.size, m))
            for row, i in enumerate(members):
                np.subtract(window.columns[names[i]].values, comp.center[i], out=block[row])
            distances = _w1(comp, idx, block, n) / comp.norm[idx]
    except Exception as exc:  # noqa: BLE001 - find the column at fault, keep the others
        if len(members) == 1:
            failures[names[members[0]]] = failure_reason(exc)
        else:
            for i in members:
                _wasserstein_group(comp, [i], names, window, n, m, scores, failures)
        return
    for row, i in enumerate(members):
        score = float(distances[row])
        if math.isfinite(score):
            scores[names[i]] = (score, bool(comp.approximate[i]))
        else:  # a reference std beyond float64: no defined normed distance
            failures[names[i]] = f"ArithmeticError: wasserstein gave a non-finite score ({score})"


def _w1(comp: _Compiled, idx: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """W1 between each reference column idx[r] (n values) and sorted, centred window row v[r]."""
    _, m = v.shape
    lo, hi, dp = comp.step_bounds(idx, m)
    above = v > hi
    term = v * (1.0 / m)
    term -= dp
    term *= above
    cross = v > lo
    cross ^= above  # above implies v > lo: what is left crosses inside its step
    flat = np.flatnonzero(cross)
    if flat.size:
        r, j = np.divmod(flat, m)
        ia, frac, ibl = _grid(n, m)
        x = v[r, j]
        ub, sb = comp.u_off[idx][r], comp.s_off[idx][r]
        first, last = ia[j] + 1, ibl[j].copy()  # Q_u crosses x at index k in [first, last]
        while True:
            active = first < last
            if not active.any():
                break
            mid = (first + last) >> 1
            less = comp.u[ub + mid] < x
            first = np.where(active & less, mid + 1, first)
            last = np.where(active & ~less, mid, last)
        p_start = comp.s[sb + ia[j]] + comp.u[ub + ia[j]] * frac[j]
        term[r, j] = x * ((first * m - j * n) / (n * m)) - (comp.s[sb + first] - p_start)
    mean_u = comp.s[comp.s_off[idx] + n]
    return mean_u - v.mean(axis=1) + 2.0 * term.sum(axis=1)
