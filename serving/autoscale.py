"""The autoscaling policy of the serving deployment: replicas for the inference requests being
worked on, leaving out those whose body is still arriving.

Serve's controller runs this (pickled by value from `autoscaling_config.policy`), so it imports
nothing but the standard library: the controller has neither onnxruntime nor Vigil's settings.
"""

from __future__ import annotations

from typing import Any

WORKING_REQUESTS = "vigil_working_requests"  # ModelServer.record_autoscaling_stats reports it


def working_requests(ctx: Any) -> float | None:
    """The deployment's working requests: the sum over its replicas of their latest reports of
    WORKING_REQUESTS (averaged by Serve over look_back_period_s); None while no replica has
    reported it."""
    metrics = ctx.aggregated_metrics or {}
    per_replica = metrics.get(WORKING_REQUESTS)
    if not per_replica:
        return None
    return float(sum(per_replica.values()))


def working_requests_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve's default rule (replicas = ongoing requests / target_ongoing_requests) on working
    requests instead of ongoing ones. Serve applies min/max_replicas, the up- and downscale
    delays and factors around it. Until replicas report, Serve's own count stands in."""
    working = working_requests(ctx)
    if working is None:
        working = float(ctx.total_num_requests)
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    return working / ctx.config.get_target_ongoing_requests(), {}
