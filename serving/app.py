"""The Serve application builder that configs/serve.yaml points at (serving.app:build_app)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from serving.deployments import ModelServerDeployment
from serving.settings import ServerSettings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Validate the application args (unknown keys rejected) and bind the model server.
    A relative model_repository is resolved here, in the process that builds the app."""
    settings = ServerSettings(**(args or {}))
    repo = Path(settings.model_repository).expanduser()
    if not repo.is_absolute():
        repo = (Path.cwd() / repo).resolve()
    settings = settings.model_copy(update={"model_repository": repo})
    return ModelServerDeployment.bind(settings.model_dump(mode="json"))
