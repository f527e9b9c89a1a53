"""The stall bench's report: the hardening issue's targets, their verdicts and the printed tables."""

from __future__ import annotations

from typing import Any

# The requirement: while SENDERS clients send 16 MiB invalid bodies in a loop, one-row requests
# at CONCURRENCY keep p99 under P99_TARGET_MS, and each invalid body is refused within
# REFUSE_WITHIN_S.
CONCURRENCY = 8
SENDERS = 4
P99_TARGET_MS = 100.0
REFUSE_WITHIN_S = 0.5


def _p99_target(attack: dict[str, Any] | None) -> dict[str, str]:
    name = (f"one-row JSON c={CONCURRENCY} p99 < {P99_TARGET_MS:g} ms while {SENDERS} clients "
            "send 16 MiB invalid bodies")  # fmt: skip
    if not attack or attack.get("p99_ms") is None:
        return {"target": name, "status": "n/a", "value": "-"}
    if attack["non200"] or attack["errors"]:
        status = "not met (errors in run)"
    else:
        status = "met" if attack["p99_ms"] < P99_TARGET_MS else "not met"
    value = f"p99 {attack['p99_ms']:.1f} ms, max {attack['max_ms']:.1f} ms"
    return {"target": name, "status": status, "value": value}


def _refusal_target(kinds: dict[str, Any]) -> dict[str, str]:
    name = f"every invalid body refused (400/413, JSON error) within {REFUSE_WITHIN_S:g} s"
    count = sum(k["count"] for k in kinds.values())
    if not count:
        return {"target": name, "status": "n/a", "value": "-"}
    within = sum(k["within"] for k in kinds.values())
    failures = sum(k["failures"] for k in kinds.values())
    worst = max(k["max_ms"] for k in kinds.values())
    return {"target": name, "status": "met" if within == count else "not met",
            "value": f"{within} of {count} ({failures} not refused properly), slowest {worst:.0f} ms"}  # fmt: skip


def _ratio(base: dict[str, Any] | None, attack: dict[str, Any] | None) -> dict[str, str]:
    name = "one-row p99 attack / baseline (no threshold)"
    if not (base and attack and base.get("p99_ms") and attack.get("p99_ms")):
        return {"target": name, "status": "info", "value": "-"}
    ratio = attack["p99_ms"] / base["p99_ms"]
    value = f"{ratio:.2f} ({attack['p99_ms']:.1f} / {base['p99_ms']:.1f} ms)"
    return {"target": name, "status": "info", "value": value}


def _rss(rss: dict[str, dict[str, dict[str, float]]]) -> dict[str, str]:
    """The largest replica's VmHWM at the end of the attack (its true peak: the idle and
    baseline peaks are lower) beside its idle VmRSS."""
    attack, idle = rss.get("attack", {}), rss.get("idle", {})
    name = "largest replica's peak RSS (VmHWM) by the end of the attack (no threshold)"
    if not attack:
        return {"target": name, "status": "info", "value": "-"}
    pid = max(attack, key=lambda p: attack[p]["hwm_mib"])
    before = idle.get(pid, {}).get("peak_rss_mib")
    value = f"{attack[pid]['hwm_mib']:.0f} MiB" + (f" (idle {before:.0f} MiB)" if before else "")
    return {"target": name, "status": "info", "value": value}


def verdicts(
    phases: dict[str, Any], kinds: dict[str, Any], rss: dict[str, Any]
) -> list[dict[str, str]]:
    """met / not met / n/a for the two targets (a load with non-200 answers or socket errors
    cannot meet its target), and the ratio and RSS for information."""
    base, attack = phases.get("baseline"), phases.get("attack")
    return [_p99_target(attack), _refusal_target(kinds), _ratio(base, attack), _rss(rss)]


def text_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(row)).rstrip()  # fmt: skip

    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _load_table(phases: dict[str, Any]) -> str:
    head = ("phase", "req/s", "p50 ms", "p99 ms", "max ms", "non-200", "errors")
    rows = [(phase, f"{r['req_s']:.0f}", _ms(r["p50_ms"]), _ms(r["p99_ms"]), _ms(r["max_ms"]),
             str(r["non200"]), str(sum(r["errors"].values())))
            for phase, r in phases.items()]  # fmt: skip
    return text_table(head, rows)


def _cores_table(phases: dict[str, Any]) -> str:
    names = ("replicas", "haproxy", "ray_rest", "load_client", "senders", "others", "machine")
    rows = [(phase, *(f"{r['cores'][n]:.2f}" for n in names)) for phase, r in phases.items()]
    return text_table(("phase", *names), rows)


def _kinds_table(kinds: dict[str, Any]) -> str:
    head = ("kind", "count", "statuses", "p50 ms", "p99 ms", "max ms",
            f"<= {REFUSE_WITHIN_S:g} s", "sent")  # fmt: skip
    rows = [(kind, str(k["count"]), " ".join(f"{s}x{n}" for s, n in k["statuses"].items()),
             _ms(k["p50_ms"]), _ms(k["p99_ms"]), _ms(k["max_ms"]), f"{k['within_share']:.0%}",
             f"{k['sent_share_median']:.0%}")
            for kind, k in kinds.items()]  # fmt: skip
    return text_table(head, rows)


def _rss_table(rss: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per replica: its peak VmRSS in each phase and its VmHWM at the end."""
    phases = list(rss)
    pids = list(dict.fromkeys(pid for by_pid in rss.values() for pid in by_pid))
    rows = []
    for pid in pids:
        peaks = [rss[ph].get(pid, {}).get("peak_rss_mib") for ph in phases]
        hwm = next((rss[ph][pid]["hwm_mib"] for ph in reversed(phases) if pid in rss[ph]), None)
        rows.append((pid, *("-" if v is None else f"{v:.0f}" for v in (*peaks, hwm))))
    return text_table(("replica pid", *phases, "VmHWM"), rows)


def render(doc: dict[str, Any]) -> str:
    phases = doc["one_row"]
    parts = [
        f"one-row breast_cancer JSON, c={CONCURRENCY}, Python keep-alive client, "
        f"{doc['setup']['measure_s']:g} s per phase",
        _load_table(phases),
        "\ncores used during each phase (others = the rest of this shared machine)",
        _cores_table(phases),
        f"\ninvalid bodies ({SENDERS} senders, ~16 MiB each, a fresh connection each; time from "
        "connect to the whole answer; sent = share of the body out when the answer came)",
        _kinds_table(doc["invalid_bodies"]),
        "\nModelServer replica RSS, MiB: peak VmRSS per phase, VmHWM (peak since start) at the end",
        _rss_table(doc["replica_rss"]),
        "\ntargets",
        *(f"  {t['status']:<24} {t['target']}: {t['value']}" for t in doc["targets"]),
    ]
    if doc["notes"]:
        parts += ["\nnotes", *(f"  - {n}" for n in doc["notes"])]
    return "\n".join(parts)
