"""The Serve application builder that configs/serve.yaml points at (serving.app:build_app)."""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.deployments import ModelServerDeployment
from serving.settings import ServerSettings
from vigil.adapters.boot import bound_args


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Validate the application args (unknown keys rejected) and bind the model server.
    A relative model_repository is resolved here, in the process that builds the app."""
    return ModelServerDeployment.bind(bound_args(ServerSettings, args))
