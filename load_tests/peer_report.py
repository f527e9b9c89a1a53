"""The side-by-side report: ratios to the bare reference and to the best peer, the table, the
reference's drift and a summary per load point."""

from __future__ import annotations

from typing import Any

REFERENCE = "reference"
PLAIN = "plain-serve"
VIGIL = "vigil"
# The peers: the best of these at a load point is the one Vigil is held against.
PEERS = ("mlserver", "mlserver-batch", "litserve", "litserve-batch", "bentoml", "bentoml-batch",
         PLAIN)  # fmt: skip
ORDER = (REFERENCE, *PEERS, VIGIL)


def clean(r: dict[str, Any]) -> bool:
    """Measured, with every answer a 2xx and no socket error."""
    return (
        r.get("req_s") is not None
        and not r.get("skipped")
        and not r.get("non2xx")
        and not r.get("socket_errors")
    )


def _point(r: dict[str, Any]) -> tuple[str, int]:
    return (r["model"], r["concurrency"])


def reference_req_s(results: list[dict[str, Any]], model: str, concurrency: int) -> float | None:
    """The bare reference at this point: the mean of its clean runs (first and last, so that a
    machine that drifted during the run is met half-way)."""
    runs = [r["req_s"] for r in results
            if r["server"] == REFERENCE and _point(r) == (model, concurrency) and clean(r)]  # fmt: skip
    return sum(runs) / len(runs) if runs else None


def best_peer(results: list[dict[str, Any]], model: str, concurrency: int) -> dict | None:
    """The clean peer run with the most req/s at this point."""
    runs = [r for r in results
            if r["server"] in PEERS and _point(r) == (model, concurrency) and clean(r)]  # fmt: skip
    return max(runs, key=lambda r: r["req_s"]) if runs else None


def add_ratios(results: list[dict[str, Any]]) -> None:
    """ratio_to_reference and ratio_to_best_peer (req/s over req/s) on every measured row."""
    for r in results:
        r["ratio_to_reference"] = r["ratio_to_best_peer"] = r["best_peer"] = None
        if r.get("req_s") is None or r.get("concurrency") is None:
            continue
        base = reference_req_s(results, *_point(r))
        best = best_peer(results, *_point(r))
        if base:
            r["ratio_to_reference"] = r["req_s"] / base
        if best:
            r["ratio_to_best_peer"] = r["req_s"] / best["req_s"]
            r["best_peer"] = best["server"]


def drift(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reference's last run against its first, per point."""
    out = []
    firsts = [r for r in results if r["server"] == REFERENCE and not r.get("rerun") and clean(r)]
    for first in firsts:
        last = next((r for r in results if r["server"] == REFERENCE and r.get("rerun")
                     and _point(r) == _point(first) and clean(r)), None)  # fmt: skip
        if last is not None:
            out.append({"model": first["model"], "concurrency": first["concurrency"],
                        "first_req_s": first["req_s"], "last_req_s": last["req_s"],
                        "change": last["req_s"] / first["req_s"] - 1})  # fmt: skip
    return out


def flags(r: dict[str, Any]) -> str:
    out = []
    if r.get("skipped"):
        out.append(f"SKIPPED({r['skipped']})")
    if r.get("non2xx"):
        out.append(f"NON2XX={r['non2xx']}(last {r.get('last_bad_status')})")
    if r.get("socket_errors"):
        out.append(f"SOCKERR={r['socket_errors']}")
    idle = r.get("idle_before") or {}
    if idle and not idle.get("idle"):
        out.append(f"BUSY(load {idle.get('loadavg_1m')}, others {idle.get('others_cpu', 0):.0%})")
    if r.get("envelope"):
        out.append(f"ENVELOPE({r['envelope']})")
    return " ".join(out)


def display_order(r: dict[str, Any]) -> tuple:
    rank = ORDER.index(r["server"]) if r["server"] in ORDER else len(ORDER)
    return (r["model"], r.get("concurrency") or 0, bool(r.get("rerun")), rank)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value else "-"


def table(results: list[dict[str, Any]]) -> str:
    head = ("model", "conc", "server", "req/s", "p50 ms", "p99 ms", "vs ref", "vs best peer",
            "flags")  # fmt: skip
    lines = []
    for r in sorted(results, key=display_order):
        measured = r.get("req_s") is not None
        lines.append((
            r["model"], str(r.get("concurrency") or "-"),
            r["server"] + (" (last)" if r.get("rerun") else ""),
            f"{r['req_s']:.0f}" if measured else "-",
            f"{r['p50_ms']:.2f}" if measured else "-",
            f"{r['p99_ms']:.2f}" if measured else "-",
            _ratio(r.get("ratio_to_reference")), _ratio(r.get("ratio_to_best_peer")), flags(r),
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    right = {1, 3, 4, 5, 6, 7}

    def fmt(row: tuple) -> str:
        return "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, lines)])


def summary(results: list[dict[str, Any]]) -> list[str]:
    """One line per load point: the reference, the best peer, and Vigil against both."""
    out = []
    points = sorted({_point(r) for r in results if r.get("concurrency") is not None})
    for model, conc in points:
        base = reference_req_s(results, model, conc)
        best = best_peer(results, model, conc)
        vigil = next((r for r in results if r["server"] == VIGIL and _point(r) == (model, conc)),
                     None)  # fmt: skip
        parts = [f"{model} c={conc}: reference {base:.0f} req/s" if base else
                 f"{model} c={conc}: reference -"]  # fmt: skip
        if best:
            parts.append(f"best peer {best['server']} {best['req_s']:.0f} req/s "
                         f"(p50 {best['p50_ms']:.2f} ms)")  # fmt: skip
        if vigil and vigil.get("req_s") is not None:
            parts.append(f"Vigil {vigil['req_s']:.0f} req/s (p50 {vigil['p50_ms']:.2f} ms) = "
                         f"{_ratio(vigil.get('ratio_to_reference'))} x reference, "
                         f"{_ratio(vigil.get('ratio_to_best_peer'))} x best peer"
                         + (" [not clean]" if not clean(vigil) else ""))  # fmt: skip
        out.append("; ".join(parts))
    return out
