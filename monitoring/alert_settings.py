"""Typed, bounded settings for alert rules and webhook targets (the Monitor's user_config).

A rule names one condition (``when``) over a closed window, the models and versions it watches,
and how many windows make it fire or resolve:

    alerts:
      - name: drift                   # unique; a label of vigil_alert_firing
        model: "*"                    # a model name or "*" (default)
        version: "*"                  # a version or "*" (default)
        when: {dataset_drift: true}   # exactly one condition, see Condition
        min_rows: 100                 # drift and quality conditions: fewer sampled rows -> no verdict
        for_windows: 2                # consecutive breaching windows before it fires
        resolve_windows: 2            # consecutive healthy windows before it resolves
        cooldown_s: 3600              # least time between two firings of this alert
        action: notify                # or rollback_canary (below)

A rule with ``action: rollback_canary`` is judged only on the version that is its model's canary
when a window closes (vigil.core.aliases); when it fires, the monitor clears the canary (production
takes all the traffic again, recorded in the audit log as the monitor's doing) and sends
``vigil.model.rolled_back`` instead of the condition's own event. The alert does not stay
firing: the canary it judged is gone, and a later canary of the same or another version is
judged afresh.

A webhook target says where events go and which secret signs them:

    webhooks:
      - name: retrain
        url: http://127.0.0.1:9000/events
        secret_env: VIGIL_WEBHOOK_SECRET        # or [NEW, OLD] while rotating
        events: [vigil.drift.detected]          # default: every type
        timeout_s: 10
        max_attempts: 8

The secrets themselves live in the Monitor's environment (``whsec_`` + base64), never here.
A URL may still carry credentials (``user:password@``, a token in its query): wherever a URL is
shown (logs, ``/v1/status``, validation errors, delivery errors and the outbox's dead letters)
it is shown redacted (``redact_url``, ``scrub``); only the deliverer sends to the real one.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Mapping
from typing import Literal, get_args

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

EventType = Literal[
    "vigil.drift.detected",
    "vigil.prediction_drift.detected",
    "vigil.data_quality.degraded",
    "vigil.latency.slo_breached",
    "vigil.errors.rate_exceeded",
    "vigil.traffic.stopped",
    "vigil.shadow.disagrees",
    "vigil.model.rolled_back",
    "vigil.alert.resolved",
    "vigil.rollout.started",
    "vigil.rollout.advanced",
    "vigil.rollout.halted",
    "vigil.rollout.promoted",
    "vigil.rollout.rolled_back",
    "vigil.quality.degraded",
    "vigil.labels.coverage_low",
    "vigil.quality.estimated_drop",
]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)
ROLLED_BACK = "vigil.model.rolled_back"
Action = Literal["notify", "rollback_canary"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # with fullmatch: no "name\n"
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SECRET_PREFIX = "whsec_"  # nosec B105 # a public prefix
_MIN_SECRET_BYTES = 16  # Standard Webhooks asks for 24..64 random bytes; refuse the obviously weak
HIDDEN = "***"
_MIN_SCRUBBED = 4  # a secret part shorter than this is not searched for alone in free text


def redact_url(url: str) -> str:
    """The URL as it may be shown: user and password, query values and the fragment replaced
    by ``***`` (scheme, host, port, path and query names kept)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return HIDDEN
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    query = "&".join(f"{name}={HIDDEN}" if sep else name
                     for name, sep, _ in (p.partition("=") for p in parts.query.split("&") if p))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query,
                                    HIDDEN if parts.fragment else ""))


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be secret, as they may appear in text (raw and decoded),
    longest first: its userinfo, user, password, query values and fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return [url]
    found: set[str] = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        found |= {userinfo, *userinfo.split(":", 1)}
    if parts.query:
        found |= {value for _, _, value in (p.partition("=") for p in parts.query.split("&"))}
    if parts.fragment:
        found.add(parts.fragment)
    found |= {urllib.parse.unquote(part) for part in found}
    return sorted((p for p in found if len(p) >= _MIN_SCRUBBED), key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (an error, a receiver's answer) with the URL redacted wherever it appears, and
    each secret part of it too."""
    for form in (url, urllib.parse.unquote(url)):
        text = text.replace(form, redact_url(url))
    for secret in url_secrets(url):
        text = text.replace(secret, HIDDEN)
    return text


# Quality from labels (monitoring.labels_quality): the metrics a rule may name, and which of them
# the model gate scores on the held-out set (the reference a drop is measured from).
QUALITY_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss",
                   "roc_auc", "mae", "rmse", "mape", "r2")
REFERENCED_METRICS = ("accuracy", "roc_auc", "rmse")
LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse", "mape"})
QualityMetric = Literal["accuracy", "precision_macro", "recall_macro", "f1_macro", "log_loss",
                        "roc_auc", "mae", "rmse", "mape", "r2"]


class QualityBelow(BaseModel):
    """The window's quality from labels is worse than `value`: below it, or above it for an
    error metric (log_loss, mae, rmse, mape)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: QualityMetric
    value: float = Field(allow_inf_nan=False)


class QualityDrop(BaseModel):
    """The window's quality from labels is worse than the version's reference (the model gate's
    score on its held-out set) by at least `by`, in the metric's own units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["accuracy", "roc_auc", "rmse"] = Field(
        description="A metric the model gate scores: accuracy, roc_auc (classifiers), rmse.")
    by: float = Field(gt=0.0, allow_inf_nan=False)


class EstimatedQualityDrop(BaseModel):
    """The window's quality estimated from its predictions' calibrated probabilities (CBPE,
    before any label) is worse than the same metric on the version's held-out set by at least
    `by`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: Literal["accuracy", "f1", "f1_macro", "roc_auc"]
    by: float = Field(gt=0.0, allow_inf_nan=False)


class Condition(BaseModel):
    """Exactly one of these, over one closed window of a model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset_drift: Literal[True] | None = Field(
        default=None, description="The window's dataset drift verdict (share of drifted features "
        "at or above the monitor's drift_share)."
    )
    drift_share_at_least: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Share of tested features that drifted is at or "
        "above this."
    )
    features_drifted: list[str] | None = Field(
        default=None, min_length=1, max_length=10_000,
        description="Any of these features drifted."
    )
    prediction_drift: Literal[True] | None = Field(
        default=None, description="Any model output drifted against the reference predictions."
    )
    missing_ratio_above: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Some column's share of missing values is above "
        "this."
    )
    out_of_range_ratio_above: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Some numeric column's share of values outside "
        "the reference range is above this."
    )
    unseen_category_ratio_above: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="Some categorical column's share of values never "
        "seen in the reference is above this."
    )
    latency_p99_above_s: float | None = Field(
        default=None, gt=0.0, le=3600.0, description="The window's p99 request latency (seconds) "
        "is above this SLO."
    )
    error_ratio_above: float | None = Field(
        default=None, ge=0.0, lt=1.0, description="The window's share of server errors (status "
        ">= 500 or no answer) is above this."
    )
    shadow_agreement_below: float | None = Field(
        default=None, gt=0.0, le=1.0, description="The share of rows on which this version, run "
        "as its model's shadow, agreed with production's answers is below this (min_rows: "
        "fewer compared rows give no verdict)."
    )
    no_traffic_for_s: float | None = Field(
        default=None, ge=1.0, le=30 * 86_400.0, description="No request reached the monitor for "
        "this many seconds (judged every tick, not per window)."
    )
    quality_below: QualityBelow | None = Field(
        default=None, description="The window's quality from labels ({metric, value}) is worse "
        "than value. Judged once the window settled (feedback.settle_s after it closed); "
        "min_rows counts labelled rows."
    )
    quality_drop: QualityDrop | None = Field(
        default=None, description="The window's quality from labels ({metric, by}) is worse "
        "than the version's reference by at least `by`; no verdict for a version the gate "
        "never scored. Judged once the window settled; min_rows counts labelled rows."
    )
    estimated_quality_drop: EstimatedQualityDrop | None = Field(
        default=None, description="The window's quality estimated before labels (CBPE, from "
        "calibrated probabilities; {metric, by}) is worse than on the held-out set by at least "
        "`by`. Judged 10 s after the window closed; no verdict for a version without a "
        "calibration; min_rows counts the rows estimated."
    )
    label_coverage_below: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Labelled rows / rows served in the window "
        "is below this once it settled: the feedback pipeline stopped or lags. min_rows counts "
        "served rows."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"a rule's `when` needs exactly one condition of: {names} "
                             f"(got {given or 'none'})")
        return self

    @field_validator("features_drifted")
    @classmethod
    def _features_named(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and any(not 0 < len(n) <= 256 for n in names):
            raise ValueError("feature names must have 1..256 characters")
        return names

    @property
    def kind(self) -> str:
        """The condition's field name (the one that is set)."""
        return next(k for k, v in self if v is not None)

    @property
    def value(self) -> float | bool | list[str]:
        return getattr(self, self.kind)

    @property
    def family(self) -> Literal["drift", "quality", "requests", "shadow", "traffic", "labels",
                                "estimated"]:
        """What a window must hold for a verdict: sampled rows, requests, compared shadow rows,
        labels (judged when the window settles), or nothing."""
        kind = self.kind
        if kind in ("quality_below", "quality_drop", "label_coverage_below"):
            return "labels"
        if kind == "estimated_quality_drop":
            return "estimated"
        if kind in ("dataset_drift", "drift_share_at_least", "features_drifted", "prediction_drift"):
            return "drift"
        if kind == "shadow_agreement_below":
            return "shadow"
        if kind.endswith("_ratio_above") and kind != "error_ratio_above":
            return "quality"
        if kind == "no_traffic_for_s":
            return "traffic"
        return "requests"

    @property
    def event_type(self) -> str:
        """The CloudEvents type this condition fires."""
        return {
            "dataset_drift": "vigil.drift.detected",
            "drift_share_at_least": "vigil.drift.detected",
            "features_drifted": "vigil.drift.detected",
            "prediction_drift": "vigil.prediction_drift.detected",
            "latency_p99_above_s": "vigil.latency.slo_breached",
            "error_ratio_above": "vigil.errors.rate_exceeded",
            "no_traffic_for_s": "vigil.traffic.stopped",
            "shadow_agreement_below": "vigil.shadow.disagrees",
            "quality_below": "vigil.quality.degraded",
            "quality_drop": "vigil.quality.degraded",
            "label_coverage_below": "vigil.labels.coverage_low",
            "estimated_quality_drop": "vigil.quality.estimated_drop",
        }.get(self.kind, "vigil.data_quality.degraded")


class AlertRule(BaseModel):
    """One rule; see the module docstring for the YAML form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique among the rules: letters, digits, '_', '.', '-'.")
    model: str = Field(default="*", min_length=1, max_length=256,
                       description="The model this rule watches, or '*' for every model.")
    version: str = Field(default="*", min_length=1, max_length=256,
                         description="The version this rule watches, or '*' for every version.")
    when: Condition = Field(description="The condition, exactly one.")
    min_rows: int = Field(
        default=100, ge=1, le=10_000_000, description="Drift and quality conditions: a window "
        "with fewer sampled rows gives no verdict (neither breaching nor healthy); shadow "
        "agreement: likewise, in rows compared with production."
    )
    min_requests: int = Field(
        default=10, ge=1, le=10_000_000, description="Latency and error conditions: a window "
        "with fewer requests gives no verdict."
    )
    for_windows: int = Field(default=1, ge=1, le=1000,
                             description="Consecutive breaching windows before the alert fires.")
    resolve_windows: int = Field(
        default=1, ge=1, le=1000, description="Consecutive healthy windows before a firing alert "
        "resolves."
    )
    cooldown_s: float = Field(
        default=0.0, ge=0.0, le=30 * 86_400.0, description="Least time between two firings of "
        "this alert (same model, version and rule); a breach inside it fires once it has passed."
    )
    action: Action = Field(
        default="notify", description="'notify': send the condition's event to the webhook "
        "targets (and its resolution). 'rollback_canary': judge only the version that is its "
        "model's canary when a window closes, and when the rule fires clear that canary "
        "(production takes all the traffic; audit log actor 'vigil-monitor (rule NAME)') and "
        "send vigil.model.rolled_back instead; not for no_traffic_for_s."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"rule names are 1..64 letters, digits, '_', '.', '-': {name[:40]!r}")
        return name

    @model_validator(mode="after")
    def _traffic_is_continuous(self) -> AlertRule:
        if self.when.family == "traffic" and (self.for_windows, self.resolve_windows) != (1, 1):
            raise ValueError(f"rule {self.name!r}: no_traffic_for_s is judged continuously; "
                             "for_windows and resolve_windows do not apply (leave them at 1)")
        if self.when.family == "traffic" and self.action == "rollback_canary":
            raise ValueError(f"rule {self.name!r}: rollback_canary judges closed windows of a "
                             "canary; no_traffic_for_s is not one of their conditions")
        return self

    @property
    def event_type(self) -> str:
        """The CloudEvents type a firing of this rule sends."""
        return ROLLED_BACK if self.action == "rollback_canary" else self.when.event_type

    def watches(self, model: str, version: str) -> bool:
        return self.model in ("*", model) and self.version in ("*", version)


class WebhookTarget(BaseModel):
    """One receiver of events. Its URL is redacted in every dump (status, logs) and in
    validation errors; `url` holds the real one, for the deliverer."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str = Field(description="Unique among the targets; a metrics label and outbox key.")
    url: str = Field(min_length=8, max_length=2048, description="http(s) URL events are POSTed to.")
    secret_env: str | list[str] = Field(
        description="Environment variable(s) of the Monitor holding the signing secret "
        "(whsec_...). Two while rotating: events carry both signatures.",
    )
    events: list[EventType] | None = Field(
        default=None, min_length=1, description="Event types sent to this target; unset: all."
    )
    timeout_s: float = Field(default=10.0, gt=0.0, le=300.0,
                             description="Whole-attempt limit: connect, send and answer.")
    max_attempts: int = Field(default=8, ge=1, le=100,
                              description="Attempts before an event is dead-lettered.")
    concurrency: int = Field(default=4, ge=1, le=64,
                             description="Deliveries in flight to this target at once.")
    backoff_s: float = Field(default=1.0, gt=0.0, le=3600.0,
                             description="First retry delay; doubles per attempt, with jitter.")
    max_backoff_s: float = Field(default=300.0, gt=0.0, le=86_400.0,
                                 description="Cap on a retry delay, Retry-After included.")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError(f"target names are 1..64 letters, digits, '_', '.', '-': {name[:40]!r}")
        return name

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        shown = redact_url(url)[:60]
        if not re.match(r"^https?://[^\s/?#]+", url):
            raise ValueError(f"a webhook url must be http:// or https://: {shown!r}")
        try:  # what the deliverer's client will be asked to send to
            httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"not a valid webhook url ({scrub(str(exc), url)}): "
                             f"{shown!r}") from None
        return url

    @field_serializer("url")
    def _shown(self, url: str) -> str:
        return redact_url(url)

    @field_validator("secret_env")
    @classmethod
    def _env_names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not 1 <= len(names) <= 2:
            raise ValueError("secret_env names one variable, or two while rotating")
        for name in names:
            if not _ENV.fullmatch(name):
                raise ValueError(f"not an environment variable name: {name[:40]!r}")
        return value

    @property
    def secret_envs(self) -> list[str]:
        return [self.secret_env] if isinstance(self.secret_env, str) else list(self.secret_env)

    def wants(self, event_type: str) -> bool:
        return self.events is None or event_type in self.events

    def secrets(self, environ: Mapping[str, str]) -> list[bytes]:
        """The signing keys from `environ`; ValueError naming what is missing or malformed."""
        return [secret_key(environ.get(name), name, self.name) for name in self.secret_envs]


def secret_key(value: str | None, env: str, target: str) -> bytes:
    """A Standard Webhooks secret (``whsec_`` + base64) as key bytes."""
    if not value:
        raise ValueError(f"webhook target {target!r}: environment variable {env} is not set in "
                         "the monitor's environment (a whsec_... secret)")
    if not value.startswith(_SECRET_PREFIX):
        raise ValueError(f"webhook target {target!r}: {env} must hold a secret starting with "
                         f"{_SECRET_PREFIX!r}")
    body = value[len(_SECRET_PREFIX):]
    try:  # padding optional, as receivers' libraries accept it
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"webhook target {target!r}: {env} is not whsec_ + base64") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(f"webhook target {target!r}: the secret in {env} has {len(key)} bytes; "
                         f"use at least {_MIN_SECRET_BYTES} (24 or more recommended)")
    return key


def check_unique(rules: list[AlertRule], targets: list[WebhookTarget]) -> None:
    for kind, names in (("rule", [r.name for r in rules]), ("webhook target", [t.name for t in targets])):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{kind} names must be unique: {dupes}")
