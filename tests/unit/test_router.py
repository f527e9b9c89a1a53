"""ModelRouter: production (the newest without aliases), explicit versions, 404 for unknown ones,
the weighted and sticky canary, the shadow, retired and unloaded models."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.protocol import NotFound, NotLoaded, NotReady
from vigil.core.tensors import TensorSpec
from vigil.core.repository import publish, scan
from serving.router import ModelRouter, ModelRoutes, sticky_share
from vigil.core.aliases import AliasState, Canary


@pytest.fixture
def router() -> ModelRouter[str]:
    # Versions arrive oldest first, as repository.scan gives them.
    return ModelRouter.plain(
        {
            "mlp": {"1": "mlp-1", "2": "mlp-2", "10": "mlp-10"},
            "breast_cancer": {"1": "bc-1"},
            "retired": {},
        }
    )


def test_default_version_is_the_newest(router: ModelRouter[str]) -> None:
    assert router.resolve("mlp").target == "mlp-10"
    assert router.resolve("mlp", None).target == "mlp-10"
    assert router.resolve("mlp", "").target == "mlp-10"
    assert router.resolve("breast_cancer").target == "bc-1"


def test_explicit_version(router: ModelRouter[str]) -> None:
    assert router.resolve("mlp", "1").target == "mlp-1"
    assert router.resolve("mlp", "2").target == "mlp-2"
    assert router.versions("mlp") == ["1", "2", "10"]


def test_unknown_model(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound) as info:
        router.resolve("resnet")
    assert info.value.status_code == 404
    assert str(info.value) == (
        "model 'resnet' is not served here; known models: ['breast_cancer', 'mlp']"
    )
    with pytest.raises(NotFound, match=r"^model 'resnet' is not served here"):
        router.versions("resnet")


def test_a_model_without_versions_is_not_served(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound, match=r"^model 'retired' is not served here"):
        router.resolve("retired")


def test_unknown_version(router: ModelRouter[str]) -> None:
    with pytest.raises(NotFound) as info:
        router.resolve("mlp", "3")
    assert info.value.status_code == 404
    assert str(info.value) == "model 'mlp' has no version '3'; versions: ['1', '2', '10']"


def test_iteration_lists_every_version(router: ModelRouter[str]) -> None:
    assert list(router) == [
        ("mlp", "1", "mlp-1"),
        ("mlp", "2", "mlp-2"),
        ("mlp", "10", "mlp-10"),
        ("breast_cancer", "1", "bc-1"),
    ]


def test_router_over_a_scanned_repository(tmp_path: Path) -> None:
    spec = (TensorSpec("x", "FP32", (-1,)),)
    for version in ("10", "2", "9"):
        publish(tmp_path, "m", version, version.encode(), spec, spec)
    found = scan(tmp_path)
    router = ModelRouter.plain(
        {name: {v.manifest.version: v for v in versions} for name, versions in found.items()}
    )
    assert router.resolve("m").target.manifest.version == "10"  # numeric order, not "9" > "10"
    assert router.versions("m") == ["2", "9", "10"]


def _routes(aliases: AliasState, versions=("1", "2", "3")) -> ModelRoutes[str]:
    return ModelRoutes({v: f"m-{v}" for v in versions}, aliases, tuple(versions))


def test_production_alias_wins_over_the_newest() -> None:
    router = ModelRouter({"m": _routes(AliasState("m", production="2"))})
    assert router.resolve("m").target == "m-2"
    assert router.production("m") == "m-2"
    assert router.resolve("m", "3").target == "m-3"  # explicit versions are still served


def test_canary_takes_its_weight_by_the_draw() -> None:
    draws = iter([0.05, 0.0999, 0.1, 0.5])
    state = AliasState("m", production="1", canary=Canary("2", 0.1))
    router = ModelRouter({"m": _routes(state)}, draw=lambda: next(draws))
    assert [router.resolve("m").target for _ in range(4)] == ["m-2", "m-2", "m-1", "m-1"]
    assert router.resolve("m", "1").target == "m-1"  # an explicit version never draws


def test_sticky_canary_keeps_each_key_on_one_version() -> None:
    state = AliasState("m", production="1", canary=Canary("2", 0.3, "x-user"))
    router = ModelRouter({"m": _routes(state)}, draw=lambda: 0.0)  # the draw would say canary
    headers = {f"u{i}": f"user-{i}" for i in range(2000)}
    first = {k: router.resolve("m", None, {"x-user": v}.get).target for k, v in headers.items()}
    again = {k: router.resolve("m", None, {"x-user": v}.get).target for k, v in headers.items()}
    assert first == again
    share = sum(t == "m-2" for t in first.values()) / len(first)
    assert 0.27 < share < 0.33  # 0.3 +- 3 sigma of a binomial over 2000 keys
    for key, value in headers.items():
        assert (sticky_share("m", value) < 0.3) == (first[key] == "m-2")
    # Without the header the request draws.
    assert router.resolve("m", None, {}.get).target == "m-2"


def test_shadow_comes_with_production_and_canary_answers() -> None:
    state = AliasState("m", production="1", shadow="3")
    route = ModelRouter({"m": _routes(state)}).resolve("m")
    assert (route.target, route.shadow) == ("m-1", "m-3")
    assert ModelRouter({"m": _routes(state)}).resolve("m", "1").shadow is None


def test_retired_version_and_unloaded_model() -> None:
    state = AliasState("m", production="1", retired=frozenset({"2"}))
    router = ModelRouter({"m": _routes(state, ("1", "3"))})
    with pytest.raises(NotFound, match="version '2' is retired"):
        router.resolve("m", "2")
    unloaded = ModelRouter({"m": _routes(AliasState("m", unloaded=True))})
    with pytest.raises(NotReady) as info:
        unloaded.resolve("m")
    assert info.value.status_code == 503
    assert "unloaded; POST /v2/repository/models/m/load" in str(info.value)


def test_production_not_loaded_is_not_ready() -> None:
    router = ModelRouter({"m": _routes(AliasState("m", production="9"))})
    with pytest.raises(NotReady, match="production alias names version '9', which is not in"):
        router.resolve("m")  # a broken alias (edited by hand) says so
    unloaded = ModelRoutes({"2": "m-2"}, AliasState("m", production="1"), ("1", "2"))
    with pytest.raises(NotReady, match="no production version loaded"):
        ModelRouter({"m": unloaded}).resolve("m")


def test_a_published_version_not_loaded_here_can_be_loaded_on_demand() -> None:
    """A version on disk, not retired, that this replica has not loaded (no alias on it, idle):
    NotLoaded (503 if it reached a client; the server loads it first). Unknown and retired ones
    stay 404, and the errors list the versions a request may name, loaded or not."""
    state = AliasState("m", production="1", retired=frozenset({"3"}))
    routes = ModelRoutes({"1": "m-1"}, state, ("1", "2", "3"))
    router = ModelRouter({"m": routes})
    assert routes.available == ("1", "2")
    with pytest.raises(NotLoaded) as info:
        router.resolve("m", "2")
    assert info.value.status_code == 503 and isinstance(info.value, NotReady)
    with pytest.raises(NotFound, match=r"version '3' is retired; versions: \['1', '2'\]"):
        router.resolve("m", "3")
    with pytest.raises(NotFound, match=r"has no version '4'; versions: \['1', '2'\]"):
        router.resolve("m", "4")
    assert router.versions("m") == ["1"]


def test_production_comes_with_the_canary_to_compare_its_answer() -> None:
    state = AliasState("m", production="1", canary=Canary("2", 0.5))
    draws = iter([0.1, 0.9])
    router = ModelRouter({"m": _routes(state)}, draw=lambda: next(draws))
    canary, production = router.resolve("m"), router.resolve("m")
    assert (canary.target, canary.production) == ("m-2", "m-1")
    assert (production.target, production.production) == ("m-1", None)
    assert router.resolve("m", "2").production is None  # a named version is never compared
