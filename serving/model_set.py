"""The model versions one replica serves: loaded from the repository as its aliases say (and as
requests name them), swapped in whole when they change, drained and released when retired,
unloaded or idle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

from serving import model_state
from serving.metrics import replica_metrics
from serving.protocol import BadRequest, InferenceError, NotFound, NotReady
from serving.router import ModelRouter, ModelRoutes
from serving.runtime import GpuUnavailable
from serving.served import ServedModel
from serving.settings import BatchSettings, LoadingSettings, RuntimeSettings
from vigil.core import model_ops, repository
from vigil.core.aliases import AliasError, AliasState, read_aliases
from vigil.core.repository import ModelVersion, RepositoryError, VersionManifest
from vigil.core.repository_health import MODEL_WIDE, Fault, aliases_unreadable

logger = logging.getLogger("vigil.models")
# A request that resolved the old router takes its hold on the version in the same step of the
# event loop; the drain lets that step pass before it first looks.
SETTLE_S = 0.2
DRAIN_POLL_S = 0.02
LOAD_ERRORS = (RepositoryError, RuntimeError, OSError, ValueError)  # a version that cannot load


def _published_at(manifest: VersionManifest) -> float:
    """When the version was published (epoch seconds); -inf when model.yaml does not say."""
    try:
        return datetime.fromisoformat(manifest.created).timestamp()
    except ValueError:
        return float("-inf")


def _frozen() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ServingState:
    """What one replica serves, replaced whole on every change (readers on any thread see one
    consistent state, never one being changed): the router, the versions that could not be
    loaded (with why), every version it routes on by model (published, and those served from
    memory), and each model's repository faults."""

    router: ModelRouter[ServedModel] = field(default_factory=lambda: ModelRouter({}))
    failed: Mapping[tuple[str, str], str] = field(default_factory=_frozen)
    published: Mapping[str, list[str]] = field(default_factory=_frozen)
    versions: Mapping[tuple[str, str], ModelVersion] = field(default_factory=_frozen)
    faults: Mapping[str, tuple[Fault, ...]] = field(default_factory=_frozen)


