"""Test data for the monitoring tests: generated frames and Evidently's own verdict on them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from monitoring.profile import Profile

# Evidently's display names for the tests Vigil names.
EVIDENTLY_METHODS = {
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
    "Z-test p_value": "z",
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "PSI": "psi",
}


@dataclass(frozen=True)
class EvidentlyColumn:
    method: str
    threshold: float
    score: float
    drifted: bool


@dataclass(frozen=True)
class EvidentlyVerdict:
    columns: dict[str, EvidentlyColumn]
    share: float
    dataset_drift: bool


def evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, profile: Profile, **preset: Any
) -> EvidentlyVerdict:
    """Run Evidently's Report(DataDriftPreset) with the profile's column types; read its verdicts."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[c.name for c in profile.columns if c.kind == "numeric"],
        categorical_columns=[c.name for c in profile.columns if c.kind == "categorical"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        snapshot = Report([DataDriftPreset(**preset)], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    result = snapshot.dict()
    scores: dict[str, tuple[str, float, float]] = {}
    share = None
    for metric in result["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            scores[config["column"]] = (
                EVIDENTLY_METHODS.get(config["method"], config["method"]),
                float(config["threshold"]), float(metric["value"])
            )
        elif config["type"].endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted: dict[str, bool] = {}
    dataset_drift = None
    for test in result["tests"]:
        failed = str(test["status"]).endswith("FAIL")
        if test["name"].startswith("Value Drift for column "):
            drifted[test["name"].removeprefix("Value Drift for column ")] = failed
        elif test["name"].startswith("Share of Drifted Columns"):
            dataset_drift = failed
    assert share is not None and dataset_drift is not None
    columns = {
        name: EvidentlyColumn(method, threshold, score, drifted[name])
        for name, (method, threshold, score) in scores.items()
    }
    return EvidentlyVerdict(columns=columns, share=share, dataset_drift=dataset_drift)


def mixed_frames(n_ref: int, n_cur: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numeric, few-valued, binary, constant, NaN-bearing, integer, string and bool columns;
    some shifted in the current frame, some not, one with an unseen category."""
    rng = np.random.default_rng(seed)

    def frame(n: int, current: bool) -> pd.DataFrame:
        shift = 0.5 if current else 0.0
        nan = np.where(rng.random(n) < (0.2 if current else 0.1), np.nan, rng.normal(size=n))
        if current:
            nan[:3] = [np.inf, -np.inf, np.inf]  # dropped like NaN by the tests
        cats = ["red", "green", "blue", "amber"]
        return pd.DataFrame(
            {
                "num_shift": rng.normal(size=n) + shift,
                "num_same": rng.normal(loc=3.0, scale=2.0, size=n),
                "num_nan": nan,
                "num_few": rng.choice([0.5, 1.5, 2.5], n, p=[0.2, 0.3, 0.5] if current else None),
                "num_bin": rng.choice([0.0, 1.0], n),
                "num_int": rng.integers(0, 50, n),
                "const_same": np.ones(n),
                "const_moved": np.full(n, 2.0 if current else 1.0),
                "const_ref": rng.normal(size=n) if current else np.zeros(n),
                "cat_str": rng.choice(cats, n, p=[0.4, 0.3, 0.2, 0.1] if current else None),
                "cat_unseen": rng.choice(cats + (["violet"] if current else []), n),
                "cat_bin": rng.choice(["yes", "no"], n),
                "cat_int": rng.integers(0, 4, n),
                "cat_none": np.where(rng.random(n) < 0.1, None, rng.choice(cats[:3], n)),
                "flag": rng.random(n) < (0.6 if current else 0.5),
            }
        )

    return frame(n_ref, False), frame(n_cur, True)


def as_window(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {str(c): frame[c].to_numpy() for c in frame.columns}


@dataclass(frozen=True)
class Case:
    reference: pd.DataFrame
    current: pd.DataFrame
    profile: Profile


# ---------------------------------------------------------------- hand-built windows (alerting)


def latency_of(count: int = 0, p99: float | None = None, error_ratio: float = 0.0):
    """LatencyStats of `count` requests with this p99 and server error share."""
    from monitoring.latency import LatencyStats

    return LatencyStats(count=count, p50=p99, p95=p99, p99=p99, mean=p99, max=p99,
                        errors=round(error_ratio * count), client_errors=0,
                        error_ratio=error_ratio, client_error_ratio=0.0)


def drift_of(name: str, score: float | None, *, method: str | None = "ks",
             threshold: float | None = 0.05, drifted: bool = False, status: str = "tested",
             role: str = "feature", kind: str = "numeric"):
    """One ColumnDrift; `drifted` as given (the rules read it, not recompute it)."""
    from monitoring.drift import ColumnDrift

    return ColumnDrift(name=name, role=role, kind=kind, status=status, method=method,
                       score=score, p_value_adjusted=score, threshold=threshold,
                       drifted=drifted, reference_count=100, current_count=100,
                       approximate=False)


def quality_of_column(name: str, *, kind: str = "numeric", missing_ratio: float = 0.0,
                      out_of_range_share: float = 0.0, unseen_share: float = 0.0,
                      present: bool = True, error: str | None = None):
    from monitoring.quality import ColumnQuality

    return ColumnQuality(name=name, kind=kind, role="feature", present=present, rows=100,
                         missing=round(100 * missing_ratio), missing_ratio=missing_ratio,
                         non_finite=0, out_of_range=round(100 * out_of_range_share),
                         out_of_range_share=out_of_range_share,
                         unseen=round(100 * unseen_share), unseen_share=unseen_share,
                         unseen_distinct=0, unseen_examples=(), error=error)


def window_of(*, index: int = 1, rows: int = 200, features=(), outputs=(), quality=(),
              drift_share: float = 0.5, latency=None, evaluated: bool = True,
              error: str | None = None, opened_at: float = 1_700_000_000.0,
              closed_at: float = 1_700_000_060.5):
    """A ClosedWindow with these column results; the window-level drift numbers follow from
    the features as monitoring.drift computes them (share = drifted / tested)."""
    from monitoring.drift import DriftResult, WindowResult
    from monitoring.quality import QualityResult
    from monitoring.window import ClosedWindow

    tested = [c for c in features if c.status == "tested"]
    drifted = sum(c.drifted for c in tested)
    share = drifted / len(tested) if tested else 0.0
    tested_outputs = [c for c in outputs if c.status == "tested"]
    drift = DriftResult(
        features=tuple(features), outputs=tuple(outputs), tested=len(tested), drifted=drifted,
        share_drifted=share, drift_share=drift_share,
        dataset_drift=bool(tested) and share >= drift_share,
        prediction_drift=any(c.drifted for c in tested_outputs) if tested_outputs else None,
        correction="none",
    )
    result = None
    if evaluated:
        result = WindowResult(rows=rows, drift=drift,
                              quality=QualityResult(rows=rows, columns=tuple(quality),
                                                    violations=()))
    stats = latency if latency is not None else latency_of()
    return ClosedWindow(index=index, opened_at=opened_at, closed_at=closed_at, reason="time",
                        rows=rows, requests=stats.count, latency=stats, result=result,
                        error=error)


def scrape(collector) -> tuple[dict, dict, str]:
    """A collector's exposition as Prometheus parses it: (name, labels) -> value, name -> type,
    and the text."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types, text
