"""Resolve a model name and optional version to a loaded model version."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from serving.protocol import NotFound

M = TypeVar("M")


class ModelRouter(Generic[M]):
    """The served models by name and version. A request without a version gets the default
    version: the newest (numeric versions sort numerically)."""

    def __init__(self, models: dict[str, dict[str, M]]) -> None:
        # Versions arrive oldest first (repository.scan order); the last is the default.
        self._models = {name: dict(versions) for name, versions in models.items() if versions}
        self._default = {name: list(versions)[-1] for name, versions in self._models.items()}

    def resolve(self, name: str, version: str | None = None) -> M:
        versions = self._models.get(name)
        if versions is None:
            raise NotFound(f"model '{name}' is not served here; known models: {sorted(self._models)}")
        if version is None or version == "":
            return versions[self._default[name]]
        model = versions.get(version)
        if model is None:
            raise NotFound(
                f"model '{name}' has no version '{version}'; versions: {list(versions)}"
            )
        return model

    def versions(self, name: str) -> list[str]:
        if name not in self._models:
            raise NotFound(f"model '{name}' is not served here; known models: {sorted(self._models)}")
        return list(self._models[name])

    def __iter__(self) -> Iterator[tuple[str, str, M]]:
        for name, versions in self._models.items():
            for version, model in versions.items():
                yield name, version, model