@dataclass
class Refreshed:
    """What one refresh changed."""

    loaded: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class ModelSet:
    """Every served version of the repository's models (or of `only`). The state is owned here:
    refreshes and loads on demand write it one at a time (under `_lock`, which a session build
    holds), and swap it whole; reconfigure changes the batching under `_settings_lock` alone,
    which each swap also takes to apply the live batching to the versions it installs."""

    def __init__(self, root: Path, only: list[str] | None, runtime: RuntimeSettings,
                 batching: BatchSettings, loading: LoadingSettings | None = None,
                 load: Callable[[ModelVersion], ServedModel] | None = None) -> None:
        self.root = Path(root)
        self.only = only
        self.runtime = runtime
        self.batching = batching
        self.loading = loading or LoadingSettings()
        self._load = load or (lambda v: ServedModel(v, self.runtime, self.batching))
        self._lock = threading.Lock()
        self._settings_lock = threading.Lock()
        self._state = ServingState()
        self._draining: list[threading.Thread] = []
        self._book = model_state.FaultBook()

    @property
    def router(self) -> ModelRouter[ServedModel]:
        return self._state.router

    @property
    def failed(self) -> Mapping[tuple[str, str], str]:
        """Versions that could not be loaded, with the reason (sha256 mismatch, bad graph)."""
        return self._state.failed

    @property
    def faults(self) -> Mapping[str, tuple[Fault, ...]]:
        """Each model's repository faults, as the last refresh found them (vigil.core.
        repository_health): what differs between its files and what is served."""
        return self._state.faults

    def known(self) -> set[str]:
        """Every model in the repository, readable or not."""
        return set(self._state.published) | set(self._state.faults)

    def unavailable(self, name: str) -> Fault | None:
        """The fault that keeps the model's entry from being read (unreadable, aliases)."""
        return next((f for f in self._state.faults.get(name, ()) if f.kind in MODEL_WIDE), None)

    @property
    def published(self) -> Mapping[str, list[str]]:
        return self._state.published

    def refresh(self, models: list[str] | None = None) -> Refreshed:
        """Re-read the repository and aliases (of `models`, or of every model), load the versions
        to serve and release those no longer served. A model whose entry cannot be read keeps
        what it serves (or is unavailable, with why) and never stops the others. Blocking
        (sessions are built here): call it on a worker thread once the replica runs."""
        with self._lock:
            state = self._state
            current = state.router.models()
            found, unreadable = model_state.scan(self.root, self.only)
            if models is None:
                wanted = set(found) | set(current) | set(unreadable)
            else:  # the named models, and any model that vanished from disk
                wanted = (set(models) & (set(found) | set(unreadable))) | (set(current) - set(found))
            done = Refreshed()
            faults = {n: f for n, f in state.faults.items() if n not in wanted}
            failed = {k: v for k, v in state.failed.items() if k[0] not in wanted}
            routes = {n: r for n, r in current.items() if n not in wanted}
            published = {n: v for n, v in state.published.items() if n not in wanted}
            versions = {k: v for k, v in state.versions.items() if k[0] not in wanted}
            for name in sorted(wanted):
                if name not in found and name not in unreadable:  # gone from disk: release it
                    done.released += [f"{name}/{v}" for v in current[name].versions]
                    continue
                fault = unreadable.get(name)
                if fault is None:
                    try:
                        aliases = read_aliases(self.root, name)
                    except AliasError as exc:
                        fault = aliases_unreadable(name, exc)
                if fault is not None:
                    # What it served it keeps (routes, versions, reasons), else unavailable.
                    routes[name] = model_state.unreadable_routes(fault, current.get(name))
                    failed.update({k: v for k, v in state.failed.items() if k[0] == name})
                    versions.update({k: v for k, v in state.versions.items() if k[0] == name})
                    published[name] = list(state.published.get(name, ())) or [
                        v.manifest.version for v in found.get(name, [])]
                    faults[name] = (fault, *[f for f in state.faults.get(name, ())
                                             if f.kind not in MODEL_WIDE])  # still held
                    continue
                model, routed, model_faults = self._refresh_model(
                    name, found[name], aliases, current.get(name), done, failed)
                if routed:
                    routes[name] = model
                    published[name] = [v.manifest.version for v in routed]
                    versions.update({(name, v.manifest.version): v for v in routed})
                if model_faults:
                    faults[name] = model_faults
            released = self._install(ServingState(
                ModelRouter(routes), MappingProxyType(failed), MappingProxyType(published),
                MappingProxyType(versions), MappingProxyType(faults)))
        self._book.update(faults)
        self._release(released)
        if done.loaded or done.released or done.failed:
            logger.info("models: loaded %s, released %s, failed %s",
                        done.loaded, done.released, sorted(done.failed))
        return done

    def _refresh_model(self, name: str, on_disk: list[ModelVersion], aliases: AliasState,
                       current: ModelRoutes[ServedModel] | None, done: Refreshed,
                       failed: dict[tuple[str, str], str]
                       ) -> tuple[ModelRoutes[ServedModel], list[ModelVersion], tuple[Fault, ...]]:
        """The model's routes as its aliases and the loading policy now say, the versions it
        routes on, and its faults; `failed` gets the versions that would not load (only those
        tried: an idle version is retried on demand)."""
        versions, held = model_state.routable(self.root, name, on_disk, aliases, current)
        keep = self._keep(versions, aliases, current)
        files = model_state.file_faults(on_disk, current.versions if current else {})
        loaded: dict[str, ServedModel] = {}
        for v in versions:
            label = v.manifest.version
            if label not in keep:
                continue
            if current is not None and label in current.versions:
                loaded[label] = current.versions[label]
                continue
            if label in files:  # a load would refuse it: the fault says why (logged once)
                failed[(name, label)] = files[label].detail
                continue
            try:
                loaded[label] = self._load(v)
            except GpuUnavailable:
                raise  # the replica's configuration, not this version: the replica must not start
            except LOAD_ERRORS as exc:
                # The previous versions keep serving; the index says why this one does not.
                failed[(name, label)] = str(exc)
                done.failed[f"{name}/{label}"] = str(exc)
                logger.error("%s/%s not loaded: %s", name, label, exc)
                continue
            done.loaded.append(f"{name}/{label}")
        if current is not None:
            done.released += [f"{name}/{v}" for v in current.versions if v not in loaded]
        labels = tuple(v.manifest.version for v in versions)
        faults = model_state.model_faults(aliases, labels, held, files)
        return ModelRoutes(loaded, aliases, labels), versions, faults

    def _keep(self, versions: list[ModelVersion], aliases: AliasState,
              current: ModelRoutes[ServedModel] | None) -> set[str]:
        """The versions to hold loaded (LoadingSettings): every unretired one an alias points
        at, and of the others the most recently active (published, aliased, asked for) that
        have not been idle for unaliased_idle_s, at most max_unaliased of them."""
        published = [v.manifest.version for v in versions]
        serving = set(aliases.serving(published))
        aliased = {aliases.production_of(published), aliases.shadow,
                   aliases.canary.version if aliases.canary else None} & serving
        loaded = current.versions if current is not None else {}
        now, wall = time.perf_counter(), time.time()
        idle: dict[str, float] = {}
        for v in versions:
            label = v.manifest.version
            served = loaded.get(label)
            if label in aliased and served is not None:
                served.last_active = now  # its idle time starts when its last alias goes
            elif label in serving and label not in aliased:
                idle[label] = (now - served.last_active if served is not None
                               else wall - _published_at(v.manifest))
        recent = sorted((s, label) for label, s in idle.items()
                        if s < self.loading.unaliased_idle_s)
        return {str(label) for label in aliased} | {
            label for _, label in recent[: self.loading.max_unaliased]}

    def load_version(self, name: str, version: str) -> None:
        """Load a published, unretired version that a request names (the router said
        NotLoaded), the least recently active unaliased version unloaded when that makes more
        than max_unaliased. Blocking: call it on a worker thread. Raises the router's answer
        when the version is not available, NotReady when it cannot be loaded here."""
        with self._lock:
            state = self._state
            routes = state.router.routes(name)
            if version in routes.versions:
                return
            if version not in routes.available:
                raise state.router.not_served(name, version, routes)
            if (name, version) in state.failed:
                raise NotReady(f"model '{name}' version '{version}' cannot be loaded here; the "
                               "repository index (POST /v2/repository/index) says why")
            if self.loading.max_unaliased == 0:
                raise NotReady(f"model '{name}' version '{version}' is not served here: no alias "
                               "points at it, and this server keeps no other version loaded")
            try:
                served = self._load(state.versions[(name, version)])
            except LOAD_ERRORS as exc:
                logger.error("%s/%s not loaded on demand: %s", name, version, exc)
                self._install(replace(state, failed=MappingProxyType(
                    {**state.failed, (name, version): str(exc)})))
                raise NotReady(f"model '{name}' version '{version}' cannot be loaded here; the "
                               "repository index (POST /v2/repository/index) says why") from None
            loaded = {**routes.versions, version: served}
            keep = {version} | self._keep([state.versions[(name, v)] for v in routes.published],
                                          routes.aliases, replace(routes, versions=loaded))
            loaded = {v: s for v, s in loaded.items() if v in keep}
            ordered = {v: loaded[v] for v in routes.published if v in loaded}
            models = {**state.router.models(), name: replace(routes, versions=ordered)}
            released = self._install(replace(state, router=ModelRouter(models)))
        logger.info("%s/%s loaded on demand", name, version)
        self._release(released)

    def _install(self, state: ServingState) -> list[ServedModel]:
        """Make `state` the one readers see, with the live batching on every version in it;
        returns the versions it no longer holds (to drain and release)."""
        with self._settings_lock:
            for _, _, served in state.router:
                served.batcher.reconfigure(self.batching)
            old, self._state = self._state, state
        counts = {name: 0 for name in old.router.models()}
        counts.update({name: len(r.versions) for name, r in state.router.models().items()})
        replica_metrics().loaded(counts)
        kept = {id(served) for _, _, served in state.router}
        return [served for _, _, served in old.router if id(served) not in kept]

    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        """The V2 metadata a client needs of `version` of `name` (production's when None), for
        any version it may name, loaded here or not; `versions` lists those versions."""
        state = self._state
        routes = state.router.routes(name)
        label = version or routes.production
        if label is None:
            raise NotReady(f"model '{name}' has no production version")
        if label not in routes.available:
            raise state.router.not_served(name, label, routes)
        doc = repository.version_metadata(
            state.versions[(name, label)].manifest, [label] if version else list(routes.available),
            routes.aliases.roles(label, routes.published))
        if faults := state.faults.get(name):
            doc["parameters"]["repository_faults"] = [f.describe() for f in faults]
        return doc

    def record(self, name: str, version: str) -> dict[str, Any]:
        """A published version's whole record for an operator (scope admin): its metadata with
        the lineage and free-form metadata of model.yaml as it is now, retired or not.
        Blocking (reads the repository)."""
        if not (repository.valid_name(name) and repository.valid_name(version)):
            raise BadRequest(f"invalid model or version name {name!r}/{version!r}")
        held = self._state.versions.get((name, version))
        try:
            published = model_ops.published_versions(self.root, name)
            if version not in published and held is not None:  # gone from disk, held here
                routes = self.router.routes(name)
                doc = repository.version_metadata(held.manifest, [version],
                                                  routes.aliases.roles(version, routes.published),
                                                  full=True)
                doc["parameters"]["repository_faults"] = [
                    f.describe() for f in self._state.faults.get(name, ())]
                return doc
            if version not in published:
                raise NotFound(f"model '{name}' has no version '{version}'; published: {published}")
            manifest = repository.read_manifest(self.root / name / version)
            roles = read_aliases(self.root, name).roles(version, published)
        except AliasError as exc:
            raise InferenceError(str(exc), exc.status) from None
        except RepositoryError as exc:
            raise InferenceError(f"{name}/{version} cannot be read: {exc}", 409) from None
        return repository.version_metadata(manifest, [version], roles, full=True)

    def check_loadable(self, name: str, version: str) -> None:
        """Raise RepositoryError (with the reason) unless `version` of `name` loads: its file on
        disk must still match its sha256 (a replica started later would load that file), and a
        version not served here yet must build a session."""
        for v in repository.scan(self.root, [name])[name]:
            if v.manifest.version == version:
                v.read_verified_bytes()
                routes = self.router.models().get(name)
                if routes is None or version not in routes.versions:
                    self._load(v).close()
                return
        raise RepositoryError(f"model '{name}' has no version '{version}'")

    def aliases(self, name: str) -> AliasState:
        """The aliases the model is served by; read from its file when nothing serves it
        (AliasFileError, a 409, when that file is corrupt)."""
        routes = self.router.models().get(name)
        if routes is None or (routes.unavailable is not None and not routes.versions):
            return read_aliases(self.root, name)
        return routes.aliases

    def _release(self, released: list[ServedModel]) -> None:
        """Drain the released versions, then close them, on a thread of their own."""
        if not released:
            return
        drain = threading.Thread(target=self._drain, args=(released,), daemon=True,
                                 name="vigil-drain")
        self._draining = [t for t in self._draining if t.is_alive()] + [drain]
        drain.start()

    def _drain(self, released: list[ServedModel]) -> None:
        """Close each version once the requests already routed to it are done (nothing routed,
        queued or running), or once drain_timeout_s has passed. New requests no longer reach
        it: the router that did is gone."""
        time.sleep(SETTLE_S)
        deadline = time.monotonic() + self.loading.drain_timeout_s
        for served in released:
            while served.busy and time.monotonic() < deadline:
                time.sleep(DRAIN_POLL_S)
            if served.busy:
                logger.warning("%s closed with %d requests still routed to it after "
                               "drain_timeout_s (%g s)", served.label, served.users,
                               self.loading.drain_timeout_s)
            served.release()

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every released version is closed; whether they all were in time."""
        deadline = time.monotonic() + timeout
        for thread in list(self._draining):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._draining)

    def reconfigure(self, batching: BatchSettings) -> None:
        """New batching for every version served now, and for every one installed later."""
        with self._settings_lock:
            self.batching = batching
            for _, _, served in self._state.router:
                served.batcher.reconfigure(batching)

    def close(self) -> None:
        for _, _, served in self.router:
            served.close()
