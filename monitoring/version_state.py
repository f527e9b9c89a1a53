"""One monitored model version: its column layout, reference profile, window and counters, as
loaded from its folder in the repository; and the rate-limited log lines about dropped samples."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitoring.collector import VersionSnapshot
from monitoring.columns import ColumnLayout, layout_for
from monitoring.drift import check_settings
from monitoring.profile import Profile
from monitoring.settings import MonitorSettings
from monitoring.window import TumblingWindow, settings_for
from vigil.core.repository import ModelVersion, VersionManifest

logger = logging.getLogger("vigil.monitor")


@dataclass
class VersionState:
    """One monitored model version: its layout, profile, window and counters."""

    model: str
    version: str
    path: Path
    tensors: tuple[frozenset[str], frozenset[str]]  # input and output names from model.yaml
    layout: ColumnLayout | None  # None: tensors the column rule cannot name (3-D and more)
    profile: Profile | None
    profile_status: str  # "loaded", "no profile", or why it could not be used
    window: TumblingWindow
    rows_received: int = 0
    requests_received: int = 0
    rows_agreeing: int = 0  # shadow rows that agreed with production, since the start
    rows_compared: int = 0
    rows_dropped: Counter[str] = field(default_factory=Counter)
    requests_dropped: Counter[str] = field(default_factory=Counter)
    messages_dropped: Counter[str] = field(default_factory=Counter)  # whole messages, by kind

    def mismatch(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> str | None:
        if self.layout is not None:
            return self.layout.mismatch(inputs, outputs)
        for kind, want, given in (("inputs", self.tensors[0], inputs), ("outputs", self.tensors[1], outputs)):
            if set(given) != want:
                return f"{kind} {sorted(given)} differ from the expected {sorted(want)}"
        return None

    def snapshot(self) -> VersionSnapshot:
        return VersionSnapshot(
            model=self.model, version=self.version, profile_loaded=self.profile is not None,
            latest=self.window.latest, windows_evaluated=self.window.closed,
            current_rows=self.window.rows, rows_received=self.rows_received,
            requests_received=self.requests_received, rows_dropped=dict(self.rows_dropped),
            rows_agreeing=self.rows_agreeing, rows_compared=self.rows_compared,
            requests_dropped=dict(self.requests_dropped),
            messages_dropped=dict(self.messages_dropped),
        )


def load_state(version: ModelVersion, settings: MonitorSettings, now: float,
           max_requests: int, check: bool = False) -> VersionState:
    """The state of `version`, read from its folder: its column layout, its reference profile
    (or why none is used: "no profile", "unusable profile: ..."), and a fresh window. With
    `check`, a profile the settings misfit is not used (at start the service refuses such
    settings instead)."""
    manifest = version.manifest
    signature = ([(s.name, s.shape) for s in manifest.inputs],
                 [(s.name, s.shape) for s in manifest.outputs])
    try:
        layout = layout_for(*signature, feature_names=manifest.metadata.get("feature_names"))
    except ValueError:
        layout = None
    profile, status = None, "no profile"
    if version.has_profile:
        try:
            usable, usable_layout = _usable_profile(Profile.load(version.path), manifest)
            if check:
                check_settings(usable, settings_for(usable, settings))
            profile, layout = usable, usable_layout
            status = "loaded"
        except Exception as exc:  # noqa: BLE001 - a bad profile must not stop latency, errors
            status = f"unusable profile: {exc}"
            logger.error("%s/%s: %s", manifest.name, manifest.version, status)
    logger.info("monitoring %s/%s (%s)", manifest.name, manifest.version, status)
    tensors = (frozenset(s.name for s in manifest.inputs),
               frozenset(s.name for s in manifest.outputs))
    window = TumblingWindow(profile, settings, now, max_requests=max_requests)
    return VersionState(
        manifest.name, manifest.version, version.path, tensors, layout, profile, status, window
    )


def _usable_profile(profile: Profile, manifest: VersionManifest) -> tuple[Profile, ColumnLayout]:
    """The profile and its layout, refused when built for other model bytes or tensors."""
    meta = profile.meta or {}
    sha = meta.get("model_sha256")
    if sha and sha != manifest.sha256:
        raise ValueError("built for another model file (sha256 differs): rebuild it")
    if "layout" not in meta:
        raise ValueError("no column layout recorded: rebuild it with `vigil profile build`")
    layout = ColumnLayout.from_dict(meta["layout"])
    want = ({s.name for s in manifest.inputs}, {s.name for s in manifest.outputs})
    if ({t.tensor for t in layout.inputs}, {t.tensor for t in layout.outputs}) != want:
        raise ValueError("its tensors differ from model.yaml: rebuild it")
    return profile, layout


class RateLimitedLog:
    """At most one warning per key and interval; the next line says how many were held back."""

    MAX_KEYS = 10_000  # keys remembered; past it, those whose interval has passed are forgotten

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] += 1
            return
        if last is None and len(self._last) >= self.MAX_KEYS:  # many distinct keys: bounded
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval_s}
            if len(self._last) >= self.MAX_KEYS:
                self._last.clear()
            self._held = Counter({k: n for k, n in self._held.items() if k in self._last})
        held = self._held.pop(key, 0)
        self._last[key] = now
        logger.warning("%s%s", message, f" ({held} more like it held back)" if held else "")
