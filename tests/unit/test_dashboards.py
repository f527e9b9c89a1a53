"""vigil.tools.dashboards: the committed Grafana JSON is what the module generates, its variables, its
panels, and every metric its queries name exists somewhere we can point at."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

pytest.importorskip("grafana_foundation_sdk", reason="needs the observe extra")

from vigil.tools import dashboards  # noqa: E402
from vigil.tools.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "configs" / "grafana" / "vigil.json"
REGENERATE = f"{dashboards.REGENERATE} --out configs/grafana/vigil.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ROW_TITLES = ["Traffic", "Batching", "Ray Serve", "GPU", "Drift", "Data quality",
              "Alerts and webhooks", "Canary and production traffic"]


@pytest.fixture(scope="module")
def board() -> dict:
    return dashboards.build()


def _panels(board: dict) -> Iterator[dict]:
    for row in board["panels"]:
        yield from row.get("panels", [])


def _exprs(board: dict) -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target and every Prometheus annotation."""
    for panel in _panels(board):
        for target in panel["targets"]:
            yield panel["title"], target["expr"]
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            yield f"annotation {annotation['name']}", annotation["expr"]


# -- the committed file ----------------------------------------------------------------------------

def test_committed_json_is_what_the_module_generates() -> None:
    assert COMMITTED.is_file(), f"{COMMITTED} is missing; run `{REGENERATE}`"
    assert COMMITTED.read_text(encoding="utf-8") == dashboards.render(), (
        f"configs/grafana/vigil.json is stale: run `{REGENERATE}` and commit it")


def test_render_is_deterministic_sorted_and_ends_with_a_newline() -> None:
    text = dashboards.render()
    assert text == dashboards.render()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- shape -----------------------------------------------------------------------------------------

def test_dashboard_identity_and_rows(board: dict) -> None:
    assert board["uid"] == "vigil" and board["title"] == "Vigil"
    rows = board["panels"]
    assert [r["title"] for r in rows] == ROW_TITLES
    assert all(r["type"] == "row" and r["collapsed"] and r["panels"] for r in rows)
    ids = [p["id"] for r in rows for p in (r, *r["panels"])]  # document order
    assert ids == list(range(1, len(ids) + 1))


def test_annotations_grafanas_own_and_firing_alerts(board: dict) -> None:
    annotations = board["annotations"]["list"]
    assert annotations[0]["builtIn"] == 1
    assert [a["name"] for a in annotations[1:]] == ["Vigil alerts"]
    assert "vigil_alert_firing{" in annotations[1]["expr"]


def test_variables_datasource_model_and_version(board: dict) -> None:
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", "model", "version"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        v = variables[name]
        assert v["type"] == "query" and v["multi"] and v["includeAll"]
        assert v["query"].startswith("label_values(") and v["query"].endswith(f", {name})")
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_is_described_with_a_unit_and_a_query(board: dict) -> None:
    for panel in _panels(board):
        title = panel["title"]
        assert panel["description"], title
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["fieldConfig"]["defaults"].get("unit"), title
        assert any(t.get("expr", "").strip() for t in panel["targets"]), title
        assert all(t["expr"].strip() for t in panel["targets"]), title
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), title
        if panel["type"] in ("timeseries", "state-timeline"):
            assert panel["options"]["legend"]["showLegend"], title


def test_panels_filter_by_the_model_and_version_variables(board: dict) -> None:
    for title, expr in _exprs(board):
        if "vigil_" in expr and "webhook" not in expr and "auth_rejected" not in expr:
            assert 'model=~"$model"' in expr, title


def test_quantiles_come_from_buckets_summed_by_le(board: dict) -> None:
    """Written here, or recorded by a rule that computes them from the buckets."""
    quantiles = [e for _, e in _exprs(board) if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"histogram_quantile\(0\.\d+, sum by \(le, [^)]*\) \(rate\(\w+_bucket", expr)
    rules = recording_rules()
    recorded = {n for _, e in _exprs(board) for n in metric_names(e) if re.search(r":p\d+_", n)}
    for name in recorded:
        if name in rules:
            assert re.match(r"histogram_quantile\(0\.\d+, sum by \(le\b.*_bucket\[", rules[name]), (
                name, rules[name])


# -- metric names ----------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
             "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names in grouping clauses, or inside selectors, ranges and strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _NAME.finditer(text):
        name, rest = match.group(), text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # the tail of a number such as 1e3
        names.add(name)
    return names


