"""Typed, bounded settings for the monitoring statistics (windows, drift tests, history, buffers)."""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from monitoring.alert_settings import AlertRule, WebhookTarget, check_unique
from monitoring.rollout_settings import RolloutCheckSettings
from vigil.core.settings import AppSettings, beside_repository

DriftMethod = Literal["ks", "chisquare", "z", "wasserstein", "jensenshannon", "psi"]
Correction = Literal["none", "bonferroni", "benjamini-hochberg"]
ColumnKind = Literal["numeric", "categorical"]

OUTBOX_FILE_NAME = "vigil-outbox.sqlite"
_NAME_MAX = 256  # longest column name accepted in the mappings below
_COLUMNS_MAX = 10_000  # most columns a mapping may name


class WindowSettings(BaseModel):
    """When a window closes: after `rows` sampled rows, after `seconds`, whichever comes first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int | None = Field(
        default=1000,
        ge=1,
        le=10_000_000,
        description="Close the window after this many sampled rows; unset: time only. A fixed row "
        "count also keeps drift evaluation on its fast path (reference grids cached per size).",
    )
    seconds: float | None = Field(
        default=60.0,
        ge=0.1,
        le=86_400.0,
        description="Close the window after this many seconds since it opened (it opens when the "
        "previous one closes; with no traffic it closes empty); unset: rows only.",
    )

    @model_validator(mode="after")
    def _one_bound(self) -> WindowSettings:
        if self.rows is None and self.seconds is None:
            raise ValueError("a window needs rows, seconds or both")
        return self


class FeatureDriftOverride(BaseModel):
    """The drift test and/or threshold for one column, replacing Evidently's default choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: DriftMethod | None = Field(
        default=None,
        description="Test for this column; unset keeps the default rule. 'ks' and 'wasserstein' "
        "need a numeric column.",
    )
    threshold: float | None = Field(
        default=None,
        gt=0.0,
        le=10.0,
        description="Decision threshold: p-value level for ks/chisquare/z (drift when p is below), "
        "distance for wasserstein/jensenshannon/psi (drift when at or above); unset: the method's "
        "default (0.05 for p-values, 0.1 for distances).",
    )


class MonitorSettings(BaseModel):
    """Everything the window statistics and the monitor deployment need; unknown keys rejected.
    Validation errors do not quote their input: it holds webhook URLs, which may carry
    credentials (monitoring.alert_settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    window: WindowSettings = Field(
        default_factory=WindowSettings, description="When a window of sampled rows is evaluated."
    )
    drift_share: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Dataset drift when the share of drifted features (of those tested) is at or "
        "above this, as Evidently's DataDriftPreset.",
    )
    correction: Correction = Field(
        default="none",
        description="Multiple-testing correction of the p-values of ks/chisquare/z tests within one "
        "window ('none' reproduces Evidently's per-column decisions; see monitoring.drift).",
    )
    overrides: dict[str, FeatureDriftOverride] = Field(
        default_factory=dict,
        max_length=_COLUMNS_MAX,
        description="Per-column drift test and threshold, keyed by column name.",
    )
    feature_types: dict[str, ColumnKind] = Field(
        default_factory=dict,
        max_length=_COLUMNS_MAX,
        description="Column type overrides applied when the reference profile is built; evaluation "
        "refuses a profile whose recorded types disagree.",
    )
    history: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="How many evaluated windows (results only, never rows) are kept per model.",
    )
    buffer_rows: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Most sampled rows held in memory per model; a full buffer closes the window "
        "early, so a window never holds more than this.",
    )
    max_exact_values: int = Field(
        default=100_000,
        ge=1_000,
        le=10_000_000,
        description="Reference profiles keep every value of a numeric column up to this many rows; "
        "above it, this many evenly spaced quantiles (results then approximate).",
    )
    max_categories: int = Field(
        default=10_000,
        ge=2,
        le=1_000_000,
        description="Most distinct values a categorical reference column may have; a profile build "
        "with more fails (such a column is text or an id, not a category).",
    )

    alerts: list[AlertRule] = Field(
        default_factory=list,
        max_length=1000,
        description="Alert rules over closed windows (monitoring.alert_settings); each firing and "
        "resolution becomes a signed event for the webhook targets.",
    )
    webhooks: list[WebhookTarget] = Field(
        default_factory=list,
        max_length=100,
        description="Where alert events are delivered (at least once, from the durable outbox).",
    )
    rollouts: RolloutCheckSettings = Field(
        default_factory=RolloutCheckSettings,
        description="How progressive rollouts' windows are judged (`vigil models rollout`): each "
        "check compares the candidate with production over the same span.",
    )

    @model_validator(mode="after")
    def _names_bounded(self) -> MonitorSettings:
        for name in (*self.overrides, *self.feature_types):
            if not 0 < len(name) <= _NAME_MAX:
                raise ValueError(f"column names must have 1..{_NAME_MAX} characters: {name[:40]!r}")
        check_unique(self.alerts, self.webhooks)
        return self


LABELS_FILE_NAME = "vigil-labels.sqlite"


class FeedbackStoreSettings(BaseModel):
    """How long served predictions wait for their labels, and how many may wait."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttl_s: float = Field(
        default=7 * 86_400.0,
        ge=1.0,
        le=366 * 86_400.0,
        description="A prediction is kept this long after it was served (labelled or not); a "
        "label for it after that is unknown_id. Evictions are counted "
        "(vigil_feedback_evicted_total, reason ttl).",
    )
    max_pending: int = Field(
        default=1_000_000,
        ge=10,
        le=100_000_000,
        description="Most predictions kept: past it the oldest are evicted, labelled or not, and "
        "counted (reason bound).",
    )
    settle_s: float = Field(
        default=86_400.0,
        ge=0.0,
        le=366 * 86_400.0,
        description="A window's quality is final once its last prediction is this old: later "
        "labels still join, but the window is then reported as settled.",
    )


