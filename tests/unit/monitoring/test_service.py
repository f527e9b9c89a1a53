"""The monitor's state without Ray: versions and profiles, intake, schema drops, reading."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitoring.service import MonitorService, NotReady, UnknownModel
from monitoring.version_state import RateLimitedLog
from monitoring.settings import MonitorAppSettings, MonitorSettings
from vigil.core.messages import SCHEMA_VERSION, SampleMessage

SETTINGS = MonitorSettings(window={"rows": 100, "seconds": None})


@pytest.fixture
def service(example_root: Path) -> MonitorService:
    return MonitorService(MonitorAppSettings(model_repository=example_root), SETTINGS, now=0.0)


@pytest.fixture(scope="module")
def cancer_rows(example_root: Path) -> np.ndarray:
    frame = pd.read_parquet(example_root / "breast_cancer" / "1" / "reference.parquet")
    return frame.drop(columns=["target"]).to_numpy(np.float32)[:100]


def _batch(model: str, inputs: dict, outputs: dict, n_requests: int = 1, **extra) -> SampleMessage:
    fields = {
        "model": model, "version": "1", "inputs": inputs, "outputs": outputs,
        "latency_s": np.full(n_requests, 0.02), "status": np.full(n_requests, 200, np.int16),
        "dropped_rows": 0, "dropped_requests": 0, **extra,
    }
    return SampleMessage(**fields)


def _cancer(x: np.ndarray, **extra) -> SampleMessage:
    outputs = {"label": np.ones(len(x), np.int64), "probabilities": np.full((len(x), 2), 0.5, np.float32)}
    return _batch("breast_cancer", {"input": x}, outputs, **extra)


def test_versions_and_profiles_are_loaded(service: MonitorService) -> None:
    assert service.models == {"breast_cancer": ["1"], "mlp": ["1"]}
    cancer, mlp = service.state("breast_cancer"), service.state("mlp", "1")
    assert (cancer.profile_status, mlp.profile_status) == ("loaded", "no profile")
    assert cancer.layout.feature_columns[0] == "mean radius"
    with pytest.raises(UnknownModel, match="unknown model 'nope'"):
        service.state("nope")
    with pytest.raises(UnknownModel, match="unknown version '2'"):
        service.state("mlp", "2")


def test_rows_are_split_into_profile_columns_and_evaluated(service, cancer_rows) -> None:
    (closed,) = service.ingest([_cancer(cancer_rows, dropped_rows=4)], now=1.0)
    assert closed.rows == 100 and closed.result.drift.tested == 30
    assert closed.result.drift.drifted == 0
    assert closed.result.quality.violations == ()
    snap = service.state("breast_cancer").snapshot()
    assert (snap.rows_received, snap.requests_received, snap.windows_evaluated) == (100, 1, 1)
    assert snap.rows_dropped == {"replica": 4}


def test_batches_that_do_not_fit_are_dropped_and_counted(service, cancer_rows, caplog) -> None:
    caplog.set_level(logging.WARNING, "vigil.monitor")
    service.ingest([
        _batch("nope", {"input": cancer_rows[:5]}, {}, n_requests=2),
        _cancer(cancer_rows[:7, :29]),  # one feature short
        _batch("breast_cancer", {"x": cancer_rows[:3]}, {}),  # wrong tensor name
    ], now=1.0)
    unknown = service.unknown
    assert (unknown.rows_dropped["unknown_version"], unknown.requests_dropped["unknown_version"]) \
        == (5, 2)
    cancer = service.state("breast_cancer")
    assert cancer.rows_dropped["schema"] == 10 and cancer.requests_dropped["schema"] == 0
    assert cancer.window.rows == 0 and cancer.window.requests == 2  # their facts still count
    messages = [r.getMessage() for r in caplog.records]
    assert "dropped samples of nope/1 (5 sampled rows, 2 requests): no such model version in " \
        "the monitored repository, or one not served (retired, or its model unloaded)" in messages
    assert any("tensor 'input' has width 29, expected 30" in m for m in messages)
    assert service.snapshots()[-1].model == "_unknown"


@pytest.mark.parametrize(
    ("message", "kind", "why"),
    [
        (None, "not_a_message", "expected a SampleMessage, got dict"),
        (dict(schema_version=SCHEMA_VERSION + 1), "schema_version",
         f"schema version {SCHEMA_VERSION + 1}; this monitor reads {SCHEMA_VERSION}"),
        ("v1", "schema_version", f"schema version None; this monitor reads {SCHEMA_VERSION}"),
        (dict(status=np.array([200, 200])), "malformed", "1 latencies but 2 status codes"),
        (dict(status=np.array([200.0])), "malformed", "status must be a 1-D integer array"),
        (dict(latency_s=np.array([-1.0])), "malformed", "negative latencies"),
        (dict(model=""), "malformed", "model must be a non-empty string"),
        (dict(dropped_rows=-3), "malformed", "dropped_rows must be a non-negative integer"),
        (dict(compared_rows=-1), "malformed", "compared_rows must be a non-negative integer"),
        (dict(agreeing_rows=True), "malformed", "agreeing_rows must be a non-negative integer"),
        (dict(agreeing_rows=5, compared_rows=4), "malformed",
         "5 agreeing rows of only 4 compared"),
        (dict(inputs={"input": np.zeros((3, 30))}, outputs={"label": np.zeros(2)}), "malformed",
         "tensors disagree on the number of rows: [2, 3]"),
        # schema 2 (before request ids): its rows could not be labelled, so it is not misread
        (dict(schema_version=2), "schema_version", "schema version 2; this monitor reads 3"),
        # request ids: one per sampled request, its row count, each row's position (4 rows here)
        (dict(request_ids=["a"], request_rows=np.array([4]), row_positions=np.arange(4)),
         "malformed", "request_ids must be a tuple"),
        (dict(request_ids=("a",)), "malformed",
         "request_rows must be a 1-D integer array of 1 counts (one per id)"),
        (dict(request_ids=("",), request_rows=np.array([4]), row_positions=np.arange(4)),
         "malformed", "request_ids must be None or strings of 1 to 256 characters"),
        (dict(request_ids=("a" * 257,), request_rows=np.array([4]), row_positions=np.arange(4)),
         "malformed", "request_ids must be None or strings of 1 to 256 characters"),
        (dict(request_ids=(7,), request_rows=np.array([4]), row_positions=np.arange(4)),
         "malformed", "request_ids must be None or strings of 1 to 256 characters"),
        (dict(request_ids=("a", "b"), request_rows=np.array([4.0, 0.0]),
              row_positions=np.arange(4)), "malformed",
         "request_rows must be a 1-D integer array of 2 counts (one per id)"),
        (dict(request_ids=("a", "b"), request_rows=np.array([4, 0]), row_positions=np.arange(4)),
         "malformed", "request_rows must count at least one row per request"),
        (dict(request_ids=("a", None), request_rows=np.array([2, 1]),
              row_positions=np.arange(4)), "malformed",
         "request_rows add up to 3 rows, the tensors hold 4"),
        (dict(request_ids=("a",), request_rows=np.array([4]), row_positions=np.arange(3)),
         "malformed", "row_positions must be a 1-D integer array of 4 positions (one per row)"),
        (dict(request_ids=("a",), request_rows=np.array([4]), row_positions=np.zeros(4)),
         "malformed", "row_positions must be a 1-D integer array of 4 positions (one per row)"),
        (dict(request_ids=("a",), request_rows=np.array([4]),
              row_positions=np.array([0, 1, -2, 3])), "malformed", "negative row positions"),
        (dict(row_positions=np.arange(4)), "malformed",
         "request_rows must be a 1-D integer array of 0 counts (one per id)"),
    ],
)
def test_unreadable_messages_are_dropped_with_their_reason(
    service, cancer_rows, caplog, message, kind, why
) -> None:
    caplog.set_level(logging.WARNING, "vigil.monitor")
    if message is None:  # the plain dict an older replica would have sent
        raw = {"model": "breast_cancer", "version": "1", "inputs": {}, "outputs": {}}
    elif message == "v1":  # unpickled from a schema 1 replica: its 9 fields, no agreement
        base = _cancer(cancer_rows[:4])
        raw = SampleMessage.__new__(SampleMessage)
        raw.__setstate__([*(getattr(base, f) for f in base.__slots__[:8]), 1])
    else:
        base = _cancer(cancer_rows[:4])
        raw = SampleMessage(**{**{f: getattr(base, f) for f in base.__slots__}, **message})
    good = _cancer(cancer_rows[:6])
    assert service.ingest([raw, good], now=1.0) == []
    assert service.state("breast_cancer").window.rows == 6  # the message after it still counts
    snap = service.snapshots()[-1]
    assert snap.model == "_unknown" and snap.messages_dropped == {kind: 1}
    assert any(why in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_the_request_ids_of_sampled_rows_are_kept_with_the_windows_rows(service,
                                                                      cancer_rows) -> None:
    """Each row keeps its request's id and its index in it, beside the profiled columns (never
    one of them); a message without ids gives its rows none."""
    with_ids = _cancer(cancer_rows[:60], request_ids=("a", None, "b"),
                       request_rows=np.array([50, 2, 8]),
                       row_positions=np.concatenate([np.arange(50), [0, 1], np.arange(8) * 2]))
    service.ingest([with_ids, _cancer(cancer_rows[:40])], now=1.0)
    source = service.report_source("breast_cancer", None, now=2.0)
    assert source.window.rows == 100 and "request_id" not in source.rows
    ids, positions = source.keys.ids.tolist(), source.keys.positions.tolist()
    assert ids == ["a"] * 50 + [None] * 2 + ["b"] * 8 + [None] * 40
    assert positions == [*range(50), 0, 1, *range(0, 16, 2), *[-1] * 40]
    assert service.state("breast_cancer").window.closed == 1  # ids are no column: same drift


def test_without_profile_rows_count_and_latency_is_kept(service) -> None:
    x = np.zeros((100, 256), np.float32)
    outputs = {"logits": np.zeros((100, 10), np.float32), "probabilities": np.zeros((100, 10))}
    (closed,) = service.ingest([_batch("mlp", {"input": x}, outputs, n_requests=3)], now=1.0)
    assert (closed.rows, closed.result, closed.latency.count) == (100, None, 3)
    with pytest.raises(NotReady, match="^mlp/1 has no profile: build one with `vigil profile "
                       "build`$"):
        service.report_source("mlp", None, now=2.0)


def test_report_source_is_the_last_closed_window_with_rows(service, cancer_rows) -> None:
    with pytest.raises(NotReady, match=r"^no closed window with sampled rows for breast_cancer/1 "
                       r"yet: the open window \(0 rows\) closes after 100 more sampled rows$"):
        service.report_source("breast_cancer", None, now=0.5)
    service.ingest([_cancer(cancer_rows[:10])], now=1.0)
    with pytest.raises(NotReady, match=r"\(10 rows\) closes after 90 more sampled rows$"):
        service.report_source("breast_cancer", None, now=1.5)  # the open window does not count
    service.ingest([_cancer(cancer_rows[:90])], now=2.0)  # closes window 1
    source = service.report_source("breast_cancer", None, now=3.0)
    assert (source.state.version, source.window.index, source.window.rows) == ("1", 1, 100)
    assert len(source.rows["mean radius"]) == 100 and "label" in source.rows
    assert "target" not in source.rows
    service.ingest([_cancer(cancer_rows[:30])], now=4.0)
    assert service.report_source("breast_cancer", "1", now=5.0).window.index == 1
    timed = MonitorSettings(window={"rows": 100, "seconds": 30})
    service.reconfigure(timed, now=6.0)  # closes window 2, 30 rows, under the old settings
    service.tick(now=36.0)  # window 3 closes empty on time
    source = service.report_source("breast_cancer", None, now=40.0)
    assert (source.window.index, len(source.rows["mean radius"])) == (2, 30)
    assert service.state("breast_cancer").window.closed == 3
    mlp = service.state("mlp").window
    assert mlp.closes_when(40.0) == "the open window (0 rows) closes after 100 more sampled " \
        "rows or in 26 s"


def test_reconfigure_applies_or_refuses(service, cancer_rows) -> None:
    service.ingest([_cancer(cancer_rows[:10])], now=1.0)
    bad = MonitorSettings(overrides={"label": {"method": "ks"}})  # label is categorical
    with pytest.raises(ValueError, match="ks needs a numeric column"):
        service.reconfigure(bad, now=2.0)
    assert service.settings == SETTINGS and service.state("breast_cancer").window.rows == 10
    service.reconfigure(MonitorSettings(window={"rows": 5, "seconds": 30}), now=3.0)
    state = service.state("breast_cancer")
    assert state.window.latest.reason == "reconfigure" and state.window.row_limit == 5
    assert service.tick(33.0) and service.drift_doc("breast_cancer")["latest"]["reason"] == "time"


def test_drift_doc(service, cancer_rows) -> None:
    service.ingest([_cancer(cancer_rows)] * 3, now=1.0)
    doc = service.drift_doc("breast_cancer", windows=2)
    assert (doc["model"], doc["version"], doc["profile"]) == ("breast_cancer", "1", "loaded")
    assert [w["index"] for w in doc["windows"]] == [2, 3] and doc["latest"]["index"] == 3
    assert doc["settings"]["window"] == {"rows": 100, "seconds": None}
    assert len(doc["latest"]["drift"]["features"]) == 30
    assert "features" not in doc["windows"][0]["drift"]
    json.dumps(doc)  # plain JSON values only


def test_a_profile_built_for_other_model_bytes_is_not_used(example_root, tmp_path) -> None:
    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    path = root / "breast_cancer" / "1" / "profile.json"
    doc = json.loads(path.read_text())
    doc["meta"]["model_sha256"] = "0" * 64
    path.write_text(json.dumps(doc))
    service = MonitorService(MonitorAppSettings(model_repository=root), SETTINGS, now=0.0)
    assert service.state("breast_cancer").profile_status.startswith("unusable profile: built for")
    assert service.state("breast_cancer").profile is None


def test_rate_limited_log_holds_back_repeats(caplog) -> None:
    caplog.set_level(logging.WARNING, "vigil.monitor")
    log = RateLimitedLog(interval_s=3600)
    for _ in range(3):
        log.warning("k", "same thing")
    log.warning("other", "another thing")
    assert [r.getMessage() for r in caplog.records] == ["same thing", "another thing"]
    log.interval_s = 0.0
    log.warning("k", "same thing")
    assert caplog.records[-1].getMessage() == "same thing (2 more like it held back)"


def _mlp(n_rows: int, **extra) -> SampleMessage:
    x = np.zeros((n_rows, 256), np.float32)
    outputs = {"logits": np.zeros((n_rows, 10), np.float32),
               "probabilities": np.zeros((n_rows, 10), np.float32)}
    return _batch("mlp", {"input": x}, outputs, **extra)


def test_shadow_agreement_is_summed_per_window_and_exported(service) -> None:
    from monitoring.collector import MonitorCollector
    from tests.unit.monitoring.helpers import scrape

    assert service.ingest([_mlp(40, agreeing_rows=30, compared_rows=40),
                           _mlp(0, agreeing_rows=0, compared_rows=10)], now=1.0) == []
    (first,) = service.ingest([_mlp(60, agreeing_rows=54, compared_rows=60)], now=2.0)
    assert (first.agreeing_rows, first.compared_rows, first.shadow_agreement) == (84, 110, 84 / 110)
    (second,) = service.ingest([_mlp(100)], now=3.0)  # production traffic only: nothing compared
    assert (second.compared_rows, second.shadow_agreement) == (0, None)
    doc = service.drift_doc("mlp", windows=2)
    assert [w["shadow_agreement"] for w in doc["windows"]] == [
        {"ratio": 84 / 110, "agreeing_rows": 84, "compared_rows": 110},
        {"ratio": None, "agreeing_rows": 0, "compared_rows": 0},
    ]
    samples, types, _ = scrape(MonitorCollector(service.snapshots))
    mv = frozenset({"model": "mlp", "version": "1"}.items())
    assert ("vigil_shadow_agreement_ratio", mv) not in samples  # the latest window compared none
    assert samples[("vigil_shadow_compared_rows_total", mv)] == 110
    assert samples[("vigil_shadow_agreeing_rows_total", mv)] == 84
    assert types["vigil_shadow_compared_rows"] == "counter"
    service.ingest([_mlp(100, agreeing_rows=1, compared_rows=4)], now=4.0)
    samples, types, _ = scrape(MonitorCollector(service.snapshots))
    assert samples[("vigil_shadow_agreement_ratio", mv)] == 0.25
    assert types["vigil_shadow_agreement_ratio"] == "gauge"


def _publish_copy(root: Path, model: str, source: str, version: str) -> None:
    """A new version with the bytes (and profile) of another: what `vigil publish` would write."""
    target = root / model / version
    shutil.copytree(root / model / source, target)
    manifest = target / "model.yaml"
    manifest.write_text(manifest.read_text().replace(f"version: '{source}'", f"version: '{version}'"))


@pytest.fixture
def own_root(example_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(example_root, root)
    return root


def test_a_version_published_later_is_monitored_from_its_first_samples(own_root, cancer_rows,
                                                                        caplog) -> None:
    caplog.set_level(logging.INFO, "vigil.monitor")
    service = MonitorService(MonitorAppSettings(model_repository=own_root), SETTINGS, now=0.0)
    _publish_copy(own_root, "breast_cancer", "1", "2")
    (closed,) = service.ingest([_cancer(cancer_rows, version="2")], now=1.0)
    state = service.state("breast_cancer")  # the newest
    assert (state.version, state.profile_status, state.rows_received) == ("2", "loaded", 100)
    assert closed.result.drift.tested == 30
    assert service.models["breast_cancer"] == ["1", "2"]
    assert service.drift_doc("breast_cancer")["versions"] == ["1", "2"]
    assert "unknown_version" not in service.unknown.messages_dropped
    assert "breast_cancer/2 was published since the monitor started" in caplog.text


def test_unknown_versions_are_looked_for_at_most_every_5_s(own_root, cancer_rows) -> None:
    service = MonitorService(MonitorAppSettings(model_repository=own_root), SETTINGS, now=0.0)
    service.ingest([_cancer(cancer_rows[:5], version="3")], now=10.0)  # not there: looked for
    _publish_copy(own_root, "breast_cancer", "1", "3")
    service.ingest([_cancer(cancer_rows[:5], version="3")] * 2, now=14.9)  # too soon to look
    assert service.unknown.messages_dropped["unknown_version"] == 3
    assert ("breast_cancer", "3") not in service.versions
    service.ingest([_cancer(cancer_rows[:5], version="3")], now=15.0)
    assert service.state("breast_cancer", "3").rows_received == 5
    assert service.unknown.messages_dropped["unknown_version"] == 3


def test_names_that_cannot_be_versions_are_never_looked_up(own_root, cancer_rows) -> None:
    service = MonitorService(MonitorAppSettings(model_repository=own_root, models=["mlp"]),
                             SETTINGS, now=0.0)
    _publish_copy(own_root, "breast_cancer", "1", "2")
    for model, version in (("breast_cancer", "2"), ("mlp", "../breast_cancer/1"), ("mlp", "..")):
        message = dataclasses.replace(_cancer(cancer_rows[:2]), model=model, version=version)
        service.ingest([message], now=1.0)
    assert sorted(service.versions) == [("mlp", "1")]  # breast_cancer is not monitored here
    assert service.unknown.messages_dropped["unknown_version"] == 3


def test_a_later_version_that_cannot_be_read_is_dropped_and_logged(own_root, cancer_rows,
                                                                   caplog) -> None:
    caplog.set_level(logging.WARNING, "vigil.monitor")
    service = MonitorService(MonitorAppSettings(model_repository=own_root), SETTINGS, now=0.0)
    broken = own_root / "breast_cancer" / "2"
    broken.mkdir()
    (broken / "model.yaml").write_text("name: breast_cancer\nversion: '7'\n")
    service.ingest([_cancer(cancer_rows[:2], version="2")], now=1.0)
    assert service.unknown.messages_dropped["unknown_version"] == 1
    assert "cannot monitor breast_cancer/2, published since the monitor started" in caplog.text


def test_a_malformed_model_yaml_is_skipped_at_start_and_monitored_once_mended(
        own_root, cancer_rows, caplog) -> None:
    """One model's bad model.yaml failed the Monitor's start, and with it every model's
    monitoring: now it is logged and skipped, and its samples find it once it is fixed."""
    caplog.set_level(logging.ERROR, "vigil.monitor")
    manifest = own_root / "mlp" / "1" / "model.yaml"
    good = manifest.read_bytes()
    manifest.write_text("name: mlp\nversion: '1'\n")  # no sha256, no signature
    service = MonitorService(MonitorAppSettings(model_repository=own_root), SETTINGS, now=0.0)
    assert service.models == {"breast_cancer": ["1"]}
    assert "missing field" in service.unreadable["mlp"]
    assert "model mlp cannot be read and is not monitored until its files are fixed" in \
        caplog.text
    manifest.write_bytes(good)
    service.ingest([_mlp(3)], now=10.0)
    assert service.state("mlp", "1").window.rows == 3


def test_a_model_named_in_the_settings_but_absent_still_fails_the_start(own_root) -> None:
    from vigil.core.repository import ModelNotFound

    with pytest.raises(ModelNotFound, match="nope"):
        MonitorService(MonitorAppSettings(model_repository=own_root, models=["nope"]),
                       SETTINGS, now=0.0)


def test_a_later_profile_the_settings_misfit_is_not_used(own_root, cancer_rows) -> None:
    settings = MonitorSettings(window={"rows": 100, "seconds": None},
                               overrides={"label": {"method": "ks"}})  # label: categorical
    service = MonitorService(MonitorAppSettings(model_repository=own_root, models=["mlp"]),
                             settings, now=0.0)
    service.app = MonitorAppSettings(model_repository=own_root)  # breast_cancer from now on
    service.ingest([_cancer(cancer_rows[:2])], now=1.0)
    state = service.state("breast_cancer", "1")
    assert state.profile is None and state.profile_status.startswith("unusable profile: ")
    assert "ks needs a numeric column" in state.profile_status
    assert state.window.rows == 2  # its rows and latency still count


def test_rate_limited_log_remembers_a_bounded_number_of_keys(caplog, monkeypatch) -> None:
    caplog.set_level(logging.WARNING, "vigil.monitor")
    monkeypatch.setattr(RateLimitedLog, "MAX_KEYS", 3)
    log = RateLimitedLog(interval_s=3600)
    for i in range(10):  # distinct keys, all inside the interval
        log.warning(f"k{i}", f"line {i}")
    assert len(log._last) <= 3
    assert [r.getMessage() for r in caplog.records] == [f"line {i}" for i in range(10)]


def test_next_deadline_is_the_earliest_time_window_to_close(example_root: Path) -> None:
    """The ticker sleeps until then: an idle monitor wakes once per window, not every tick."""
    timed = MonitorSettings(window={"rows": 100, "seconds": 60})
    service = MonitorService(MonitorAppSettings(model_repository=example_root), timed, now=0.0)
    assert service.next_deadline() == 60.0  # every window opened at now=0.0
    closed = service.tick(61.0)
    assert closed and service.next_deadline() == 121.0
    assert service.needs_ticks() is False  # no alert engine here: no silence rules
    rows_only = MonitorService(MonitorAppSettings(model_repository=example_root), SETTINGS, 0.0)
    assert rows_only.next_deadline() is None  # no window closes by time