def test_metric_names_parser() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, model) (rate(ray_vigil_x_bucket{a="b(c)"}'
            '[$__rate_interval]))) / ignoring(version) group_left sum by (model) (m2) '
            "or vector(0) + time() - vigil:y:rate5m")
    assert metric_names(expr) == {"ray_vigil_x_bucket", "m2", "vigil:y:rate5m"}


@lru_cache(maxsize=1)
def recording_rules() -> dict[str, str]:
    """Recorded name -> expression, from configs/prometheus (empty where the folder is absent)."""
    import yaml

    rules = {}
    for path in sorted((ROOT / "configs" / "prometheus").glob("*.y*ml")):
        for group in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                if "record" in rule:
                    rules[rule["record"]] = " ".join(str(rule["expr"]).split())
    return rules


@lru_cache(maxsize=1)
def known_names() -> tuple[frozenset[str], frozenset[str]]:
    """(exact names, ray_serve_ names as they occur in Ray's source)."""
    from vigil.tools.reference_observability import monitor_metrics, replica_metrics

    # What the collectors yield and the replicas declare, read from the objects themselves.
    known: set[str] = set()
    for metric in [*monitor_metrics(), *replica_metrics()]:
        known.add(metric.name)
        if metric.kind == "histogram":
            known |= {metric.name + s for s in HISTOGRAM_SUFFIXES}
    known |= set(recording_rules())
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    serve_dir = Path(next(iter(spec.submodule_search_locations))) / "serve"
    ray_names = set()
    for source in serve_dir.rglob("*.py"):
        ray_names |= set(re.findall(r'"(serve_[a-z0-9_]+)"', source.read_text(encoding="utf-8")))
    return frozenset(known), frozenset(ray_names)


def is_known(name: str) -> bool:
    exact, ray_serve = known_names()
    if name in exact or name.startswith("DCGM_FI_"):
        return True
    if name.startswith("ray_serve_"):
        base = name.removeprefix("ray_")
        return any(base.removesuffix(s) in ray_serve for s in ("", "_total", *HISTOGRAM_SUFFIXES))
    return False


def test_every_metric_name_is_declared_somewhere(board: dict) -> None:
    used = {name: title for title, expr in _exprs(board) for name in metric_names(expr)}
    assert used, "no metric names parsed"
    unknown = {name: title for name, title in sorted(used.items()) if not is_known(name)}
    print("metric names used:", ", ".join(sorted(used)))
    print("unknown metric names:", unknown or "none")
    assert not unknown, (
        f"panels name metrics declared nowhere (the monitor's collectors, serving/metrics.py, "
        f"configs/prometheus recording rules, Ray Serve's source, DCGM): {unknown}")


def test_no_precomputed_quantile_gauges(board: dict) -> None:
    used = {n for _, e in _exprs(board) for n in metric_names(e)}
    assert "vigil_window_latency_seconds" not in used


def test_the_known_set_rejects_made_up_names() -> None:
    assert not is_known("ray_serve_no_such_metric")
    assert not is_known("vigil_no_such_metric")
    assert not is_known("ray_vigil_no_such_metric")
    assert is_known("ray_serve_deployment_replica_healthy")
    assert is_known("ray_vigil_request_duration_seconds_bucket")
    assert not is_known("ray_vigil_requests_total_bucket")


# -- the command line ------------------------------------------------------------------------------

def test_check_passes_on_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "build", "--out", str(COMMITTED), "--check"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_check_fails_after_a_change_and_build_repairs_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grafana" / "vigil.json"
    assert main(["dashboards", "build", "--out", str(out), "--check"]) == 1  # missing
    assert main(["dashboards", "build", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")
    assert main(["dashboards", "build", "--out", str(out), "--check"]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    data["title"] = "Edited by hand"
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["dashboards", "build", "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "differs" in err and "vigil dashboards build --out" in err
    assert main(["dashboards", "build", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["dashboards", "build", "--out", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_without_the_sdk_the_command_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import vigil.tools

    for name in [n for n in sys.modules if n.split(".")[0] == "grafana_foundation_sdk"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: the import fails as if not installed
    monkeypatch.delitem(sys.modules, "vigil.tools.dashboards")
    monkeypatch.delattr(vigil.tools, "dashboards")
    assert main(["dashboards", "build", "--out", str(tmp_path / "x.json")]) == 1
    assert ".[observe]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
