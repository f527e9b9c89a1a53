"""What the Prometheus tests share: the binaries (installed when missing), the rule and dashboard
expressions, a small PromQL scanner, and a Prometheus server process."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "configs" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = (PROMETHEUS_DIR / "recording_rules.yml", PROMETHEUS_DIR / "alerting_rules.yml")
INSTALL_SCRIPT = PROMETHEUS_DIR / "install.sh"
DASHBOARD = ROOT / "configs" / "grafana" / "vigil.json"


# ---------------------------------------------------------------- the binaries


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: str
    promtool: str


def ensure_prometheus() -> PrometheusTools:
    """prometheus and promtool from PATH; when either is missing, install the Debian package
    `prometheus` with configs/prometheus/install.sh (apt-get, as root or through `sudo -n`),
    as `make observe` does. Raises RuntimeError saying what to do when that is impossible."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        run = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
        found = shutil.which("prometheus"), shutil.which("promtool")
        if run.returncode != 0 or not all(found):
            raise RuntimeError(
                "the Prometheus tests need `prometheus` and `promtool` (Debian/Ubuntu package "
                f"`prometheus`), and installing them failed (exit {run.returncode}):\n"
                f"{run.stdout[-2000:]}{run.stderr[-2000:]}\nInstall it as root "
                "(`apt-get install -y prometheus`) or let this user run `sudo -n apt-get`."
            )
    return PrometheusTools(prometheus=found[0], promtool=found[1])


# ---------------------------------------------------------------- the expressions


@dataclass(frozen=True)
class Expression:
    """A PromQL expression and where it comes from."""

    kind: str  # "record", "alert" or "panel"
    name: str  # the recorded name, the alert name, the panel title
    expr: str
    source: str = ""  # the file


def rules(paths: tuple[Path, ...] = RULE_FILES) -> list[dict[str, Any]]:
    """Every rule of the rule files, in order."""
    out = []
    for path in paths:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out.extend(group["rules"])
    return out


def rule_expressions(paths: tuple[Path, ...] = RULE_FILES) -> list[Expression]:
    return [
        Expression("record" if "record" in r else "alert", r.get("record") or r["alert"],
                   r["expr"].strip())
        for r in rules(paths)
    ]


