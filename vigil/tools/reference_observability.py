"""The metrics and Prometheus reference pages, read from the metric declarations, the rule files
and the generated Grafana dashboard."""

from __future__ import annotations

import collections.abc
import inspect
import json
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from vigil.tools.reference_markdown import header, table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: configs/ is not installed
PROMETHEUS = ROOT / "configs" / "prometheus"
DASHBOARD = ROOT / "configs" / "grafana" / "vigil.json"


@dataclass(frozen=True)
class MetricDoc:
    """One metric as a scraper sees it."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    buckets: str = ""


def replica_metrics() -> list[MetricDoc]:
    """The metrics a serving replica declares (every ray.serve.metrics object it holds), with the
    `ray_` prefix Ray's exporter adds."""
    from ray.util.metrics import Metric

    from serving.metrics import ReplicaMetrics

    found = []
    for metric in vars(ReplicaMetrics()).values():
        if isinstance(metric, Metric):
            boundaries = getattr(metric, "boundaries", None)
            found.append(MetricDoc(
                "ray_" + metric._name, type(metric).__name__.lower(), tuple(metric._tag_keys),
                metric._description, ", ".join(map(str, boundaries)) if boundaries else ""))
    return found


def _empty(hint: Any) -> Any:
    """An empty source for a collector's constructor argument: a callable that returns an empty
    value of its return type, or the argument's own class built without arguments."""
    if typing.get_origin(hint) is collections.abc.Callable:
        value = _empty(typing.get_args(hint)[-1])
        return lambda: value
    from monitoring.label_store import LabelStore

    if hint is LabelStore:  # the join store's counters, over an empty database in memory
        return LabelStore(Path(":memory:"), ttl_s=1.0, max_pending=10)
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type) and issubclass(origin, collections.abc.Iterable):
        return ()  # nothing to report: no versions, no firing alerts, no targets
    return hint()  # a stats or state holder, empty by default


def collectors(module: ModuleType) -> Iterator[Any]:
    """Each collector class defined in `module` (one with its own `collect`), built over empty
    sources."""
    for value in vars(module).values():
        if (isinstance(value, type) and value.__module__ == module.__name__
                and callable(vars(value).get("collect"))):
            hints = typing.get_type_hints(value.__init__)  # type: ignore[misc]
            params = inspect.signature(value).parameters
            yield value(**{name: _empty(hints[name]) for name, param in params.items()
                           if param.default is inspect.Parameter.empty})  # optional: left out


def monitor_metrics() -> list[MetricDoc]:
    """Every family the monitor's collectors yield (each family on every scrape, with or without
    samples)."""
    from monitoring import collector, collector_labels, collector_ops

    found = []
    for instance in [*collectors(collector), *collectors(collector_ops),
                     *collectors(collector_labels)]:
        for family in instance.collect():
            # prometheus_client keeps a counter's name without `_total`; the samples carry it
            name = family.name + ("_total" if family.type == "counter" else "")
            found.append(MetricDoc(name, family.type, tuple(getattr(family, "_labelnames", ())),
                                   family.documentation))
    return found


def metrics_page() -> str:
    parts = [header("serving/metrics.py, monitoring/collector.py, collector_ops.py and "
                    "collector_labels.py"),
             "# Metrics", "",
             "Every metric Vigil exports, read from where it is declared. How they are scraped, "
             "recorded and drawn: [Observability](../observability.md).", "",
             "## The model server's replicas", "",
             "Declared with `ray.serve.metrics` (`serving/metrics.py`) and exported by Ray's "
             "metrics agent on each node, which prefixes `ray_` and adds its own labels (the "
             "application, deployment and replica among them): one series per replica, so sum "
             "them in queries. Histogram buckets are in seconds or rows, as the name says.", ""]
    replicas = [(f"`{m.name}`", m.kind, ", ".join(m.labels), m.help, m.buckets)
                for m in replica_metrics()]
    parts += [table(("metric", "type", "labels", "help", "buckets"), replicas), "",
              "## The monitor", "",
              "Yielded by the monitor's collectors (`monitoring/collector.py`, "
              "`collector_ops.py`) at every scrape of `/monitor/metrics` (a `metrics` or "
              "`monitor` token), without a `ray_` prefix.", ""]
    monitor = [(f"`{m.name}`", m.kind, ", ".join(m.labels), m.help) for m in monitor_metrics()]
    parts.append(table(("metric", "type", "labels", "help"), monitor))
    return "\n".join(parts).rstrip() + "\n"


def _rules(name: str) -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load((PROMETHEUS / name).read_text())["groups"]:
        yield from group["rules"]


def _panels(dashboard: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(row title, panel) of every panel, collapsed rows included."""
    row = ""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            row = panel["title"]
            yield from ((row, p) for p in panel.get("panels", []))
        else:
            yield row, panel


def prometheus_page() -> str:
    parts = [header("configs/prometheus/*_rules.yml and configs/grafana/vigil.json"),
             "# Prometheus rules and the dashboard", "",
             "What `configs/prometheus/` and `configs/grafana/` hold, read from the files "
             "themselves (the chart ships the same files). How to run them: "
             "[Observability](../observability.md).", "", "## Alerts", "",
             "`configs/prometheus/alerting_rules.yml`.", ""]
    alerts = [(f"`{r['alert']}`", r.get("labels", {}).get("severity", ""), r.get("for", ""),
               f"`{' '.join(r['expr'].split())}`", r.get("annotations", {}).get("description", ""))
              for r in _rules("alerting_rules.yml")]
    parts += [table(("alert", "severity", "for", "expression", "description"), alerts), "",
              "## Recorded series", "",
              "`configs/prometheus/recording_rules.yml`: Prometheus's `level:metric:operations` "
              "names (the labels kept, Vigil's name for the metric, what was applied).", ""]
    records = [(f"`{r['record']}`", f"`{' '.join(r['expr'].split())}`")
               for r in _rules("recording_rules.yml")]
    parts += [table(("series", "expression"), records), "", "## Dashboard panels", "",
              "`configs/grafana/vigil.json` (uid `vigil`), generated by "
              "`vigil/tools/dashboards.py`: its rows and panels.", ""]
    panels = [(row, f"**{p.get('title', '')}**", p.get("description", ""))
              for row, p in _panels(json.loads(DASHBOARD.read_text()))]
    parts.append(table(("row", "panel", "what it shows"), panels))
    return "\n".join(parts).rstrip() + "\n"