class MonitorAppSettings(AppSettings):
    """The monitor application's `args` in serve.yaml: the shared fields (vigil.core.settings)
    and its own, fixed for a replica's life (the MonitorSettings above arrive as the
    deployment's user_config and change live). Environment variables prefixed VIGIL_ fill unset
    fields (VIGIL_TOKENS_FILE, VIGIL_OUTBOX_PATH); explicit args win. Validation errors do not
    quote their input (a public_url with credentials is refused, not repeated)."""

    model_config = SettingsConfigDict(hide_input_in_errors=True)  # merged with AppSettings'

    tick_s: float = Field(
        default=1.0,
        ge=0.01,
        le=60.0,
        description="How often time windows are checked for closing, with or without traffic.",
    )
    max_requests: int = Field(
        default=100_000,
        ge=1,
        le=10_000_000,
        description="Most request facts (latency, status) held per window; past it the latency "
        "quantiles come from a uniform sample (counts and error ratios stay exact).",
    )
    report_max_rows: int = Field(
        default=2000,
        ge=100,
        le=1_000_000,
        description="Most rows of each side (reference data, window) fed to Evidently's HTML "
        "report, evenly spaced: bounds its run time (seconds of CPU) and memory. Above 1000 "
        "reference rows Evidently picks distance tests, as monitoring.drift does.",
    )
    report_cache_bytes: int = Field(
        default=64 * 2**20,
        ge=8 * 2**20,
        le=16 * 2**30,
        description="Most bytes of gzip-compressed HTML reports kept (about 1.5 MB each, the "
        "newest per model version); past it those read least recently are dropped and built "
        "again when asked for.",
    )
    outbox_path: Path | None = Field(
        default=None,
        description="SQLite file (WAL mode) holding alert state and the webhook outbox; it must "
        "outlive the replica (a volume on Kubernetes). Unset: vigil-outbox.sqlite beside "
        "model_repository.",
    )
    outbox_retention_s: float = Field(
        default=7 * 86_400.0,
        ge=60.0,
        le=366 * 86_400.0,
        description="Delivered and dead events older than this (since created, and since their "
        "last delivery finished) are deleted from the outbox with their deliveries, about once a "
        "minute; pending ones never are. `vigil webhooks show` then says the event was pruned.",
    )
    outbox_max_events: int = Field(
        default=100_000,
        ge=100,
        le=10_000_000,
        description="Most events the outbox keeps: past it the oldest delivered and dead ones are "
        "deleted, however recent (pending ones never, so a target down for long may hold more).",
    )

    feedback: FeedbackStoreSettings = Field(
        default_factory=FeedbackStoreSettings,
        description="The join store of served predictions and their ground-truth labels.",
    )

    def labels_file(self) -> Path:
        """The join store: beside the outbox, so that it outlives the replica as the outbox does."""
        return self.outbox_file().with_name(LABELS_FILE_NAME)

    def outbox_file(self) -> Path:
        """The outbox in use: outbox_path, else vigil-outbox.sqlite beside the repository."""
        return beside_repository(self.outbox_path, self.model_repository, OUTBOX_FILE_NAME)

    public_url: str = Field(
        default="http://127.0.0.1:8000/monitor",
        min_length=8,
        max_length=2048,
        pattern=r"^https?://",
        description="The monitor's address as receivers reach it: events link to "
        "<public_url>/v1/models/<model>/drift and .../report, and name it as their source. "
        "It goes into every event, so it may carry no credentials, query or fragment.",
    )

    @field_validator("public_url")
    @classmethod
    def _public(cls, url: str) -> str:
        parts = urllib.parse.urlsplit(url)
        if "@" in parts.netloc or parts.query or parts.fragment or "?" in url or "#" in url:
            raise ValueError("public_url goes into every event sent: it may carry no user, "
                             "password, query or fragment (receivers authenticate to the "
                             "monitor with a bearer token)")
        return url
    log_interval_s: float = Field(
        default=10.0,
        ge=0.0,
        le=3600.0,
        description="Least time between two log lines about dropped samples of one kind.",
    )
