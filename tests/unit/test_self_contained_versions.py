"""A published version needs nothing outside its folder: published from one place (CI) with
reference data from a scratch folder, then served from another (a cluster), its drift report
still builds, through the report functions and through the monitor's report route."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from monitoring.monitor import Monitor, build_asgi_app
from monitoring.profile import Profile
from monitoring.report import drift_report_html, version_reference
from monitoring.settings import MonitorSettings
from tests.local_http import serving
from vigil.core.messages import SampleMessage
from vigil.core.repository import read_manifest
from vigil.core.tokens import create_token
from vigil.tools.publishing import publish_file

WINDOW_ROWS = 100


@pytest.fixture(scope="module")
def moved(example_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """breast_cancer's model published as bc/1 from a CI checkout with --reference from a
    scratch folder; the checkout is then deleted and the repository moved to another place.
    Returns the version's folder where it now is."""
    base = tmp_path_factory.mktemp("hosts")
    ci, repo = base / "ci-checkout", base / "ci-repo"
    ci.mkdir()
    source = example_root / "breast_cancer" / "1"
    shutil.copy(source / "model.onnx", ci / "model.onnx")
    shutil.copy(source / "reference.parquet", ci / "train-split.parquet")
    features = read_manifest(source).metadata["feature_names"]
    publish_file(
        repo, ci / "model.onnx", "bc", actor="ci", reference=ci / "train-split.parquet",
        outputs_from_model=True, metadata={"feature_names": features},
        training_data=ci / "train-split.parquet", progress=False,
    )
    shutil.rmtree(ci)
    served = base / "cluster" / "models"
    served.parent.mkdir()
    shutil.move(repo, served)
    return served / "bc" / "1"


def _window(example_root: Path) -> np.ndarray:
    """WINDOW_ROWS rows of the model's input, shifted away from the reference."""
    source = example_root / "breast_cancer" / "1"
    features = read_manifest(source).metadata["feature_names"]
    frame = pd.read_parquet(source / "reference.parquet")
    return frame[features].to_numpy(np.float32)[:WINDOW_ROWS] * 1.5


def test_the_version_holds_its_reference_data_and_names_nothing_outside(moved: Path) -> None:
    """The profile names the copied data relatively, under its digest; the lineage names the
    training file without the publisher's path."""
    profile = Profile.load(moved)
    meta = profile.meta or {}
    raw = (moved / "reference.parquet").read_bytes()
    assert (meta["data"], meta["data_sha256"]) == ("reference.parquet",
                                                    hashlib.sha256(raw).hexdigest())
    text = "".join(p.read_text(errors="replace") for p in moved.iterdir() if p.suffix in
                   (".yaml", ".json"))
    assert "ci-checkout" not in text and "ci-repo" not in text
    lineage = read_manifest(moved).lineage
    assert lineage["training_data"]["file"] == "train-split.parquet"


def test_the_report_builds_from_the_moved_version(moved: Path, example_root: Path) -> None:
    """Before, the profile recorded the publisher's absolute path to the scratch file, and the
    report had no reference data once it was gone (the monitor answered 409)."""
    profile = Profile.load(moved)
    reference = version_reference(profile, moved, max_rows=200)
    assert len(reference["mean radius"]) == 200
    x = _window(example_root)
    names = [c.name for c in profile.features]
    html = drift_report_html(profile, reference, {n: x[:, i] for i, n in enumerate(names)})
    assert "<html" in html[:2000].lower() and "mean radius" in html


@pytest.fixture
def monitor_url(moved: Path, example_root: Path, request: pytest.FixtureRequest
                ) -> Iterator[tuple[str, str]]:
    """The monitor, without Ray, over the moved repository (token auth), one closed window of
    bc/1 with rows, served over HTTP on 127.0.0.1. Yields (url, monitor token)."""
    repo = moved.parents[1]
    token = create_token(repo.parent / "tokens.yaml", request.node.name[:64], frozenset({"monitor"}))
    monitor = Monitor({"model_repository": str(repo)})
    monitor.service.reconfigure(MonitorSettings(window={"rows": WINDOW_ROWS, "seconds": None}),
                                now=0.0)
    session = monitor.service.state("bc", "1")
    x = _window(example_root)
    label = np.ones(len(x), np.int64)
    message = SampleMessage(
        model="bc", version="1", inputs={"input": x},
        outputs={"label": label, "probabilities": np.full((len(x), 2), 0.5, np.float32)},
        latency_s=np.full(1, 0.01), status=np.full(1, 200, np.int16), dropped_rows=0,
        dropped_requests=0,
    )
    (closed,) = monitor.service.ingest([message], now=1.0)
    assert closed.rows == WINDOW_ROWS and session.profile is not None
    try:
        with serving(build_asgi_app(monitor)) as url:
            yield url, token
    finally:
        monitor._worker.shutdown(wait=True)
        monitor._report_worker.shutdown(wait=True)


def test_the_monitors_report_route_answers_for_the_moved_version(monitor_url) -> None:
    """GET /v1/models/bc/report on the moved repository: 200 and the Evidently page (it was a
    409, 'the reference data of bc/1 is not available (/.../train-split.parquet)')."""
    url, token = monitor_url
    answer = httpx.get(f"{url}/v1/models/bc/report", params={"version": "1"},
                       headers={"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"},
                       timeout=120)
    assert answer.status_code == 200, answer.text
    assert "mean radius" in answer.text  # httpx undoes the gzip encoding
    assert answer.headers["content-encoding"] == "gzip"
