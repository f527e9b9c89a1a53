"""Pick the loaded version that answers a request: an explicit version, or the model's aliases
(production, a weighted and optionally sticky canary, a shadow that gets a copy)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serving.protocol import NotFound, NotLoaded, NotReady
from vigil.core.aliases import AliasState

M = TypeVar("M")


def sticky_share(model: str, key: str) -> float:
    """Where a sticky routing key falls in [0, 1): the same key always lands in the same place,
    and keys spread evenly, so a canary of weight w gets about w of the keys."""
    digest = hashlib.blake2b(f"{model}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True)
class Route(Generic[M]):
    """The version that answers, the one that gets a copy afterwards (or None), and, when the
    canary answers, production: what its answer may be compared with afterwards."""

    target: M
    shadow: M | None = None
    production: M | None = None


@dataclass(frozen=True)
class ModelRoutes(Generic[M]):
    """One model's loaded versions (oldest first) and its aliases."""

    versions: dict[str, M]
    aliases: AliasState
    published: tuple[str, ...] = ()  # every version on disk, retired ones included
    # Why a model with no version loaded cannot serve (its repository entry is unreadable).
    unavailable: str | None = None
    production: str | None = field(init=False, default=None)
    # The versions a request may name: published and not retired, loaded here or not.
    available: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        order = self.published or tuple(self.versions)
        object.__setattr__(self, "production", self.aliases.production_of(order))
        object.__setattr__(self, "available", tuple(self.aliases.serving(order)))


class ModelRouter(Generic[M]):
    """The served models by name. A request without a version goes to production, or to the
    canary for its weight's share of requests; with a version, to exactly that version."""

    def __init__(self, models: dict[str, ModelRoutes[M]],
                 draw: Callable[[], float] = random.random) -> None:
        self._models = dict(models)
        self._draw = draw

    @classmethod
    def plain(cls, models: dict[str, dict[str, M]]) -> ModelRouter[M]:
        """Versions without aliases set: production is the newest (scan order: oldest first)."""
        return cls({n: ModelRoutes(dict(v), AliasState(n)) for n, v in models.items() if v})

    def routes(self, name: str) -> ModelRoutes[M]:
        routes = self._models.get(name)
        if routes is None:
            raise NotFound(f"model '{name}' is not served here; known models: {sorted(self._models)}")
        if routes.unavailable is not None and not routes.versions:
            raise NotReady(f"model '{name}' is unavailable: {routes.unavailable}")
        if routes.aliases.unloaded:
            raise NotReady(
                f"model '{name}' is unloaded; POST /v2/repository/models/{name}/load serves it again"
            )
        return routes

    def resolve(self, name: str, version: str | None = None,
                sticky: Callable[[str], str | None] | None = None) -> Route[M]:
        """The route for a request. `sticky` looks a request header up by its (lower-case) name."""
        routes = self.routes(name)
        if version:
            model = routes.versions.get(version)
            if model is None:
                raise self.not_served(name, version, routes)
            return Route(model)
        aliases = routes.aliases
        target = routes.production
        canary = aliases.canary
        if canary is not None and canary.version in routes.versions:
            key = sticky(canary.sticky_header) if sticky and canary.sticky_header else None
            share = sticky_share(name, key) if key is not None else self._draw()
            if share < canary.weight:
                target = canary.version
        if target is None or target not in routes.versions:
            raise self.no_production(name, routes)
        shadow = routes.versions.get(aliases.shadow) if aliases.shadow else None
        production = (routes.versions.get(routes.production)
                      if routes.production is not None and routes.production != target else None)
        return Route(routes.versions[target], shadow, production)

    def production(self, name: str) -> M:
        """The production version's model (what the model's metadata describes)."""
        routes = self.routes(name)
        if routes.production is None or routes.production not in routes.versions:
            raise self.no_production(name, routes)
        return routes.versions[routes.production]

    @staticmethod
    def no_production(name: str, routes: ModelRoutes[M]) -> NotReady:
        """Why unversioned requests find no version: production names none (a broken alias,
        edited by hand), or it is not loaded here."""
        production = routes.production
        if production is not None and routes.published and production not in routes.published:
            return NotReady(f"model '{name}': its production alias names version '{production}', "
                            "which is not in the repository (a broken alias: the repository "
                            "index says more)")
        return NotReady(f"model '{name}' has no production version loaded here")

    @staticmethod
    def not_served(name: str, version: str, routes: ModelRoutes[M]) -> NotFound | NotLoaded:
        """Why `version` has no model here: published but not loaded (NotLoaded: loadable on
        demand), retired, or unknown (NotFound)."""
        if version in routes.available:
            return NotLoaded(f"model '{name}' version '{version}' is not loaded here")
        available = list(routes.available)
        if version in routes.aliases.retired:
            return NotFound(f"model '{name}' version '{version}' is retired; versions: {available}")
        return NotFound(f"model '{name}' has no version '{version}'; versions: {available}")

    def versions(self, name: str) -> list[str]:
        """The versions of `name` loaded here, oldest first."""
        return list(self.routes(name).versions)

    def models(self) -> dict[str, ModelRoutes[M]]:
        return dict(self._models)

    def __iter__(self) -> Iterator[tuple[str, str, M]]:
        for name, routes in self._models.items():
            for version, model in routes.versions.items():
                yield name, version, model
