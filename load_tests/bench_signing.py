"""Webhook signing per event: a hand-written HMAC against the `standardwebhooks` library.

    python -m load_tests.bench_signing [--events 20000] [--rounds 7] [--body-bytes 1500]

Signs the same CloudEvent body (--body-bytes, about an alert event's size) the way the deliverer
does before each attempt, with one key and with two (while a secret rotates), three ways:

- hmac: hmac + base64 in a few lines (what monitoring.events did before it used the library);
- standardwebhooks: monitoring.events.Signer, Webhook objects made once per target (what the
  deliverer does now);
- standardwebhooks, fresh: the Webhook objects made per event (monitoring.events.signature).

The ways run interleaved, --rounds times; each reports its median microseconds per event and
its ratio to hmac's. Every way's header is checked to be identical first. Writes JSON under
load_tests/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import base64
import hashlib
import hmac

from monitoring.events import Signer, signature

DEFAULT_OUT = Path("load_tests/results/bench_signing.json")
Sign = Callable[[str, int, bytes], str]


def hand_written(keys: tuple[bytes, ...], event_id: str, stamp: int, body: bytes) -> str:
    signed = f"{event_id}.{stamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def ways(keys: tuple[bytes, ...]) -> dict[str, Sign]:
    signer = Signer(keys)
    return {"hmac": lambda i, s, b: hand_written(keys, i, s, b), "standardwebhooks": signer,
            "standardwebhooks, fresh": lambda i, s, b: signature(keys, i, s, b)}


def per_event_us(sign: Sign, events: int, body: bytes) -> float:
    stamp = int(time.time())
    started = time.perf_counter()
    for n in range(events):
        sign(f"evt-{n}", stamp, body)
    return (time.perf_counter() - started) / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--body-bytes", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    body = json.dumps({"data": "x" * args.body_bytes}).encode()[: args.body_bytes]
    rows = []
    for n_keys in (1, 2):
        keys = tuple(os.urandom(32) for _ in range(n_keys))
        candidates = ways(keys)
        headers = {name: sign("evt-1", 1_700_000_000, body) for name, sign in candidates.items()}
        assert len(set(headers.values())) == 1, headers  # the same header, every way
        runs: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(args.rounds):
            for name, sign in candidates.items():
                runs[name].append(per_event_us(sign, args.events, body))
        base = statistics.median(runs["hmac"])
        for name, values in runs.items():
            median = statistics.median(values)
            rows.append({"keys": n_keys, "way": name, "us_per_event": round(median, 2),
                         "ratio": round(median / base, 3)})
    print(f"{'keys':>4}  {'way':<24} {'us/event':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['keys']:>4}  {r['way']:<24} {r['us_per_event']:>9.2f} {r['ratio']:>6.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"events": args.events, "rounds": args.rounds,
                                    "body_bytes": args.body_bytes, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
