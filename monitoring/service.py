"""The monitor's state without Ray: served versions, their profiles and windows, sample intake.

Replicas send vigil.core.messages.SampleMessage values. A message the monitor cannot read (not a
SampleMessage, another schema version, malformed fields) is dropped whole and counted under model
"_unknown" with its reason as kind; so is one for a model version not in the repository (kind
"unknown_version"). A version published after the monitor started is picked up when its first
samples arrive: the monitor looks for <repository>/<model>/<version>/model.yaml and loads it like
the others, looking at most once per DISCOVER_INTERVAL_S per (model, version), so a flood of
samples naming what does not exist costs a dictionary lookup each. A readable message's rows are
kept when its tensors fit the version's column layout (monitoring.columns); otherwise they are
dropped and counted (kind "schema") while its request facts still count (the latency of a
request does not depend on its tensors). Every drop gets a rate-limited log line saying why.

Only served versions are held (vigil.core.aliases: every published version that is not retired,
unless its model is unloaded). ``sweep`` reads each model's aliases at most once per
SWEEP_INTERVAL_S and releases the state of versions no longer served: their windows, rows,
reservoir of request facts, profile, counters and alert state. A firing alert of a released
version resolves (its receivers get ``vigil.alert.resolved``): no window of it will ever close
again to resolve it, and an alert left firing would page for a version that takes no traffic.
Samples of a version that is not served (a replica draining it) are dropped as
"unknown_version"; a version served again is picked up again by its samples. So the monitor's
memory follows the versions served, not every version ever published.
Not thread-safe: the monitor calls it from one worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from monitoring.alerts import AlertEngine
from monitoring.rollouts import RolloutDriver
from monitoring.collector import VersionSnapshot
from monitoring.drift import check_settings
from monitoring.settings import MonitorAppSettings, MonitorSettings
from monitoring.version_state import RateLimitedLog, VersionState, load_state
from monitoring.window import ClosedWindow, RowKeys, TumblingWindow, settings_for
from vigil.core.aliases import AliasError, read_aliases
from vigil.core.messages import SampleMessage, UnreadableMessage, read_message
from vigil.core.repository import (
    MANIFEST_FILE,
    ModelNotFound,
    ModelVersion,
    RepositoryError,
    read_manifest,
    scan,
    valid_name,
    version_order,
)

logger = logging.getLogger("vigil.monitor")
UNKNOWN_MODEL = "_unknown"  # the label of drops for versions the monitor does not know
DISCOVER_INTERVAL_S = 5.0  # least time between two looks for one unknown (model, version)
MAX_LOOKED = 10_000  # unknown (model, version) names remembered for the rate limit
SWEEP_INTERVAL_S = 30.0  # least time between two reads of the aliases for releasing versions


class UnknownModel(LookupError):
    """No such model or version in the monitored repository (HTTP 404)."""


class NotReady(Exception):
    """The request is valid but cannot be answered yet: no profile, no reference, no rows (409)."""


@dataclass(frozen=True)
class ReportSource:
    """The rows a report compares with the reference: those of one closed window."""

    state: VersionState
    window: ClosedWindow  # the last closed window with rows
    rows: Mapping[str, np.ndarray]  # its rows by profiled column (never changed in place)
    keys: RowKeys | None = None  # where each of those rows came from (request id, position)


class MonitorService:
    """Every monitored version of the repository, fed with sample batches."""

    def __init__(self, app: MonitorAppSettings, settings: MonitorSettings, now: float,
                 alerts: AlertEngine | None = None, rollouts: RolloutDriver | None = None) -> None:
        self.app = app
        self.settings = settings
        self.alerts = alerts  # rules over closed windows; None: no alerting
        self.rollouts = rollouts  # progressive rollouts judged on closed windows; None: none
        # Others told of each version's closed windows (the label join, which judges them
        # again once their labels settled).
        self.window_listeners: list[Callable[[str, str, list[ClosedWindow]], None]] = []
        self.log = RateLimitedLog(app.log_interval_s)
        self.versions: dict[tuple[str, str], VersionState] = {}
        self.models: dict[str, list[str]] = {}  # model -> versions, oldest first
        self._looked: dict[tuple[str, str], float] = {}  # unknown version -> when looked for
        self._swept_at = now
        self.released = 0  # versions whose state was released since the start
        # Models whose entry could not be read at start, with why: skipped, never fatal (one bad
        # model.yaml must not stop the monitoring of the others); their versions are looked for
        # again when their samples arrive (_discover), so a mended file is monitored then.
        self.unreadable: dict[str, str] = {}
        for name, found in self._scan(app).items():
            served = set(self._served(name, [v.manifest.version for v in found]))
            found = [v for v in found if v.manifest.version in served]
            if found:
                self.models[name] = [v.manifest.version for v in found]
            for v in found:
                self.versions[(name, v.manifest.version)] = self._load(v, now)
        self._check(settings)
        self.unknown = VersionState(
            UNKNOWN_MODEL, "", Path(), (frozenset(), frozenset()), None, None, "unknown",
            TumblingWindow(None, settings, now),
        )

    def _scan(self, app: MonitorAppSettings) -> dict[str, list[ModelVersion]]:
        """The repository model by model; an unreadable model is logged, noted and skipped. A
        model named in the settings that is not there at all still fails the start."""
        root = Path(app.model_repository)
        if not root.is_dir():
            raise RepositoryError(f"model repository {root} does not exist")
        found: dict[str, list[ModelVersion]] = {}
        names = app.models if app.models is not None else sorted(
            p.name for p in root.iterdir() if p.is_dir() and valid_name(p.name))
        for name in names:
            try:
                found.update(scan(root, [name]))
            except ModelNotFound:
                if app.models is not None:
                    raise
            except RepositoryError as exc:
                self.unreadable[name] = str(exc)
                logger.error("model %s cannot be read and is not monitored until its files are "
                             "fixed (its samples are looked for again): %s", name, exc)
        return found

    def _load(self, version: ModelVersion, now: float, check: bool = False) -> VersionState:
        """The version's state; `check`: a profile the current settings misfit is not used
        (at start the settings are refused instead: see _check)."""
        return load_state(version, self.settings, now, self.app.max_requests, check)

    def _check(self, settings: MonitorSettings) -> None:
        for state in self.versions.values():
            if state.profile is not None:
                check_settings(state.profile, settings_for(state.profile, settings))

    # ------------------------------------------------------------------ intake

    def ingest(self, messages: Iterable[Any], now: float) -> list[ClosedWindow]:
        """Take sample messages; returns the windows they closed."""
        closed: list[ClosedWindow] = []
        for raw in messages:
            try:
                message = read_message(raw)
            except UnreadableMessage as exc:
                self._drop_whole(exc.reason, exc.rows, exc.requests, "a message", str(exc))
                continue
            closed += self._ingest_one(message, now)
        return closed

    def _judge(self, state: VersionState, closed: list[ClosedWindow], now: float) -> None:
        for listener in self.window_listeners:
            listener(state.model, state.version, closed)
        if self.alerts is not None:
            for window in closed:
                self.alerts.on_window(state.model, state.version, window, now)
        if self.rollouts is not None:
            for window in closed:
                self.rollouts.on_window(state.model, state.version, window, now)

    def _drop_whole(self, kind: str, rows: int, requests: int, where: str, why: str) -> None:
        self.unknown.messages_dropped[kind] += 1
        self.unknown.rows_dropped[kind] += rows
        self.unknown.requests_dropped[kind] += requests
        self.unknown.rows_received += rows
        self.unknown.requests_received += requests
        self.log.warning(
            f"drop:{kind}:{where}",
            f"dropped {where} ({rows} sampled rows, {requests} requests): {why}",
        )

    def _discover(self, model: str, version: str, now: float) -> VersionState | None:
        """A version published since the monitor started, loaded; None when there is none
        (or it was looked for less than DISCOVER_INTERVAL_S ago, or cannot be loaded)."""
        key = (model, version)
        last = self._looked.get(key)
        if last is not None and 0.0 <= now - last < DISCOVER_INTERVAL_S:
            return None
        if len(self._looked) >= MAX_LOOKED:
            self._looked = {k: t for k, t in self._looked.items()
                            if 0.0 <= now - t < DISCOVER_INTERVAL_S}
            if len(self._looked) >= MAX_LOOKED:
                self._looked.clear()
        self._looked[key] = now
        if self.app.models is not None and model not in self.app.models:
            return None
        if not (valid_name(model) and valid_name(version)):
            return None
        path = Path(self.app.model_repository) / model / version
        if not (path / MANIFEST_FILE).is_file() or not self._served(model, [version]):
            return None
        try:
            manifest = read_manifest(path)
            if (manifest.name, manifest.version) != key:
                raise RepositoryError(f"{path}: manifest says {manifest.name}/{manifest.version}")
            state = self._load(ModelVersion(path, manifest), now, check=True)
        except Exception as exc:  # noqa: BLE001 - a bad version must not stop the others
            self.log.warning(f"discover:{model}/{version}", f"cannot monitor {model}/{version}, "
                             f"published since the monitor started: {exc}")
            return None
        del self._looked[key]
        self.versions[key] = state
        self.models[model] = sorted([*self.models.get(model, []), version], key=version_order)
        logger.info("%s/%s was published since the monitor started: monitored from now on",
                    model, version)
        return state

    def find(self, model: str, version: str, now: float) -> VersionState | None:
        """The served version's state, discovered if published since the start; else None."""
        return self.versions.get((model, version)) or self._discover(model, version, now)

    def _ingest_one(self, message: SampleMessage, now: float) -> list[ClosedWindow]:
        where = f"{message.model}/{message.version}"
        state = self.versions.get((message.model, message.version))
        if state is None:
            state = self._discover(message.model, message.version, now)
        if state is None:
            self._drop_whole(
                "unknown_version", message.rows, message.requests, f"samples of {where}",
                "no such model version in the monitored repository, or one not served (retired, "
                "or its model unloaded)",
            )
            return []
        inputs, outputs, rows = message.inputs, message.outputs, message.rows
        state.rows_received += rows
        state.requests_received += message.requests
        state.rows_agreeing += message.agreeing_rows
        state.rows_compared += message.compared_rows
        if message.requests and self.alerts is not None:
            self.alerts.request_seen(state.model, state.version, now)
        state.rows_dropped["replica"] += message.dropped_rows
        state.requests_dropped["replica"] += message.dropped_requests
        reason = state.mismatch(inputs, outputs) if inputs or outputs else None
        if reason is not None:
            state.rows_dropped["schema"] += rows
            self.log.warning(f"drop:schema:{where}", f"dropped {rows} sampled rows for {where}: {reason}")
            rows, inputs, outputs = 0, {}, {}
        columns = None
        if state.profile is not None and rows:
            assert state.layout is not None
            split = state.layout.split(inputs, outputs)
            columns = {name: split[name] for name in state.profile.names if name in split}
        closed = state.window.add(
            columns, rows, message.latency_s, message.status.astype(np.int64), now,
            agreement=(message.agreeing_rows, message.compared_rows),
            keys=RowKeys.of_requests(message.request_ids, message.request_rows,
                                     message.row_positions) if columns is not None else None,
        )
        for window in closed:
            if window.error:
                self.log.warning(f"eval:{where}", f"window {window.index} of {where}: {window.error}")
        self._judge(state, closed, now)
        return closed

    def tick(self, now: float) -> list[ClosedWindow]:
        """Close the time windows that are due, traffic or not; judge the silence rules."""
        closed = []
        for state in self.versions.values():
            if (window := state.window.tick(now)) is not None:
                closed.append(window)
                self._judge(state, [window], now)
        if self.alerts is not None:
            self.alerts.tick(self.versions, now)
        if self.rollouts is not None:
            self.rollouts.tick(self.models, now)
        return closed

    def sweep(self, now: float) -> list[tuple[str, str]]:
        """Release the versions no longer served (see the module docstring), reading the aliases
        at most once per SWEEP_INTERVAL_S; their firing alerts resolve. Returns those released."""
        if 0.0 <= now - self._swept_at < SWEEP_INTERVAL_S:
            return []
        self._swept_at = now
        gone = [(model, version) for model, versions in list(self.models.items())
                for version in set(versions) - set(self._served(model, versions))]
        for key in gone:
            self._release(key, now)
        return sorted(gone)

    def _served(self, model: str, versions: list[str]) -> list[str]:
        """Those of `versions` the aliases serve; all of them when the aliases cannot be read
        (a doubt keeps a version monitored: releasing is what cannot be undone)."""
        try:
            return read_aliases(Path(self.app.model_repository), model).serving(versions)
        except (AliasError, OSError) as exc:
            self.log.warning(f"aliases:{model}", f"cannot read the aliases of {model}; its "
                             f"versions stay monitored: {exc}")
            return list(versions)

    def _release(self, key: tuple[str, str], now: float) -> None:
        model, version = key
        del self.versions[key]
        self.models[model].remove(version)
        if not self.models[model]:
            del self.models[model]
        if self.alerts is not None:
            self.alerts.forget_version(model, version, now)  # its firing alerts resolve
        self.released += 1
        logger.info("%s/%s is no longer served (retired, or its model unloaded): its monitor "
                    "state is released", model, version)

    def next_deadline(self) -> float | None:
        """When the earliest open time window is due to close (None: no window closes by time).
        With silence rules the engine must be asked continuously, so the caller ticks anyway."""
        due = [
            state.window.opened_at + seconds
            for state in list(self.versions.values())
            if (seconds := state.window.settings.window.seconds) is not None
        ]
        return min(due, default=None)

    def needs_ticks(self) -> bool:
        """Whether rules judge silence (no request for N seconds) or labels (windows as they
        settle), or a rollout runs (its step's deadline and its waiting windows), which need a
        steady tick."""
        if self.rollouts is not None and self.rollouts.running():
            return True
        return self.alerts is not None and any(
            r.when.family in ("traffic", "labels", "estimated") for r in self.alerts.rules)

    def reconfigure(self, settings: MonitorSettings, now: float) -> None:
        """Apply new window, drift and alert settings; refused (ValueError) if they misfit a
        profile. Windows closed by the change are judged by the rules they opened under."""
        self._check(settings)
        self.settings = settings
        for state in self.versions.values():
            if (window := state.window.reconfigure(settings, now)) is not None:
                self._judge(state, [window], now)
        if self.alerts is not None:
            self.alerts.configure(settings.alerts, settings.webhooks, self.versions, now)
        if self.rollouts is not None:
            self.rollouts.settings = settings.rollouts

    # ------------------------------------------------------------------ reading

    def snapshots(self) -> list[VersionSnapshot]:
        snaps = [s.snapshot() for s in self.versions.values()]
        if self.unknown.messages_dropped:
            snaps.append(dataclasses.replace(self.unknown.snapshot(), profile_loaded=None))
        return snaps

    def state(self, model: str, version: str | None = None) -> VersionState:
        """The version (newest when None); UnknownModel if the monitor has no such thing."""
        versions = self.models.get(model)
        if not versions:
            raise UnknownModel(f"unknown model {model!r}")
        version = versions[-1] if version is None else version
        state = self.versions.get((model, version))
        if state is None:
            raise UnknownModel(f"unknown version {version!r} of model {model!r} (the monitor "
                               "holds served versions only, not retired ones)")
        return state

    def drift_doc(self, model: str, version: str | None = None, windows: int | None = None) -> dict:
        """The latest window in full and the last `windows` (default: all kept) as summaries."""
        state = self.state(model, version)
        window = state.window
        history = list(window.history)
        if windows is not None:
            history = history[-windows:] if windows else []
        s = window.settings
        return {
            "model": state.model,
            "version": state.version,
            "versions": self.models[state.model],
            "profile": state.profile_status,
            "settings": {
                "window": s.window.model_dump(), "drift_share": s.drift_share,
                "correction": s.correction, "history": s.history, "buffer_rows": s.buffer_rows,
            },
            "open_window": {
                "opened_at": window.opened_at, "rows": window.rows, "requests": window.requests,
            },
            "windows_evaluated": window.closed,
            "alerts": self.alerts.describe(state.model, state.version, time.time())
            if self.alerts else [],
            "latest": window.latest.to_dict(detail=True) if window.latest else None,
            "windows": [w.to_dict(detail=False) for w in history],
        }

    def report_source(self, model: str, version: str | None, now: float) -> ReportSource:
        """What a report describes: the last closed window with rows. NotReady when the version
        has no profile, or no window with rows has closed yet (saying when the open one will)."""
        state = self.state(model, version)
        if state.profile is None:
            raise NotReady(f"{state.model}/{state.version} has {state.profile_status}: build one "
                           f"with `vigil profile build`")
        window = state.window
        if window.last_rows is None or window.last_rows_window is None:
            raise NotReady(f"no closed window with sampled rows for {state.model}/{state.version} "
                           f"yet: {window.closes_when(now)}")
        return ReportSource(state, window.last_rows_window, window.last_rows, window.last_keys)
