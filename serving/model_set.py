"""The model versions one replica serves: loaded from the repository as its aliases say, swapped
in whole when they change, released when retired or unloaded."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.batching import RowBatcher
from serving.metrics import replica_metrics
from serving.router import ModelRouter, ModelRoutes
from serving.runtime import GpuUnavailable, OnnxModel
from serving.settings import BatchSettings, RuntimeSettings
from vigil.core import repository
from vigil.core.aliases import AliasState, read_aliases
from vigil.core.repository import ModelVersion, RepositoryError

logger = logging.getLogger("vigil.models")
RELEASE_GRACE_S = 5.0


class ServedModel:
    """A loaded model version with its batcher."""

    def __init__(self, version: ModelVersion, runtime: RuntimeSettings,
                 batching: BatchSettings) -> None:
        self.version = version
        self.model = OnnxModel(version, runtime)
        # Rows are sampled only where the monitor has a reference to compare them with; every
        # version still reports latency and status.
        self.has_profile = version.has_profile
        self.batcher = RowBatcher(
            self.model.run,
            batching,
            declared_max_rows=self.model.max_batch_rows,
            observer=replica_metrics().for_model(self.model.name, self.model.version),
            thread_name=f"vigil-{self.model.name}-{self.model.version}",
        )

    def close(self) -> None:
        """Stop the batcher's thread; the session goes with the last reference to this object."""
        self.batcher.close()

    def release(self) -> None:
        """Close, free the onnxruntime session now, and hand the freed heap back to the OS:
        glibc keeps freed arenas otherwise, and a replica that cycled through many versions
        would look as large as one that holds them all."""
        self.close()
        self.model.session = None
        _trim_heap()


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


@dataclass
class Refreshed:
    """What one refresh changed."""

    loaded: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class ModelSet:
    """Every served version of the repository's models (or of `only`), behind one router that is
    replaced whole on each change: a request sees either the old set or the new one."""

    def __init__(self, root: Path, only: list[str] | None, runtime: RuntimeSettings,
                 batching: BatchSettings,
                 load: Callable[[ModelVersion], ServedModel] | None = None) -> None:
        self.root = Path(root)
        self.only = only
        self.runtime = runtime
        self.batching = batching
        self._load = load or (lambda v: ServedModel(v, self.runtime, self.batching))
        self._lock = threading.Lock()  # one refresh at a time
        self.router: ModelRouter[ServedModel] = ModelRouter({})
        # Versions that could not be loaded, with the reason (sha256 mismatch, bad graph).
        self.failed: dict[tuple[str, str], str] = {}
        self.published: dict[str, list[str]] = {}

    def refresh(self, models: list[str] | None = None) -> Refreshed:
        """Re-read the repository and aliases (of `models`, or of every model), load the versions
        that are newly served and release those no longer served. Blocking (sessions are built
        here): call it on a worker thread once the replica runs."""
        with self._lock:
            current = self.router.models()
            found, broken = self._scan()
            if models is None:
                wanted = set(found) | set(current)
            else:  # the named models, and any model that vanished from disk
                wanted = (set(models) & set(found)) | (set(current) - set(found))
            done = Refreshed()
            routes: dict[str, ModelRoutes[ServedModel]] = {
                n: r for n, r in current.items() if n not in wanted
            }
            for name in sorted(wanted):
                if name in broken:  # unreadable now: keep serving what was loaded
                    if name in current:
                        routes[name] = current[name]
                    continue
                if name not in found:  # gone from disk: release it
                    done.released += [f"{name}/{v}" for v in current[name].versions]
                    continue
                routes[name] = self._refresh_model(name, found[name], current.get(name), done)
            self.published = {
                **{n: v for n, v in self.published.items() if n in broken},
                **{n: [v.manifest.version for v in vs] for n, vs in found.items()},
            }
            old = self.router
            self.router = ModelRouter(routes)
        self._release(old, done.released)
        if done.loaded or done.released or done.failed:
            logger.info("models: loaded %s, released %s, failed %s",
                        done.loaded, done.released, sorted(done.failed))
        return done

    def _scan(self) -> tuple[dict[str, list[ModelVersion]], set[str]]:
        """The repository model by model: one malformed version makes only its model unreadable
        (logged, and its loaded versions kept), never the whole repository."""
        if not self.root.is_dir():
            return {}, set()
        names = sorted(p.name for p in self.root.iterdir()
                       if p.is_dir() and repository.valid_name(p.name))
        found: dict[str, list[ModelVersion]] = {}
        broken: set[str] = set()
        for name in names:
            if self.only is not None and name not in self.only:
                continue
            try:
                versions = repository.scan(self.root, [name]).get(name)
            except RepositoryError as exc:
                if "not found" in str(exc):  # a folder without any version yet
                    continue
                broken.add(name)
                self.failed[(name, "*")] = str(exc)
                logger.error("model %s cannot be read; its loaded versions keep serving: %s",
                             name, exc)
                continue
            self.failed.pop((name, "*"), None)
            if versions:
                found[name] = versions
        return found, broken

    def _refresh_model(self, name: str, versions: list[ModelVersion],
                       current: ModelRoutes[ServedModel] | None,
                       done: Refreshed) -> ModelRoutes[ServedModel]:
        aliases = read_aliases(self.root, name)
        published = [v.manifest.version for v in versions]
        keep = set(aliases.serving(published))
        loaded: dict[str, ServedModel] = {}
        for v in versions:
            label = v.manifest.version
            if label not in keep:
                continue
            if current is not None and label in current.versions:
                loaded[label] = current.versions[label]
                continue
            try:
                loaded[label] = self._load(v)
            except GpuUnavailable:
                raise  # the replica's configuration, not this version: the replica must not start
            except (RepositoryError, RuntimeError, OSError, ValueError) as exc:
                # The previous versions keep serving; the index says why this one does not.
                self.failed[(name, label)] = str(exc)
                done.failed[f"{name}/{label}"] = str(exc)
                logger.error("%s/%s not loaded: %s", name, label, exc)
                continue
            self.failed.pop((name, label), None)
            done.loaded.append(f"{name}/{label}")
        if current is not None:
            done.released += [f"{name}/{v}" for v in current.versions if v not in loaded]
        return ModelRoutes(loaded, aliases, tuple(published))

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
        routes = self.router.models().get(name)
        return routes.aliases if routes is not None else read_aliases(self.root, name)

    def _release(self, old: ModelRouter[ServedModel], labels: list[str]) -> None:
        """Close released versions once requests already routed to them are done: new requests
        no longer reach them, and RELEASE_GRACE_S is far above one model run."""
        gone = set(labels)
        for name, version, served in old:
            if f"{name}/{version}" in gone:
                timer = threading.Timer(RELEASE_GRACE_S, served.release)
                timer.daemon = True
                timer.start()

    def reconfigure(self, batching: BatchSettings) -> None:
        self.batching = batching
        for _, _, served in self.router:
            served.batcher.reconfigure(batching)

    def close(self) -> None:
        for _, _, served in self.router:
            served.close()
