"""Typed, bounded settings for a serving replica; with vigil.core.settings, the only place a replica
reads the environment."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vigil.core.settings import AppSettings

MiB = 1024 * 1024


class RuntimeSettings(BaseModel):
    """How onnxruntime sessions are created."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    providers: list[Literal["cuda", "cpu"]] = Field(
        default=["cpu"],
        min_length=1,
        description="Execution providers in order of preference. 'cuda' falls back to 'cpu' "
        "(logged once) unless require_gpu is set.",
    )
    require_gpu: bool = Field(
        default=False, description="Fail replica start when 'cuda' is asked for but not available."
    )
    cuda_device_id: int = Field(default=0, ge=0, le=64, description="CUDA device ordinal.")
    cuda_memory_limit_bytes: int | None = Field(
        default=None,
        ge=64 * MiB,
        description="Cap on the CUDA provider's memory arena (gpu_mem_limit); unset: no cap.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="Threads inside one operator; 0 lets onnxruntime use every core. The default "
        "suits several small replicas sharing a node.",
    )
    inter_op_threads: int = Field(
        default=1, ge=0, le=256, description="Threads across operators (parallel execution mode)."
    )
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"] = Field(
        default="all", description="onnxruntime graph optimisation level."
    )


class BatchSettings(BaseModel):
    """Live batching knobs: a deployment's user_config, applied by reconfigure() without restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_rows: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Most rows stacked into one model run. A request with more rows runs alone.",
    )
    batch_wait_timeout_s: float = Field(
        default=0.002,
        ge=0.0,
        le=1.0,
        description="Longest wait for more rows once a batch has started to form. Waiting happens "
        "only under concurrent load: a lone request never waits.",
    )
    enabled: bool = Field(
        default=True, description="Stack concurrent requests; off runs each request alone."
    )
    inline_below_s: float = Field(
        default=0.0005,
        ge=0.0,
        le=0.01,
        description="A request that finds no batch queued or running runs on the replica's "
        "event loop itself (no hop to the batch thread and back) while the version's recent runs "
        "took less than this (a moving average): for a fast model the hop costs more than the "
        "run. 0: every run on the batch thread.",
    )


class LoadingSettings(BaseModel):
    """Which versions a replica keeps loaded, and how it lets one go. Every version an alias
    points at (production, canary, shadow) is loaded; any other published, unretired version
    only while it is in use: it loads when published or first asked for by name
    (/versions/{v}/infer), and is unloaded once idle for `unaliased_idle_s`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unaliased_idle_s: float = Field(
        default=600.0,
        ge=0.0,
        le=7 * 86400.0,
        description="A version no alias points at is unloaded once it has had no request, no "
        "alias and no publication for this long (checked on each alias change and every poll, "
        "about 30 s); a request naming it loads it again. 0: unloaded at the next check.",
    )
    max_unaliased: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Most versions of one model without an alias that a replica keeps loaded; "
        "past it the least recently used is unloaded. 0: only aliased versions are served, and a "
        "request naming another is answered 503.",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        le=600.0,
        description="How long a version that is retired, unloaded or idle waits for the "
        "requests already routed to it (queued or running) before its session is closed.",
    )


