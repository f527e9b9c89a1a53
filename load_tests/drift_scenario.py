"""Drift scenario: reference-like traffic, then shifted traffic, and what the monitor saw of each.

    make serve     # in another shell: both applications on http://127.0.0.1:8000
    python -m load_tests.drift_scenario [--payload json|binary] [--shift 3] [--max-seconds 180]

Rows are drawn (seeded) from breast_cancer's reference.parquet and sent to
/v2/models/breast_cancer/infer, first as they are, then with a few features moved by `--shift`
reference standard deviations. Each phase sends enough rows to fill two monitor windows (read
from /monitor/v1/models/breast_cancer/drift), bounded by --max-requests and --max-seconds, then
polls that endpoint until a window closes that holds only the phase's rows (or --wait-seconds
pass). Prints a table of the drifted share and the drifted features after each phase and writes
JSON. The monitor sees rows only once serving replicas flush their samples to it; without that
the table says "no new window". Exit 0 whatever the numbers, 2 when the service is not up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

MODEL = "breast_cancer"
DEFAULT_SHIFTED = ("mean radius", "mean texture", "worst area")
DEFAULT_OUT = Path("load_tests/results/drift_scenario.json")


def request_body(x: np.ndarray, payload: str) -> tuple[bytes, dict[str, str]]:
    """A V2 inference request for the rows of x (FP32), JSON or binary tensor extension."""
    if payload == "json":
        doc = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                           "data": x.ravel().tolist()}]}
        return json.dumps(doc).encode(), {"content-type": "application/json"}
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": False},
    }).encode()
    return header + raw, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def drift_doc(client: httpx.Client) -> dict[str, Any] | None:
    response = client.get(f"/monitor/v1/models/{MODEL}/drift", params={"windows": 1})
    return response.json() if response.status_code == 200 else None


def run_phase(
    client: httpx.Client, name: str, rows: np.ndarray, args: argparse.Namespace
) -> dict[str, Any]:
    """Send the phase's rows, then wait for a window that closed after all of them were sent."""
    before = drift_doc(client)
    first_window = (before or {}).get("windows_evaluated", 0) + 1
    sent = ok = 0
    started = time.monotonic()
    for start in range(0, len(rows), args.rows_per_request):
        if sent >= args.max_requests or time.monotonic() - started > args.max_seconds:
            break
        body, headers = request_body(rows[start : start + args.rows_per_request], args.payload)
        response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        sent += 1
        ok += response.status_code == 200
    rows_sent = min(sent * args.rows_per_request, len(rows))
    send_seconds = time.monotonic() - started
    # The first window after the phase began may hold rows of the previous phase: wait for the
    # second one, which holds only this phase's rows.
    wanted = first_window + 1
    doc, deadline = before, time.monotonic() + args.wait_seconds
    while time.monotonic() < deadline:
        doc = drift_doc(client)
        if doc and doc.get("windows_evaluated", 0) >= wanted:
            break
        time.sleep(1.0)
    latest = (doc or {}).get("latest") or {}
    fresh = bool(doc) and doc.get("windows_evaluated", 0) >= wanted
    drift = latest.get("drift") or {}
    return {
        "phase": name, "requests": sent, "ok": ok, "rows": rows_sent,
        "send_seconds": round(send_seconds, 2),
        "new_window": fresh, "window": latest.get("index"), "window_rows": latest.get("rows"),
        "share_drifted": drift.get("share_drifted"), "dataset_drift": drift.get("dataset_drift"),
        "prediction_drift": drift.get("prediction_drift"),
        "drifted_features": drift.get("drifted_features"),
    }


def table(phases: list[dict[str, Any]]) -> str:
    head = f"{'phase':<10} {'requests':>8} {'ok':>6} {'rows':>7} {'window':>7} {'share':>6}  drifted"
    lines = [head, "-" * len(head)]
    for p in phases:
        if not p["new_window"]:
            tail = "no new window (are replicas flushing samples to the monitor?)"
            share = "-"
        else:
            tail = ", ".join(p["drifted_features"] or []) or "none"
            share = f"{p['share_drifted']:.2f}"
        lines.append(f"{p['phase']:<10} {p['requests']:>8} {p['ok']:>6} {p['rows']:>7} "
                     f"{p['window'] or '-':>7} {share:>6}  {tail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--payload", choices=["json", "binary"], default="json")
    parser.add_argument("--rows-per-request", type=int, default=10)
    parser.add_argument("--max-requests", type=int, default=1000, help="per phase")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="sending, per phase")
    parser.add_argument("--wait-seconds", type=float, default=90.0, help="for a window, per phase")
    parser.add_argument("--shift", type=float, default=3.0, help="in reference std")
    parser.add_argument("--features", default=",".join(DEFAULT_SHIFTED),
                        help="comma-separated features to shift, or 'all'")
    parser.add_argument("--windows", type=int, default=2,
                        help="monitor windows of rows each phase sends (at least 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1", "http://localhost")):
        parser.error("load stays on 127.0.0.1")

    frame = pd.read_parquet(Path(args.models_dir) / MODEL / "1" / "reference.parquet")
    features = [c for c in frame.columns if c != "target"]
    if args.windows < 1:
        parser.error("--windows must be at least 1")
    shifted = (features if args.features == "all"
               else [f.strip() for f in args.features.split(",") if f.strip()])
    unknown = sorted(set(shifted) - set(features))
    if unknown:
        parser.error(f"unknown features {unknown}")
    reference = frame[features].to_numpy(np.float32)
    with httpx.Client(base_url=args.url, timeout=30) as client:
        try:
            doc = drift_doc(client)
        except httpx.HTTPError as exc:
            print(f"the service is not up at {args.url} ({exc}); run `make serve` first")
            return 2
        if doc is None:
            print(f"no monitor at {args.url}/monitor (is the monitor application deployed?)")
            return 2
        window_rows = (doc["settings"]["window"] or {}).get("rows") or 1000
        per_phase = args.windows * window_rows + args.rows_per_request
        rng = np.random.default_rng(args.seed)
        base = reference[rng.integers(0, len(reference), per_phase)]
        moved = reference[rng.integers(0, len(reference), per_phase)].copy()
        std = frame[features].std().to_numpy()
        for name in shifted:
            i = features.index(name)
            moved[:, i] += np.float32(args.shift * std[i])
        phases = [run_phase(client, "reference", base, args),
                  run_phase(client, "shifted", moved, args)]
    print(table(phases))
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "url": args.url, "payload": args.payload, "rows_per_request": args.rows_per_request,
        "window_rows": window_rows, "shifted_features": shifted, "shift_std": args.shift,
        "phases": phases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
