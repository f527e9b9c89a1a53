"""How a rollout's windows are judged: the Monitor's `rollouts:` settings (monitoring.rollout_checks
applies them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RolloutCheckSettings(BaseModel):
    """How a rollout's windows are judged (the Monitor's `rollouts:`; a rollout may override)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_requests: int = Field(default=50, ge=1, le=10_000_000, description=(
        "Requests the candidate must have served in a window (and production in the same span) "
        "for the window to give a verdict; below it the window is no verdict, never a pass."))
    max_error_ratio_increase: float = Field(default=0.01, ge=0.0, le=1.0, description=(
        "The candidate's server-error ratio minus production's, at most this."))
    max_p99_ratio: float = Field(default=1.25, ge=1.0, le=100.0, description=(
        "The candidate's p99 latency at most this times production's p99."))
    min_agreement: float | None = Field(default=None, ge=0.0, le=1.0, description=(
        "Share of the candidate's compared rows on which production answers alike (replicas "
        "compare sampling.canary_agreement_share of the canary's requests), at least this; "
        "null leaves the check out (for regressors: outputs agree within 1% only)."))
    min_agreement_rows: int = Field(default=20, ge=1, le=1_000_000, description=(
        "Compared rows a window needs for an agreement verdict."))
    prediction_drift: bool = Field(default=True, description=(
        "Fail a window whose predictions drift from the candidate version's own profile."))
    max_quality_drop: float = Field(default=0.02, ge=0.0, le=1.0, description=(
        "With labels: the candidate's quality at most this below production's on the same "
        "span."))
