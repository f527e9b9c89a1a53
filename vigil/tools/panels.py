"""Grafana panel builders with Vigil's defaults (grafana-foundation-sdk), and the PromQL pieces
the dashboard's queries are made of: rates and histogram quantiles summed across replicas."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
MV = 'model=~"$model", version=~"$version"'  # the model and version variables, as a matcher
RATE = "[$__rate_interval]"
QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class Q:
    """One panel target: a PromQL expression and its legend."""

    expr: str
    legend: str = ""
    kind: str = "range"  # range, instant (a table or stat of the latest values), heatmap


def select(metric: str, matcher: str) -> str:
    """A vector selector: the metric, with the label matchers when there are any."""
    return f"{metric}{{{matcher}}}" if matcher else metric


def rate(metric: str, by: str, matcher: str = MV) -> str:
    """Per-second rate of a counter (or of histogram buckets), summed across replicas by `by`."""
    return f"sum by ({by}) (rate({select(metric, matcher)}{RATE}))"


def quantile(q: float, histogram: str, by: str, matcher: str = MV) -> str:
    """A quantile from a histogram's buckets, summed across replicas first."""
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', 'le, ' + by, matcher)})"


def quantiles(histogram: str, by: str, matcher: str = MV, legend: str = "") -> list[Q]:
    """p50, p95 and p99 from a histogram's buckets."""
    return [Q(quantile(q, histogram, by, matcher), f"{legend} p{round(q * 100)}".strip())
            for q in QUANTILES]


def table_legend() -> cb.VizLegendOptions:
    """A legend table under the graph, with each series' mean, max and last value."""
    return (cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM).show_legend(True)
            .calcs(["mean", "max", "lastNotNull"]))


def multi_tooltip() -> cb.VizTooltipOptions:
    return cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)


def mapping(*states: tuple[int, str, str]) -> list[dm.ValueMapping]:
    return [dm.ValueMap({str(value): dm.ValueMappingResult(text=text, color=color, index=i)
                         for i, (value, text, color) in enumerate(states)})]


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
        [dm.Threshold(value=value, color=color) for value, color in steps])


OK_FIRING = mapping((0, "ok", "green"), (1, "firing", "red"))
NO_DRIFT_DRIFT = mapping((0, "no drift", "green"), (1, "drift", "red"))


def targets(panel: Any, queries: Sequence[Q]) -> Any:
    """Add the queries to any panel builder, as targets A, B, ..."""
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        target = prometheus.Dataquery().expr(q.expr).legend_format(q.legend or "__auto").ref_id(ref)
        if q.kind == "instant":
            target = target.instant().format(pm.PromQueryFormat.TABLE)
        elif q.kind == "heatmap":
            target = target.range().format(pm.PromQueryFormat.HEATMAP)
        else:
            target = target.range()
        panel = panel.with_target(target)
    return panel


def common(panel: Any, title: str, description: str, unit: str, queries: Sequence[Q],
           width: int, height: int) -> Any:
    """What every panel has: title, description, data source, unit, size, queries."""
    panel = panel.title(title).description(description).datasource(DS).unit(unit)
    return targets(panel.span(width).height(height), queries)


def graph(title: str, description: str, unit: str, queries: Sequence[Q], *, width: int = 12,
          height: int = 8, stack: bool = False, min_val: float | None = 0,
          max_val: float | None = None, steps: bool = False) -> timeseries.Panel:
    panel = common(timeseries.Panel(), title, description, unit, queries, width, height)
    panel = panel.legend(table_legend()).tooltip(multi_tooltip()).fill_opacity(10).line_width(1)
    if steps:
        panel = panel.line_interpolation(cm.LineInterpolation.STEP_AFTER)
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(40)
    if min_val is not None:
        panel = panel.min(min_val)
    if max_val is not None:
        panel = panel.max(max_val)
    return panel


def single(title: str, description: str, unit: str, queries: Sequence[Q], *, width: int = 6,
           height: int = 6, mappings: list[dm.ValueMapping] | None = None,
           steps: db.ThresholdsConfig | None = None) -> stat.Panel:
    panel = common(stat.Panel(), title, description, unit, queries, width, height)
    panel = (panel.reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
             .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.AREA)
             .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
             .thresholds(steps or thresholds((None, "green"))))
    return panel.mappings(mappings) if mappings else panel


def timeline(title: str, description: str, queries: Sequence[Q], mappings: list[dm.ValueMapping],
             *, width: int = 12, height: int = 8) -> statetimeline.Panel:
    panel = common(statetimeline.Panel(), title, description, "none", queries, width, height)
    return (panel.mappings(mappings).thresholds(thresholds((None, "green"), (1, "red")))
            .show_value(cm.VisibilityMode.NEVER).merge_values(True)
            .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                    .placement(cm.LegendPlacement.BOTTOM).show_legend(True)))


def distribution(title: str, description: str, unit: str, query: Q, *, width: int = 12,
                 height: int = 8) -> heatmap.Panel:
    panel = common(heatmap.Panel(), title, description, unit, [query], width, height)
    return panel.calculate(False).show_legend().show_tooltip().show_y_histogram()


def row(title: str, panels: Sequence[Any]) -> db.Row:
    """A collapsed row holding the panels."""
    row = db.Row(title)
    for panel in panels:
        row = row.with_panel(panel)
    return row.collapsed(True)
