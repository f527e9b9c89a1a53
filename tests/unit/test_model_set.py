"""ModelSet on real onnxruntime sessions: what a replica loads from the repository and its aliases,
what a refresh loads and releases, and what it does with versions and models it cannot read."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from serving.model_set import ModelSet
from serving.served import ServedModel
from serving.protocol import NotFound, NotLoaded, NotReady
from serving.runtime import GpuUnavailable
from serving.settings import BatchSettings, LoadingSettings, RuntimeSettings
from tests.graphs import SLOW_MODEL, SLOW_WIDTH, identity_graph
from vigil.core import model_ops
from vigil.core.repository import MANIFEST_FILE, publish
from vigil.core.tensors import TensorSpec

SPEC = [("x", "FP32", (-1, 2))]
INPUTS = (TensorSpec("x", "FP32", (-1, 2)),)
OUTPUTS = (TensorSpec("x_out", "FP32", (-1, 2)),)


def _publish(root: Path, name: str, version: str) -> None:
    proto = identity_graph(SPEC)
    proto.doc_string = f"{name}/{version}"  # distinct bytes per version
    publish(root, name, version, proto.SerializeToString(), INPUTS, OUTPUTS)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for v in ("1", "2", "3"):
        _publish(root, "m", v)
    _publish(root, "other", "1")
    return root


def _set(root: Path, **kwargs) -> ModelSet:
    models = ModelSet(root, None, RuntimeSettings(), BatchSettings(), **kwargs)
    models.refresh()
    return models


def test_every_live_version_loads_and_production_is_pinned(repo: Path) -> None:
    models = _set(repo)
    assert models.router.versions("m") == ["1", "2", "3"]
    assert models.router.resolve("m").target.model.version == "1"  # pinned when 2 appeared
    assert models.published == {"m": ["1", "2", "3"], "other": ["1"]}


def test_a_refresh_follows_the_aliases_and_releases_retired_versions(repo: Path) -> None:
    models = _set(repo)
    one = models.router.resolve("m", "1").target
    model_ops.apply(repo, "m", "promote", actor="t", version="2", force=True, reason="test")
    model_ops.apply(repo, "m", "retire", actor="t", version="3")
    done = models.refresh()
    assert done.released == ["m/3"] and done.loaded == []
    assert models.router.resolve("m").target.model.version == "2"
    with pytest.raises(NotFound, match="retired"):
        models.router.resolve("m", "3")
    # Loaded versions are kept, not rebuilt: the same object serves on.
    assert models.router.resolve("m", "1").target is one


def test_a_version_published_later_loads_on_the_next_refresh(repo: Path) -> None:
    models = _set(repo)
    _publish(repo, "m", "4")
    done = models.refresh()
    assert done.loaded == ["m/4"]
    assert models.router.resolve("m").target.model.version == "1"  # publishing moves nothing


def test_a_tampered_version_is_not_loaded_and_the_others_serve(repo: Path) -> None:
    _publish(repo, "m", "4")
    model_file = repo / "m" / "4" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    models = _set(repo)
    assert models.router.versions("m") == ["1", "2", "3"]
    assert "does not match" in models.failed[("m", "4")]
    from vigil.core.repository import RepositoryError

    with pytest.raises(RepositoryError, match="does not match"):
        models.check_loadable("m", "4")


def test_a_malformed_model_keeps_its_loaded_versions_and_spares_the_others(repo: Path) -> None:
    models = _set(repo)
    (repo / "other" / "2").mkdir()
    (repo / "other" / "2" / MANIFEST_FILE).write_text("name: other\nversion: '2'\n")  # no sha256
    _publish(repo, "m", "4")
    done = models.refresh()
    assert done.loaded == ["m/4"]  # the readable model moved on
    assert models.router.versions("other") == ["1"]  # the unreadable one kept what it had
    (fault,) = models.faults["other"]
    assert fault.kind == "unreadable" and "missing field" in fault.detail


def test_no_gpu_where_one_is_required_stops_the_replica(repo: Path) -> None:
    def refuse(version):
        raise GpuUnavailable("runtime.require_gpu is set but there is no CUDA here")

    with pytest.raises(GpuUnavailable):
        _set(repo, load=refuse)


def test_unload_releases_every_version_and_load_brings_them_back(repo: Path) -> None:
    models = _set(repo)
    model_ops.apply(repo, "m", "unload", actor="t")
    assert sorted(models.refresh().released) == ["m/1", "m/2", "m/3"]
    model_ops.apply(repo, "m", "load", actor="t")
    assert sorted(models.refresh().loaded) == ["m/1", "m/2", "m/3"]


# ---------------------------------------------------------------- one owner per shared structure


def _versions_loaded_with(models: ModelSet) -> set[BatchSettings]:
    return {served.batcher.settings for _, _, served in models.router}


def test_a_version_loaded_while_reconfigure_runs_gets_the_new_batching(repo: Path) -> None:
    """reconfigure() arrives (from Serve) while a refresh is building a new version's session:
    before, the new version kept the batching read before the change, for ever; now every
    version installed after a reconfigure serves with its settings."""
    new = BatchSettings(max_batch_rows=7)
    holder: dict[str, ModelSet] = {}

    def load_then_reconfigure(version):
        served = ServedModel(version, RuntimeSettings(), holder["set"].batching)
        if version.manifest.version == "4":  # mid-refresh, from another thread, as Serve does
            t = threading.Thread(target=holder["set"].reconfigure, args=(new,))
            t.start()
            t.join(10)
        return served

    models = holder["set"] = ModelSet(repo, None, RuntimeSettings(), BatchSettings(),
                                      load=load_then_reconfigure)
    models.refresh()
    _publish(repo, "m", "4")
    assert models.refresh().loaded == ["m/4"]
    assert _versions_loaded_with(models) == {new}


def _index(models: ModelSet) -> list[tuple]:
    """What the admin index and aliases routes read, as they read it (on the event loop)."""
    rows = []
    routes = models.router.models()
    for name, published in sorted(models.published.items()):
        loaded = routes.get(name)
        aliases = models.aliases(name)
        failed = {v: why for (m, v), why in models.failed.items() if m == name}
        for version in published:
            ready = loaded is not None and version in loaded.versions
            rows.append((name, version, ready, aliases.roles(version, published),
                         failed.get(version, "")))
    return rows


def _scrape(models: ModelSet) -> dict[str, tuple]:
    """What the batching state (and a metrics scrape) reads of every loaded version."""
    return {f"{n}/{v}": (s.batcher.max_rows, s.batcher.queued_rows, s.model.max_batch_rows)
            for n, v, s in models.router}


def test_refresh_reconfigure_admin_reads_and_scrapes_at_once(repo: Path) -> None:
    """Four threads for a few seconds: refreshes (versions published, retired, a model broken
    and mended, tampered versions that fail), reconfigures, admin-style reads of the index,
    aliases and failed versions, and scrapes of every loaded version. Before, `failed` changed
    under its readers ("dictionary changed size during iteration") and versions loaded during a
    reconfigure kept the old batching; now no thread fails and every version ends with the last
    batching."""
    for v in range(2, 40):  # tampered: they fail on every refresh, a long `failed` to iterate
        _publish(repo, "bad", str(v))
        (repo / "bad" / str(v) / "model.onnx").write_bytes(b"tampered")
    _publish(repo, "bad", "1")
    models = _set(repo)
    errors: list[BaseException] = []
    stop = threading.Event()
    last = {"batching": models.batching}

    def forever(step) -> Callable[[], None]:
        def loop() -> None:
            try:
                while not stop.is_set():
                    step()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)
                stop.set()
        return loop

    counter = iter(range(5, 10_000))

    def refresh() -> None:
        broken = repo / "other" / "9"
        if broken.exists():
            shutil.rmtree(broken)
        else:
            broken.mkdir()
            (broken / MANIFEST_FILE).write_text("name: other\nversion: '9'\n")  # no sha256
        version = str(next(counter))
        _publish(repo, "m", version)
        models.refresh()
        model_ops.apply(repo, "m", "retire", actor="t", version=version)

    sizes = iter(range(1, 10_000))

    def reconfigure() -> None:
        last["batching"] = BatchSettings(max_batch_rows=next(sizes))
        models.reconfigure(last["batching"])
        time.sleep(0.001)

    threads = [threading.Thread(target=forever(f)) for f in
               (refresh, reconfigure, lambda: _index(models), lambda: _scrape(models))]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: the races show within seconds
    try:
        for t in threads:
            t.start()
        stop.wait(4.0)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    assert _versions_loaded_with(models) == {last["batching"]}
    assert len(_index(models)) >= 40
    models.close()


# ---------------------------------------------------------------- retiring drains, then closes


def _slow_iterations(seconds: float) -> int:
    """Iterations of the slow graph that take about `seconds` on this machine now."""
    from tests.graphs import slow_graph
    import onnxruntime as ort

    session = ort.InferenceSession(slow_graph().SerializeToString())
    x = np.zeros((1, SLOW_WIDTH), np.float32)
    fastest = float("inf")
    for _ in range(3):  # the fastest of three: a busy machine then makes the runs longer
        started = time.perf_counter()
        session.run(None, {"x": x, "iterations": np.array([4000])})
        fastest = min(fastest, time.perf_counter() - started)
    return max(1, int(4000 * seconds / fastest))


def test_retiring_a_version_lets_its_queued_requests_finish_then_closes_it(tmp_path: Path) -> None:
    """slow/2 has eight requests queued behind one running (about 1 s each, 9 s in all) when it
    is retired. Before, its session was closed 5 s after the release and the requests
    still queued failed; now every one is answered, and the session is closed after the last."""
    builder, inputs, outputs = SLOW_MODEL
    root = tmp_path / "repo"
    for v in ("1", "2"):
        proto = builder()
        proto.doc_string = v
        publish(root, "slow", v, proto.SerializeToString(), inputs, outputs)
    models = _set(root)
    x = np.zeros((1, SLOW_WIDTH), np.float32)
    request = {"x": x, "iterations": np.array([_slow_iterations(1.0)])}

    async def main() -> list:
        served = models.router.resolve("slow", "2").target
        served.users = getattr(served, "users", 0) + 9  # routed to it, as the server holds them
        calls = [asyncio.ensure_future(served.batcher.submit(request, 1)) for _ in range(9)]
        await asyncio.sleep(0.3)  # all nine are queued or running
        model_ops.apply(root, "slow", "retire", actor="t", version="2")
        assert (await asyncio.to_thread(models.refresh)).released == ["slow/2"]
        results = await asyncio.gather(*calls, return_exceptions=True)
        served.users -= 9
        return [served, results]

    served, results = asyncio.run(main())
    assert [type(r) for r in results] == [dict] * 9, results
    deadline = time.monotonic() + 10
    while served.model.session is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.model.session is None


# ---------------------------------------------------------------- which versions stay loaded


def _publish_old(root: Path, name: str, version: str) -> None:
    """A version published a day ago: not recent, so loaded only when an alias or a request
    names it."""
    proto = identity_graph(SPEC)
    proto.doc_string = f"{name}/{version}"
    publish(root, name, version, proto.SerializeToString(), INPUTS, OUTPUTS,
            created=datetime.now(UTC) - timedelta(days=1))


def test_loaded_versions_stay_bounded_however_many_are_published_and_named(tmp_path: Path) -> None:
    """30 versions published: only production (1, pinned as 2 appeared) loads at start;
    every other version loads when a request names it, and the least recently used unaliased
    one goes when that makes more than max_unaliased (2). Before, all 30 stayed loaded."""
    root = tmp_path / "repo"
    for v in range(1, 31):
        _publish_old(root, "m", str(v))
    models = _set(root, loading=LoadingSettings(max_unaliased=2, drain_timeout_s=1.0))
    assert models.router.versions("m") == ["1"]
    with pytest.raises(NotLoaded):
        models.router.resolve("m", "5")
    for v in range(2, 31):
        models.load_version("m", str(v))
        loaded = models.router.versions("m")
        assert str(v) in loaded and "1" in loaded and len(loaded) <= 3
    assert models.router.versions("m") == ["1", "29", "30"]
    assert models.refresh().released == []  # recent use keeps them for unaliased_idle_s
    assert models.wait_drained(10)
    assert models.metadata("m", "5")["parameters"]["sha256"]  # metadata of any version, loaded or not
    assert models.metadata("m", None)["versions"] == [str(v) for v in range(1, 31)]


def test_an_alias_loads_its_version_and_an_unaliased_one_goes_after_idling(tmp_path: Path) -> None:
    """Promoting 3 and setting 2 as canary loads both at the next refresh; the old production
    (1, pinned) loses its alias and, with unaliased_idle_s 0, is drained and released at once."""
    root = tmp_path / "repo"
    for v in ("1", "2", "3"):
        _publish_old(root, "m", v)
    models = _set(root, loading=LoadingSettings(unaliased_idle_s=0.0, drain_timeout_s=1.0))
    assert models.router.versions("m") == ["1"]
    model_ops.apply(root, "m", "promote", actor="t", version="3", force=True, reason="test")
    model_ops.apply(root, "m", "canary", actor="t", version="2", weight=0.1, force=True,
                    reason="not judged here: only loading is")
    done = models.refresh()
    assert (sorted(done.loaded), done.released) == (["m/2", "m/3"], ["m/1"])
    assert models.router.versions("m") == ["2", "3"]


def test_no_unaliased_versions_means_naming_one_is_not_ready(tmp_path: Path) -> None:
    """max_unaliased 0: a request naming a version no alias points at gets 503 (NotReady),
    an unknown version 404."""
    root = tmp_path / "repo"
    for v in ("1", "2"):
        _publish_old(root, "m", v)
    models = _set(root, loading=LoadingSettings(max_unaliased=0))
    with pytest.raises(NotReady, match="no alias points at it"):
        models.load_version("m", "2")
    with pytest.raises(NotFound, match="no version '7'"):
        models.load_version("m", "7")
