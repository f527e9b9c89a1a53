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
