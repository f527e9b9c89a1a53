"""Monitoring fixtures: generated reference/current data sets, profiled once per session."""

from __future__ import annotations

import pytest

from monitoring.profile import build_profile
from tests.unit.monitoring.helpers import Case, mixed_frames


@pytest.fixture(scope="session")
def small_case() -> Case:
    """Reference of 600 rows: Evidently's p-value tests (ks, chisquare, z)."""
    reference, current = mixed_frames(600, 300, seed=1)
    return Case(reference, current, build_profile(reference))


@pytest.fixture(scope="session")
def large_case() -> Case:
    """Reference of 1500 rows: Evidently's distances (wasserstein, jensenshannon)."""
    reference, current = mixed_frames(1500, 400, seed=2)
    return Case(reference, current, build_profile(reference))
