"""The Serve application builder for the monitor (configs/serve.yaml: monitoring.app:build_monitor_app)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from monitoring.monitor import MonitorDeployment
from monitoring.settings import MonitorAppSettings
from vigil.adapters.boot import bound_args


def build_monitor_app(args: dict[str, Any] | None = None) -> Application:
    """Validate the application args (unknown keys rejected) and bind the Monitor. A relative
    model_repository is resolved here, in the process that builds the app."""
    return MonitorDeployment.bind(bound_args(MonitorAppSettings, args))
