"""The monitor's own metrics, beside the per-version ones of monitoring.collector: alerts firing,
webhook delivery, and the size of what the monitor holds (versions, report cache, outbox), each
family declared once here and read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.collector import MV, counter, gauge
from monitoring.outbox import OutboxSize
from monitoring.outbox_schema import WRITE_FAILURE_REASONS
from monitoring.webhooks import OUTCOMES, SECONDS_BUCKETS, DeliverySnapshot, DeliveryStats
from vigil.core.rollout import RolloutState


FIRING = gauge("vigil_alert_firing", "1 while the alert of this rule fires for the model "
               "version, 0 when it does not.", *MV, "rule")
DELIVERIES = counter("vigil_webhook_deliveries_total", "Delivery attempts by outcome: delivered "
                     "(2xx), rejected (a status that is not retried: dead-lettered), http_error "
                     "(408, 429, 5xx: retried), timeout, connection_error.", "target", "outcome")
DEAD_LETTERS = counter("vigil_webhook_dead_letters_total", "Deliveries given up (refused, or out "
                       "of attempts).", "target")
PENDING = gauge("vigil_webhook_outbox_pending", "Deliveries waiting in the outbox (first attempt "
                "or retry).", "target")


class AlertCollector(Collector):
    """Alert states and webhook delivery, read at scrape time (on the monitor's window thread).

    ``vigil_alert_firing`` has one series per (model, version, rule) the rules have judged or
    that fires; delivery series exist per configured target (zeros included) and per target
    that still has rows in the outbox.
    """

    def __init__(
        self,
        firing: Callable[[], Iterable[tuple[str, str, str, bool]]],
        stats: DeliveryStats,
        targets: Callable[[], Iterable[str]],
    ) -> None:
        self._firing = firing
        self._stats = stats
        self._targets = targets

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        firing = FIRING.new()
        for model, version, rule, on in self._firing():
            firing.add_metric([model, version, rule], float(on))
        yield firing
        yield from _delivery_metrics(self._stats.snapshot(), self._targets())


def _delivery_metrics(stats: DeliverySnapshot, configured: Iterable[str]) -> list[Metric]:
    """The webhook delivery families of one consistent snapshot of the stats."""
    targets = sorted({*configured, *stats.pending, *(t for t, _ in stats.attempts)})
    attempts, dead, pending = DELIVERIES.new(), DEAD_LETTERS.new(), PENDING.new()
    # The one histogram, declared where it is filled.
    seconds = HistogramMetricFamily("vigil_webhook_delivery_seconds", "Duration of one delivery "
                                    "attempt, any outcome.", labels=["target"])
    for target in targets:
        for outcome in OUTCOMES:
            attempts.add_metric([target, outcome], stats.attempts.get((target, outcome), 0))
        dead.add_metric([target], stats.dead_letters.get(target, 0))
        pending.add_metric([target], stats.pending.get(target, 0))
        counts = stats.seconds_buckets.get(target, (0,) * (len(SECONDS_BUCKETS) + 1))
        cumulative, buckets = 0, []
        for bound, n in zip((*map(str, SECONDS_BUCKETS), "+Inf"), counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        seconds.add_metric([target], buckets, stats.seconds_sum.get(target, 0.0))
    return [attempts, dead, pending, seconds]


VERSIONS = gauge("vigil_monitored_versions", "Model versions whose windows and statistics the "
                 "monitor holds (the served ones).")
RELEASED = counter("vigil_monitor_released_versions_total", "Versions whose monitor state was "
                   "released because they are no longer served (retired, or their model "
                   "unloaded).")
REPORTS = gauge("vigil_report_cache_reports", "HTML reports kept in the report cache.")
REPORT_BYTES = gauge("vigil_report_cache_bytes", "Bytes of the reports kept in the report cache "
                     "(gzip-compressed; bounded by report_cache_bytes).")
OUTBOX_EVENTS = gauge("vigil_webhook_outbox_events", "Events held in the outbox (counted about "
                      "once a minute).")
OUTBOX_DELIVERIES = gauge("vigil_webhook_outbox_deliveries", "Delivery rows held in the outbox "
                          "by state: pending, delivered, dead (counted about once a minute; "
                          "retention deletes delivered and dead ones).", "state")
OUTBOX_BYTES = gauge("vigil_webhook_outbox_bytes", "Size of the outbox file and its write-ahead "
                     "log.")
OUTBOX_PRUNED = counter("vigil_webhook_outbox_pruned_events_total", "Delivered and dead events "
                        "deleted by the outbox's retention (since the file was created).")
OUTBOX_WRITE_FAILURES = counter("vigil_webhook_outbox_write_failures_total", "Writes to the "
                                "outbox (alert states, events, delivery results) that failed and "
                                "committed nothing, by reason: disk_full, io_error; each is "
                                "logged and tried again.", "reason")


@dataclass(frozen=True)
class Held:
    """What the monitor holds, that would grow with versions or time without its bound."""

    versions: int = 0
    released: int = 0
    reports: int = 0  # in the report cache
    report_bytes: int = 0
    outbox: OutboxSize | None = None  # None until the deliverer first counted it
    outbox_write_failures: Mapping[str, int] = field(default_factory=dict)  # reason -> writes


class StateCollector(Collector):
    """The size of the monitor's state (versions, report cache, outbox), read at scrape time."""

    def __init__(self, held: Callable[[], Held]) -> None:
        self._held = held

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        held = self._held()
        for family, value in ((VERSIONS, held.versions), (RELEASED, held.released),
                              (REPORTS, held.reports), (REPORT_BYTES, held.report_bytes)):
            metric = family.new()
            metric.add_metric([], value)
            yield metric
        yield from _outbox_metrics(held.outbox)
        failures = OUTBOX_WRITE_FAILURES.new()
        for reason in WRITE_FAILURE_REASONS:
            failures.add_metric([reason], held.outbox_write_failures.get(reason, 0))
        yield failures


def _outbox_metrics(size: OutboxSize | None) -> list[Metric]:
    """The outbox's size families (no samples before it was first counted)."""
    events, deliveries = OUTBOX_EVENTS.new(), OUTBOX_DELIVERIES.new()
    size_bytes, pruned = OUTBOX_BYTES.new(), OUTBOX_PRUNED.new()
    if size is not None:
        events.add_metric([], size.events)
        for state, rows in size.deliveries.items():
            deliveries.add_metric([state], rows)
        size_bytes.add_metric([], size.bytes)
        pruned.add_metric([], size.pruned_events)
    return [events, deliveries, size_bytes, pruned]


ROLLOUT_WEIGHT = gauge("vigil_rollout_weight", "Share of the model's unversioned requests the "
                       "rollout's candidate takes at its current step.", *MV)
ROLLOUT_STEP = gauge("vigil_rollout_step", "The rollout's current step, from 1.", *MV)
ROLLOUT_HALTED = gauge("vigil_rollout_halted", "1 while the rollout is halted (a step did not "
                       "pass before its deadline), waiting for an operator.", *MV)
ROLLOUT_CHECKS = counter("vigil_rollout_checks_total", "Rollout checks of judged candidate "
                         "windows by outcome: pass, fail, no_verdict.", "model", "check",
                         "outcome")


class RolloutCollector(Collector):
    """Running rollouts and their checks, read at scrape time (on the monitor's window
    thread); a model's series go when its rollout ends."""

    def __init__(self, running: Callable[[], Iterable[tuple[str, RolloutState]]],
                 checks: Callable[[], Iterable[tuple[tuple[str, str, str], int]]]) -> None:
        self._running = running
        self._checks = checks

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        weight, step, halted = ROLLOUT_WEIGHT.new(), ROLLOUT_STEP.new(), ROLLOUT_HALTED.new()
        for model, state in self._running():
            labels = [model, state.version]
            weight.add_metric(labels, state.weight)
            step.add_metric(labels, state.step + 1)
            halted.add_metric(labels, float(state.status == "halted"))
        checks = ROLLOUT_CHECKS.new()
        for (model, check, outcome), count in sorted(self._checks()):
            checks.add_metric([model, check, outcome], count)
        yield from (weight, step, halted, checks)