class SamplingSettings(BaseModel):
    """What a replica sends to the monitor, and how much it may hold while it cannot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="Send samples and request facts to the monitor.")
    sample_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Probability that each row (input and output) is sampled. Latency and status "
        "of every request are sent regardless.",
    )
    max_rows_per_request: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Most rows one request contributes to the monitor (a uniform sample of its "
        "sampled rows), so that one large request cannot fill whole windows on its own.",
    )
    buffer_rows: int = Field(
        default=20_000,
        ge=1,
        le=10_000_000,
        description="Most sampled rows held per model version between flushes; the oldest are "
        "dropped (and counted) beyond it.",
    )
    buffer_requests: int = Field(
        default=20_000,
        ge=1,
        le=10_000_000,
        description="Most per-request facts held per model version between flushes.",
    )
    flush_interval_s: float = Field(
        default=1.0, ge=0.05, le=600.0, description="How often buffered samples go to the monitor."
    )
    flush_timeout_s: float = Field(
        default=10.0,
        ge=0.1,
        le=600.0,
        description="A flush the monitor has not accepted by then is dropped and counted.",
    )
    canary_agreement_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of the requests a canary answers that production also answers, off "
        "the response path, to count how often the two agree (a rollout's agreement check); 0 "
        "turns it off. Costs production this share of the canary's inferences.",
    )
    monitor_app: str = Field(
        default="monitor", min_length=1, description="Serve application of the monitor."
    )
    monitor_deployment: str = Field(
        default="Monitor", min_length=1, description="Deployment name of the monitor."
    )


class FrontDoorSettings(BaseModel):
    """How long a client may take to send an inference body, and how many inference requests
    one client may have in flight on a replica: so that slow or stalled clients cannot hold the
    replica's slots (docs/security.md, "Connection and body limits")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    body_grace_s: float = Field(
        default=5.0,
        gt=0.0,
        le=600.0,
        description="Time an inference request's body may fall behind its rate floor: a body "
        "must be complete within this plus 1 s per body_min_rate_bytes_per_s bytes received, "
        "else it is answered 408 and its slot freed (a stalled body: this long after its last "
        "progress is used up).",
    )
    body_min_rate_bytes_per_s: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * MiB,
        description="Rate floor of a body after body_grace_s: each this many bytes received "
        "give it one more second. A body sent at this rate or faster is never cut off.",
    )
    max_in_flight_per_client: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Most inference requests one client may have in flight on one replica (its "
        "body being received or its answer being computed); past it 429 with Retry-After: 1. A "
        "client is its bearer token's name, else its address.",
    )
    trusted_proxies: list[str] = Field(
        default=[],
        max_length=1024,
        description="Peer addresses whose X-Forwarded-For is believed (its last address names the "
        "client); from any other peer the header is ignored. Ray's HAProxy adds none.",
    )


class FeedbackSettings(BaseModel):
    """What a replica keeps of each request so that a ground-truth label can be joined to it
    later (monitoring.label_store holds the records; docs/monitoring.md "Labels and quality")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=True,
        description="Record every answered request of a profiled version (its id, version, time "
        "and prediction outputs, never its inputs) for the monitor's join store, assign an id to "
        "a request that has none, and return it as the response's `id` and `X-Request-Id`. Needs "
        "sampling.enabled (the records travel with the samples).",
    )
    buffer_requests: int = Field(
        default=50_000,
        ge=1,
        le=10_000_000,
        description="Most request records held between flushes (all versions together); past it "
        "the oldest are dropped and counted (vigil_feedback_records_dropped_total).",
    )


class ServerSettings(AppSettings):
    """Everything one serving replica needs: the shared fields (vigil.core.settings) and its own.
    Environment variables prefixed VIGIL_ fill unset fields (nested with '__', e.g.
    VIGIL_RUNTIME__PROVIDERS='["cuda","cpu"]'); explicit application args (serve.yaml `args`)
    win."""

    max_body_bytes: int = Field(
        default=64 * MiB,
        ge=1024,
        le=4096 * MiB,
        description="Largest request body accepted (413), binary tensor data included.",
    )
    max_json_body_bytes: int = Field(
        default=4 * MiB,
        ge=1024,
        le=1024 * MiB,
        description="Largest JSON accepted (413): a whole JSON request, or the JSON header of a "
        "binary one. Parsed JSON numbers take ~10x their text in memory; large tensors belong in "
        "the binary extension.",
    )
    max_bytes_elements: int = Field(
        default=262_144,
        ge=1,
        le=100_000_000,
        description="Most elements of one BYTES tensor in a request (413 above): each becomes a "
        "Python object, so this bounds the work one request can ask for.",
    )
    alias_apply_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        le=600.0,
        description="How long an alias change (promote, canary, rollback...) waits for every "
        "replica to serve it before answering converged: false.",
    )
    runtime: RuntimeSettings = Field(
        default_factory=RuntimeSettings, description="How onnxruntime sessions are created."
    )
    batching: BatchSettings = Field(
        default_factory=BatchSettings,
        description="Initial batching knobs; a deployment's user_config overrides them live.",
    )
    loading: LoadingSettings = Field(
        default_factory=LoadingSettings,
        description="Which versions stay loaded, and how an unloaded one is drained first.",
    )
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="Sampling of live traffic for the monitor.",
    )
    front_door: FrontDoorSettings = Field(
        default_factory=FrontDoorSettings,
        description="Body deadlines and the per-client cap on in-flight inference requests.",
    )
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings,
        description="Request ids and the prediction records that labels are joined to.",
    )
