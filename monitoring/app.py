"""The Serve application builder for the monitor (configs/serve.yaml: monitoring.app:build_monitor_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from monitoring.monitor import MonitorDeployment
from monitoring.settings import MonitorAppSettings


def build_monitor_app(args: dict[str, Any] | None = None) -> Application:
    """Validate the application args (unknown keys rejected) and bind the Monitor. A relative
    model_repository is resolved here, in the process that builds the app."""
    settings = MonitorAppSettings(**(args or {}))
    repo = Path(settings.model_repository).expanduser()
    if not repo.is_absolute():
        repo = (Path.cwd() / repo).resolve()
    settings = settings.model_copy(update={"model_repository": repo})
    return MonitorDeployment.bind(settings.model_dump(mode="json"))