# Grafana's variables, as they are substituted before a panel's query reaches Prometheus:
# every model and version (the dashboard's "All" is the regex .*); intervals as on a fresh
# dashboard with the local 10 s scrape interval.
GRAFANA_VARIABLES = {
    "model": ".*",
    "version": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute_grafana(expr: str, values: dict[str, str] = GRAFANA_VARIABLES) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(one, expr)


def dashboard_expressions(path: Path = DASHBOARD) -> list[Expression]:
    """Every `expr` of every panel target (rows and nested panels included), variables
    substituted. Empty when the dashboard does not exist."""
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    found: list[Expression] = []

    def walk(node: Any, title: str) -> None:
        if isinstance(node, dict):
            title = node.get("title", title) if "targets" in node or "panels" in node else title
            for target in node.get("targets") or []:
                if isinstance(target, dict) and target.get("expr"):
                    found.append(Expression(
                        "panel", f"{title} [{target.get('refId', '?')}]",
                        substitute_grafana(target["expr"]), str(path.name)))
            for key, value in node.items():
                if key != "targets":
                    walk(value, title)
        elif isinstance(node, list):
            for item in node:
                walk(item, title)

    walk(doc.get("panels", []), "")
    return found


# ---------------------------------------------------------------- expected absences


@dataclass(frozen=True)
class Absence:
    """A selector that may find no series in the live test (tests/integration/
    test_prometheus.py), and why. `matcher` (a regex) narrows it to the selectors that have a
    matching `label op "value"` matcher; None: every selector of the name. A name ending in '*'
    is a prefix."""

    name: str
    why: str
    matcher: str | None = None

    def covers(self, selector: Selector) -> bool:
        name = selector.name or ""
        if not (name.startswith(self.name[:-1]) if self.name.endswith("*")
                else name == self.name):
            return False
        if self.matcher is None:
            return True
        return any(re.search(self.matcher, f'{k}{op}"{v}"') for k, op, v in selector.matchers)


# The only places where an expression may see no data in the live test. Everything else a rule
# or a panel reads must exist after the test's traffic: a selector that never matches is a bug.
EXPECTED_ABSENT = (
    Absence(
        "ray_vigil_samples_dropped_rows_total",
        "a Ray counter has no series before its first increment, and replicas drop samples only "
        "while the monitor is busy or away or a buffer overflows, which the shared session does "
        "not provoke (it would take replacing the replicas with a tiny buffer); its name and "
        "labels are checked against serving/metrics.py by tests/unit/test_prometheus_rules.py",
    ),
    Absence(
        "model_version_reason:vigil_samples_dropped_rows:rate1m",
        "recorded from ray_vigil_samples_dropped_rows_total (above)",
    ),
    Absence(
        "ray_vigil_requests_total",
        "a 5xx answer is a bug (500) in Vigil: none in a healthy run; the recorded error ratio "
        "reads 0 from the total, so it is checked all the same",
        matcher=r'^code=~?"\^?\(?5',
    ),
    Absence(
        "vigil_rollout_*",
        "a rollout's series exist only while one runs (its weight, step and halted state) or "
        "once it judged a window (its checks), which the shared session does not start here; "
        "tests/unit/monitoring/test_rollouts.py scrapes them from a running one",
    ),
    Absence(
        "vigil_quality_settled*",
        "a settled window's quality exists once a window closed feedback.settle_s (a day) ago "
        "with labelled predictions, which the live test's minutes never reach; "
        "tests/unit/monitoring/test_label_rules.py scrapes them from settled windows",
    ),
    Absence(
        "vigil_quality_reference",
        "the quality the model gate scored on the held-out set: the session's example versions "
        "were published without a gate verdict; tests/unit/monitoring/test_label_join.py "
        "scrapes it from a gated version",
    ),
    Absence(
        "vigil_feedback_labels_total",
        "counted since the monitor started: the live test posts no label, and the session's "
        "monitor restart test (after test_feedback's labels) starts it from zero; "
        "tests/unit/monitoring/test_label_join.py scrapes the counter",
    ),
    Absence(
        "DCGM_FI_*",
        "NVIDIA dcgm-exporter's GPU metrics: scraped on GPU nodes of the Kubernetes deployment "
        "(helm/), not part of the local stack",
    ),
)


def expected_absence(selector: Selector) -> Absence | None:
    return next((a for a in EXPECTED_ABSENT if a.covers(selector)), None)


# ---------------------------------------------------------------- a PromQL scanner

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|s|m|h|d|w|y)*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)
_AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
_MODIFIERS_WITH_LABELS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = _MODIFIERS_WITH_LABELS | {
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
}
_COMPARISONS = {"==", "!=", ">=", "<=", ">", "<"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    start: int
    end: int


def tokens(expr: str) -> list[Token]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot scan {expr[pos:pos + 20]!r} in {expr!r}")
        if m.lastgroup not in ("ws", "comment"):
            out.append(Token(m.lastgroup, m.group(), m.start(), m.end()))
        pos = m.end()
    return out


@dataclass(frozen=True)
class Selector:
    """A vector selector: a metric name (or None) and its label matchers."""

    name: str | None
    matchers: tuple[tuple[str, str, str], ...] = field(default=())  # (label, op, value)

    def __str__(self) -> str:
        inner = ", ".join(f"{k}{op}{json.dumps(v)}" for k, op, v in self.matchers)
        return f"{self.name or ''}{{{inner}}}" if inner or not self.name else self.name


def _skip_parens(toks: list[Token], i: int) -> int:
    """Index after the parenthesised group opening at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j].text == "(":
            depth += 1
        elif toks[j].text == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    raise ValueError("unbalanced parentheses")


def _matchers(toks: list[Token], i: int) -> tuple[tuple[tuple[str, str, str], ...], int]:
    """The matchers of the brace group opening at toks[i], and the index after it."""
    found, j = [], i + 1
    while toks[j].text != "}":
        if toks[j].text == ",":
            j += 1
            continue
        label, op, value = toks[j], toks[j + 1], toks[j + 2]
        found.append((label.text, op.text, json.loads(value.text) if value.text[0] == '"'
                      else value.text[1:-1]))
        j += 3
    return tuple(found), j + 1


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL expression, in order (function and aggregation names,
    keywords, label lists of by/without/on/ignoring/group_*, numbers and durations skipped)."""
    toks = tokens(expr)
    out: list[Selector] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok.kind == "ident":
            lower = tok.text.lower()
            if lower in _MODIFIERS_WITH_LABELS and nxt is not None and nxt.text == "(":
                i = _skip_parens(toks, i + 1)
                continue
            if lower in _KEYWORDS:
                i += 1
                continue
            if nxt is not None and (nxt.text == "(" or (tok.text in _AGGREGATORS and nxt.text in
                                                          ("by", "without"))):
                i += 1  # a function or an aggregation
                continue
            if nxt is not None and nxt.text == "{":
                matchers, i = _matchers(toks, i + 1)
                out.append(Selector(tok.text, matchers))
                continue
            out.append(Selector(tok.text))
        elif tok.text == "{":
            matchers, i = _matchers(toks, i)
            named = [v for k, op, v in matchers if k == "__name__" and op == "="]
            rest = tuple(m for m in matchers if not (m[0] == "__name__" and m[1] == "="))
            out.append(Selector(named[0] if named else None, rest))
            continue
        i += 1
    return out


def split_top_level_or(expr: str) -> list[str]:
    """The operands of the top-level `or`s of an expression (itself when there is none)."""
    toks = tokens(expr)
    parts, start, depth = [], 0, 0
    for tok in toks:
        if tok.text in ("(", "{"):
            depth += 1
        elif tok.text in (")", "}"):
            depth -= 1
        elif depth == 0 and tok.kind == "ident" and tok.text.lower() == "or":
            parts.append(expr[start:tok.start].strip())
            start = tok.end
    parts.append(expr[start:].strip())
    return parts


def bool_form(expr: str) -> str:
    """The expression with `bool` after every comparison operator that lacks it: instead of
    keeping only the series that breach, it returns 0 or 1 for every series it compares, so it
    is empty only when the expression watches nothing (a selector, or a join, that matches no
    series). `and`/`unless` still join on labels, so a join that never matches stays empty."""
    toks = tokens(expr)
    inserts, depth = [], 0
    for k, tok in enumerate(toks):
        if tok.text == "{":
            depth += 1
        elif tok.text == "}":
            depth -= 1
        elif depth == 0 and tok.kind == "op" and tok.text in _COMPARISONS:
            following = toks[k + 1] if k + 1 < len(toks) else None
            if following is None or following.text.lower() != "bool":
                inserts.append(tok.end)
    out = expr
    for pos in reversed(inserts):
        out = out[:pos] + " bool" + out[pos:]
    return out


# ---------------------------------------------------------------- a Prometheus server


class PrometheusServer:
    """`prometheus` on 127.0.0.1 with a given config and a scratch storage folder."""

    def __init__(self, binary: str, config: Path, port: int, storage: Path, log: Path) -> None:
        self.binary, self.config, self.port, self.storage, self.log = (
            binary, config, port, storage, log)
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.config}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.storage}"],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited ({self.proc.returncode}): "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready: {self.log.read_text()[-3000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query; raises ValueError with Prometheus's message when the
        expression does not parse or evaluate."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        doc = r.json()
        if doc.get("status") != "success":
            raise ValueError(f"{doc.get('errorType')}: {doc.get('error')}")
        result = doc["data"]["result"]
        if doc["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return result

    def targets(self) -> Iterator[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        yield from r.json()["data"]["activeTargets"]

    def rule_health(self) -> list[tuple[str, str, str]]:
        """(name, health, lastError) of every loaded rule."""
        r = httpx.get(f"{self.url}/api/v1/rules", timeout=10)
        return [
            (rule["name"], rule["health"], rule.get("lastError", ""))
            for group in r.json()["data"]["groups"] for rule in group["rules"]
        ]
