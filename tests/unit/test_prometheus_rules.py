"""configs/prometheus: promtool's checks and rule unit tests, the naming scheme, and every
metric the rules and the dashboard read is one the code declares."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus_tools import (
    CONFIG,
    PROMETHEUS_DIR,
    RULE_FILES,
    ROOT,
    dashboard_expressions,
    expected_absence,
    rule_expressions,
    rules,
    selectors,
)

RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
# Ray Serve's metric names, read from its source (never imported: unit tests run without Ray)
RAY_SERVE_SOURCE = Path(importlib.util.find_spec("ray").origin).parent / "serve"


def _promtool(tools, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([tools.promtool, *args], capture_output=True, text=True, cwd=cwd)


def _ok(run: subprocess.CompletedProcess) -> str:
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    return out


# ---------------------------------------------------------------- promtool


def test_config_syntax_as_committed(prometheus_tools):
    _ok(_promtool(prometheus_tools, "check", "config", "--syntax-only", str(CONFIG)))


def test_config_full_check_with_its_files_in_place(prometheus_tools, tmp_path):
    """promtool 2.42 fails a full check when the credentials file is missing (a missing file_sd
    file is only a warning): check a copy laid out as the repository, with the token file that
    `make observe` writes and a service-discovery file in the format Ray writes."""
    conf_dir = tmp_path / "configs" / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, conf_dir)
    (tmp_path / ".observe").mkdir()
    (tmp_path / ".observe" / "prometheus.token").write_text("vigil_example\n")
    sd = tmp_path / "prom_metrics_service_discovery.json"
    sd.write_text('[{"labels": {"job": "ray"}, "targets": ["127.0.0.1:44217", "127.0.0.1:8085"]}]')
    text = (conf_dir / "prometheus.yml").read_text()
    assert "/tmp/ray/prom_metrics_service_discovery.json" in text
    (conf_dir / "prometheus.yml").write_text(
        text.replace("/tmp/ray/prom_metrics_service_discovery.json", str(sd)))

    out = _ok(_promtool(prometheus_tools, "check", "config", str(conf_dir / "prometheus.yml"),
                        cwd=tmp_path))
    assert "WARNING" not in out, out  # the SD file was found and read
    assert "2 rule files found" in out, out


def test_config_full_check_fails_without_the_token_file(prometheus_tools, tmp_path):
    conf_dir = tmp_path / "configs" / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, conf_dir)
    run = _promtool(prometheus_tools, "check", "config", str(conf_dir / "prometheus.yml"))
    assert run.returncode != 0 and "prometheus.token" in run.stdout + run.stderr


def test_rules_check(prometheus_tools):
    out = _ok(_promtool(prometheus_tools, "check", "rules", "--lint=all",
                        *map(str, RULE_FILES)))
    assert out.count("SUCCESS") == len(RULE_FILES)


def test_rule_unit_tests(prometheus_tools):
    assert RULE_TESTS, "no promtool tests in configs/prometheus/tests"
    out = _ok(_promtool(prometheus_tools, "test", "rules", *map(str, RULE_TESTS)))
    assert out.count("SUCCESS") == len(RULE_TESTS), out


def test_config_loads_both_rule_files_and_scrapes_both_exporters():
    doc = yaml.safe_load(CONFIG.read_text())
    assert [PROMETHEUS_DIR / f for f in doc["rule_files"]] == list(RULE_FILES)
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"]
    monitor = jobs["vigil-monitor"]
    assert monitor["metrics_path"] == "/monitor/metrics"
    assert monitor["authorization"]["type"] == "Bearer"
    assert monitor["static_configs"][0]["targets"] == ["127.0.0.1:8000"]
    token = (PROMETHEUS_DIR / monitor["authorization"]["credentials_file"]).resolve()
    assert token == ROOT / ".observe" / "prometheus.token"  # what `make observe` writes


# ---------------------------------------------------------------- coverage of the unit tests


def _rule_tests() -> list[dict]:
    return [t for path in RULE_TESTS for t in yaml.safe_load(path.read_text())["tests"]]


@pytest.mark.parametrize("alert", [r["alert"] for r in rules() if "alert" in r])
def test_every_alert_is_tested_firing_and_not_firing(alert):
    cases = [c for t in _rule_tests() for c in t.get("alert_rule_test", [])
             if c["alertname"] == alert]
    assert any(c.get("exp_alerts") for c in cases), f"{alert}: no test where it fires"
    assert any(not c.get("exp_alerts") for c in cases), f"{alert}: no test where it does not"


@pytest.mark.parametrize("record", [r["record"] for r in rules() if "record" in r])
def test_every_recording_rule_has_a_value_pinned(record):
    exprs = [c["expr"] for t in _rule_tests() for c in t.get("promql_expr_test", [])
             if c.get("exp_samples")]
    assert any(re.search(rf"(^|[^\w:]){re.escape(record)}($|[^\w:])", e) for e in exprs), record


# ---------------------------------------------------------------- the rules themselves

RECORD_NAME = re.compile(r"^[a-z]+(_[a-z]+)*:vigil_[a-z0-9_]+:[a-z0-9_]+$")


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r.get("record") or r["alert"])
def test_rule_names_labels_and_annotations(rule):
    if "record" in rule:
        assert RECORD_NAME.match(rule["record"]), (
            f"{rule['record']}: not level:vigil_metric:operations")
        level = rule["record"].split(":")[0]
        by = re.search(r"^\s*(?:histogram_quantile\([^,]+,\s*)?\(?\s*sum by \(([^)]*)\)",
                       rule["expr"])
        assert by, f"{rule['record']}: expected a sum by (...) aggregation"
        kept = [label.strip() for label in by.group(1).split(",") if label.strip() != "le"]
        assert "_".join(kept) == level, f"{rule['record']}: level {level} but keeps {kept}"
    else:
        assert re.match(r"^Vigil[A-Z][A-Za-z0-9]+$", rule["alert"])
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"].strip()
        assert rule["annotations"]["description"].strip()
        assert "for" in rule, f"{rule['alert']}: no `for:`"


def test_quantiles_come_from_histogram_buckets():
    for e in rule_expressions():
        for call in re.finditer(r"histogram_quantile\(", e.expr):
            rest = e.expr[call.end():]
            assert re.match(r"\s*0?\.\d+,\s*sum by \(le, [^)]*\) \(rate\(\w+_bucket\[",
                            rest), f"{e.name}: {e.expr}"
        assert "vigil_window_latency_seconds" not in e.expr, e.name  # a pre-computed quantile
        assert 'quantile="' not in e.expr, e.name


# ---------------------------------------------------------------- every metric is declared


def _serving_declared() -> dict[str, tuple[str, set[str]]]:
    """name -> (kind, tag keys) of serving/metrics.py, as Ray exports them (prefix ray_)."""
    text = (ROOT / "serving" / "metrics.py").read_text()
    out = {}
    for m in re.finditer(r'metrics\.(Histogram|Counter|Gauge)\(\s*"(\w+)"(.*?)\n        \)',
                         text, re.S):
        tags = re.search(r"tag_keys=\(([^)]*)\)", m.group(3))
        keys = set(re.findall(r'"(\w+)"', tags.group(1))) if tags else set()
        out["ray_" + m.group(2)] = (m.group(1), keys)
    assert "ray_vigil_requests_total" in out and "code" in out["ray_vigil_requests_total"][1]
    return out


def _monitor_declared() -> dict[str, str]:
    """name -> type of every family the monitor's collectors yield, read from the collectors
    themselves (as the generated metrics page is), not from their source text."""
    from vigil.tools.reference_observability import monitor_metrics

    out = {m.name: m.kind for m in monitor_metrics()}
    assert "vigil_dataset_drift" in out and "vigil_webhook_delivery_seconds" in out
    return out


def _ray_serve_declared() -> set[str]:
    names = set()
    for path in RAY_SERVE_SOURCE.rglob("*.py"):
        names |= set(re.findall(r'"(serve_\w+)"', path.read_text(errors="replace")))
    assert "serve_deployment_replica_healthy" in names
    return {"ray_" + n for n in names}


def _exported_names() -> tuple[set[str], dict[str, set[str]]]:
    """Every series name Prometheus can see from Vigil and Ray Serve, and the labels of the
    serving metrics (Ray adds application, deployment, replica; histograms have le)."""
    names, labels = set(), {}
    ray_labels = {"application", "deployment", "replica"}
    for name, (kind, keys) in _serving_declared().items():
        series = [name] if kind != "Histogram" else [f"{name}_{s}" for s in
                                                     ("bucket", "count", "sum")]
        for s in series:
            names.add(s)
            labels[s] = keys | ray_labels | ({"le"} if s.endswith("_bucket") else set())
    for name, kind in _monitor_declared().items():
        names |= {name} if kind != "histogram" else {f"{name}_{s}" for s in
                                                     ("bucket", "count", "sum")}
    for name in _ray_serve_declared():
        names |= {name, f"{name}_total", f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    names |= {r["record"] for r in rules() if "record" in r}
    names |= {"up"}
    return names, labels


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_every_metric_read_is_declared(source):
    exprs = rule_expressions() if source == "rules" else dashboard_expressions()
    if not exprs:
        pytest.skip("configs/grafana/vigil.json does not exist")
    names, labels = _exported_names()
    unknown, bad_labels = [], []
    for e in exprs:
        for sel in selectors(e.expr):
            if sel.name not in names:
                absence = expected_absence(sel)
                if not (absence and absence.name.endswith("*")):  # only foreign prefixes
                    unknown.append(f"{e.name}: {sel}")
                continue
            for label, _op, _value in sel.matchers:
                if sel.name in labels and label not in labels[sel.name]:
                    bad_labels.append(f"{e.name}: {sel} has no label {label!r}")
    assert not unknown, "metrics no code declares:\n" + "\n".join(unknown)
    assert not bad_labels, "\n".join(bad_labels)


def test_scanner_finds_selectors_and_keeps_joins():
    from tests.prometheus_tools import bool_form, split_top_level_or

    expr = ('sum by (le, model) (rate(a_bucket{code=~"5..", x!="y"}[1m])) > 0.5 and on (model) '
            "max without (i) (b) or time() - c offset 5m < 3")
    assert [str(s) for s in selectors(expr)] == ['a_bucket{code=~"5..", x!="y"}', "b", "c"]
    assert split_top_level_or(expr)[1] == "time() - c offset 5m < 3"
    assert bool_form(expr).count(" bool") == 2 and "x!=" in bool_form(expr)


# ---------------------------------------------------------------- installing Prometheus
# apt-get cannot be shown installing a package that is already installed, so these run
# configs/prometheus/install.sh with a PATH of fakes (named as such): a fake apt-get that
# records its call and "installs" stub binaries, a fake id and a fake sudo.


def _fake_bin(tmp_path: Path, uid: int, apt: bool = True, sudo: bool = False) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "chmod", "true"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    scripts = {"id": f"#!/bin/bash\necho {uid}\n"}
    if apt:
        scripts["apt-get"] = (
            "#!/bin/bash\n"
            f'echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> {tmp_path}/apt.log\n'
            'if [ "$1" = install ]; then\n'
            f"  for b in prometheus promtool; do printf '#!/bin/bash\\n' > {bin_dir}/$b; "
            f"chmod +x {bin_dir}/$b; done\n"
            "fi\n")
    if sudo:
        scripts["sudo"] = (f'#!/bin/bash\necho "sudo $*" >> {tmp_path}/sudo.log\n'
                           '[ "$1" = -n ] && shift\nexec "$@"\n')
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("uid, sudo", [(0, False), (1000, True)])
def test_prometheus_is_installed_with_apt_when_missing(tmp_path, monkeypatch, uid, sudo):
    from tests.prometheus_tools import ensure_prometheus

    bin_dir = _fake_bin(tmp_path, uid, sudo=sudo)
    monkeypatch.setenv("PATH", str(bin_dir))
    tools = ensure_prometheus()
    assert tools.prometheus == str(bin_dir / "prometheus")
    assert tools.promtool == str(bin_dir / "promtool")
    apt = (tmp_path / "apt.log").read_text().splitlines()
    assert apt == ["DEBIAN_FRONTEND=noninteractive install -y --no-install-recommends prometheus"]
    if sudo:
        assert (tmp_path / "sudo.log").read_text().startswith("sudo -n true\nsudo -n env ")


@pytest.mark.parametrize("uid, apt, needs", [
    (0, False, "there is no apt-get"),
    (1000, True, "needs root"),  # not root, and no password-less sudo
])
def test_installing_prometheus_fails_clearly(tmp_path, monkeypatch, uid, apt, needs):
    from tests.prometheus_tools import ensure_prometheus

    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, uid, apt=apt)))
    with pytest.raises(RuntimeError, match="apt-get install -y prometheus") as err:
        ensure_prometheus()
    assert needs in str(err.value)
