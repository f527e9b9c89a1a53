"""The fault scenarios themselves: each injects one fault into a running Vigil under steady load,
waits for the recovery, and returns an Outcome with its figures and a verdict.

A scenario needs only a Stack (load_tests/fault_stack.py), so the same code runs on `make faults`'
private cluster and on the integration suite's session cluster. Each one leaves what it changed
as it found it (try/finally), whatever happens.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any

import httpx

from load_tests.fault_load import metric_sum, wait_until
from load_tests.fault_stack import (
    AFTER_S,
    MONITOR_CLASS,
    REPLICA_CLASS,
    WARM_S,
    Outcome,
    Stack,
    actors,
    board_actor,
    http_port,
    kill,
    outbox_state,
    served_versions,
)
from vigil.core.aliases import read_aliases


# ------------------------------------------------------------------ a. replica killed


def replica_killed(stack: Stack) -> Outcome:
    """SIGKILL one model replica under load; Serve starts another, which must serve the same
    versions as the one that survived (and as the aliases say)."""
    out = Outcome("replica_killed")
    before = actors(stack, REPLICA_CLASS)
    if len(before) < 2:
        return out.judge(two_replicas_before=False)
    victim, survivor = before[0], before[1]
    survivor_port = http_port(survivor.pid, stack.headers)
    expected = served_versions(survivor_port, stack) if survivor_port else {}
    with stack.load() as load:
        time.sleep(WARM_S)
        fault = time.monotonic()
        kill(victim.pid)

        def replacement() -> Any:
            fresh = [a for a in actors(stack, REPLICA_CLASS)
                     if a.actor_id not in {b.actor_id for b in before}]
            return fresh[0] if fresh else None

        new = wait_until(replacement, 180, 0.5)
        started = time.monotonic() if new is not None else None
        port = wait_until(lambda: http_port(new.pid, stack.headers), 120, 0.5) if new else None
        served = wait_until(lambda: (v := served_versions(port, stack)) == expected and v,
                            60, 0.5) if port else None
        recovered = time.monotonic() if served else None
        time.sleep(AFTER_S)
    out.count(load, fault, recovered)
    out.recover_s = None if recovered is None else recovered - fault
    out.lost = f"{out.failed} requests failed"
    aliases = {m: read_aliases(stack.repository, m).production for m in expected}
    out.figures.update(replica_actor_alive_s=None if started is None else round(started - fault, 2),
                       versions_served=served or {}, versions_expected=expected,
                       production_aliases=aliases)
    return out.judge(
        error_ratio_under_1pct=out.error_ratio < 0.01,
        replaced=recovered is not None,
        same_versions=bool(served) and served == expected
        and all(a is None or served.get(m) == a for m, a in aliases.items()),
    )


# ------------------------------------------------------------------ b. monitor killed


def _firing(alerts: dict[str, str]) -> set[str]:
    return {k for k, v in alerts.items() if json.loads(v).get("firing")}


def _replica_counts(stack: Stack) -> tuple[float, float] | None:
    """(sampled rows sent to the monitor, sampled rows dropped) over every replica, from Ray's
    metrics export; None without one."""
    if stack.ray_metrics_url is None:
        return None
    text = httpx.get(stack.ray_metrics_url, timeout=10).text
    return (metric_sum(text, "ray_vigil_samples_sent_rows_total"),
            metric_sum(text, "ray_vigil_samples_dropped_rows_total"))


def _settled(stack: Stack, want: int, timeout_s: float = 40.0) -> tuple[float, float] | None:
    """The replicas' counters once Ray's metrics stop moving (or account for `want` rows)."""
    last = _replica_counts(stack)
    if last is None:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(3.0)
        now = _replica_counts(stack)
        assert now is not None
        if now == last and sum(now) >= want:
            return now
        last = now
    return last


def monitor_killed(stack: Stack) -> Outcome:
    """SIGKILL the monitor replica under load: serving must not notice; every sampled row is
    either counted sent and at the monitor or counted dropped; the alert states and the pending
    deliveries in the outbox are there after the restart."""
    out = Outcome("monitor_killed")
    with stack.client() as client:
        (victim,) = actors(stack, MONITOR_CLASS)
        metrics_before = client.get("/monitor/metrics").text
        received_0 = metric_sum(metrics_before, "vigil_sample_rows_received_total")
        replicas_0 = _replica_counts(stack)
        with stack.load() as load:
            time.sleep(WARM_S)
            if stack.webhook_target is not None:  # rules that fire on this load: let them
                wait_until(lambda: _firing(outbox_state(stack.outbox)["alerts"]), 30, 0.5)
            state_before = outbox_state(stack.outbox)
            received_old = metric_sum(client.get("/monitor/metrics").text,
                                      "vigil_sample_rows_received_total")
            fault = time.monotonic()
            kill(victim.pid)
            new = wait_until(lambda: [a for a in actors(stack, MONITOR_CLASS)
                                      if a.actor_id != victim.actor_id], 180, 0.5)
            back = wait_until(lambda: client.get("/monitor/metrics", timeout=5).status_code
                              == 200 and time.monotonic(), 120, 0.5) if new else None
            flowing = wait_until(lambda: metric_sum(
                client.get("/monitor/metrics", timeout=5).text,
                "vigil_sample_rows_received_total") > 0 and time.monotonic(), 90, 0.5)
            time.sleep(AFTER_S)
        time.sleep(3.0)  # the replicas' last flush
        # Replicas sample the rows of versions with a reference profile only (mlp has none):
        # those answered are the rows that must each be counted sent or dropped.
        answered = sum(s.ok and (stack.repository / s.model / str(s.version) /
                                 "profile.json").is_file() for s in load.shots)
        received_new = metric_sum(client.get("/monitor/metrics").text,
                                  "vigil_sample_rows_received_total")
    state_after = outbox_state(stack.outbox)
    out.count(load, fault, back)
    out.recover_s = None if back is None else back - fault
    pending_before = {k for k, s in state_before["deliveries"].items() if s == "pending"}
    survived = {k for k in pending_before if state_after["deliveries"].get(k) in
                ("pending", "delivered")}
    out.figures.update(
        samples_flow_again_s=None if not flowing else round(flowing - fault, 2),
        firing_before=sorted(_firing(state_before["alerts"])),
        firing_after=sorted(_firing(state_after["alerts"])),
        pending_before=len(pending_before), pending_survived=len(survived),
        rows_at_old_monitor_last_scrape=received_old - received_0,
        rows_at_new_monitor=received_new)
    checks = {
        "no_failed_request": out.failed == 0,
        "monitor_back": back is not None,
        "samples_flow_again": bool(flowing),
        "alert_state_survived": _firing(state_before["alerts"]) <= _firing(state_after["alerts"]),
        "pending_events_survived": survived == pending_before,
    }
    replicas_1 = _settled(stack, int(answered + sum(replicas_0 or (0, 0))))
    if replicas_0 is not None and replicas_1 is not None:
        sent = replicas_1[0] - replicas_0[0]
        dropped = replicas_1[1] - replicas_0[1]
        # Sent = taken by a monitor (ingest returned). What the old one took after the last
        # scrape before the kill is the only part not seen at either monitor.
        unseen = sent - (received_old - received_0) - received_new
        out.figures.update(profiled_rows_answered=answered, rows_sent=sent, rows_dropped_counted=dropped,
                           rows_sent_not_seen_at_a_monitor=unseen)
        out.lost = (f"{int(dropped)} sampled rows dropped and counted; "
                    f"{int(received_old - received_0)} rows in the dead monitor's open windows")
        checks["every_row_sent_or_counted_dropped"] = sent + dropped == answered
    else:
        out.lost = f"{int(received_old - received_0)} rows in the dead monitor's open windows"
    return out.judge(**checks)


# ------------------------------------------------------------------ c. alias board killed


def alias_board_killed(stack: Stack, model: str, versions: tuple[str, str]) -> Outcome:
    """SIGKILL the alias board while admin changes go on (promotions of `model` back and forth
    between two versions, twice a second): each answer is 200 or a 503 that says why, and the
    changes work again, converged on every replica, within seconds (the bar is 15 s; the first
    full run here measured 10.8 s)."""
    out = Outcome("alias_board_killed")
    original = read_aliases(stack.repository, model).production
    answers: list[tuple[float, int, bool, str]] = []  # (when, status, converged, error)
    with stack.client() as client, stack.load() as load:
        def change(i: int) -> None:
            r = client.post(f"/v2/repository/models/{model}/promote", json={
                "version": versions[i % 2], "force": True, "reason": "faults: alias board"})
            doc = r.json() if r.headers.get("content-type", "").startswith("application/json") \
                else {}
            answers.append((time.monotonic(), r.status_code, bool(doc.get("converged")),
                            str(doc.get("error", ""))[:300]))

        try:
            for i in range(4):
                change(i)
                time.sleep(0.5)
            victim = board_actor(stack)
            fault = time.monotonic()
            if victim is not None:
                kill(victim.pid)
            i, ok_since = 0, None
            while time.monotonic() - fault < 60:
                change(i)
                i += 1
                when, status, converged, _ = answers[-1]
                if status == 200 and converged:
                    ok_since = ok_since or when
                    if sum(a[1] == 200 for a in answers if a[0] >= ok_since) >= 3:
                        break
                else:
                    ok_since = None
                time.sleep(0.5)
            time.sleep(AFTER_S)
        finally:
            if original is not None:
                client.post(f"/v2/repository/models/{model}/promote", json={
                    "version": original, "force": True, "reason": "faults: restore"})
    after = [a for a in answers if a[0] >= fault]
    recovered = ok_since
    out.count(load, fault, recovered)
    out.recover_s = None if recovered is None else recovered - fault
    codes: dict[int, int] = {}
    for a in after:
        codes[a[1]] = codes.get(a[1], 0) + 1
    out.lost = f"{sum(a[1] != 200 for a in after)} admin changes refused (503), none half-made"
    out.figures.update(board_found=victim is not None, admin_statuses=codes,
                       admin_after_kill=[(round(a[0] - fault, 2), a[1], a[2]) for a in after],
                       admin_errors=sorted({a[3] for a in after if a[1] != 200})[:3])
    return out.judge(
        board_killed=victim is not None,
        only_200_or_503=set(codes) <= {200, 503},
        recovered_within_15s=out.recover_s is not None and out.recover_s < 15,
        no_failed_inference=out.failed == 0,
    )


# ------------------------------------------------------------------ d. HAProxy killed


def haproxy_killed(stack: Stack) -> Outcome:
    """SIGKILL every HAProxy process of this Vigil under load: how long until the front door
    answers again, and how many requests were lost meanwhile."""
    out = Outcome("haproxy_killed")
    with stack.client() as client, stack.load() as load:
        time.sleep(WARM_S)
        victims = stack.haproxy_pids()
        fault = time.monotonic()
        for pid in victims:
            kill(pid)

        def answering() -> float | None:
            ok = client.get("/v2/health/ready", timeout=2).status_code == 200
            return time.monotonic() if ok and any(p not in victims for p in stack.haproxy_pids())\
                else None

        back = wait_until(answering, 180, 0.2)
        time.sleep(AFTER_S)
    out.count(load, fault, back)
    out.recover_s = None if back is None else back - fault
    down = load.during(fault, back or time.monotonic())
    out.lost = (f"{sum(not s.ok for s in down)} requests failed while down "
                f"({sum(s.status == 0 for s in down)} without an HTTP answer)")
    out.figures.update(haproxy_pids_killed=len(victims),
                       last_failure_s=None if (t := load.last_failure(fault)) is None
                       else round(t - fault, 2))
    return out.judge(killed=bool(victims), recovered=back is not None,
                     no_failure_after_recovery=(load.last_failure(fault) or 0) <= (back or 0) + 1)


# ------------------------------------------------------------------ e. webhook receiver down


class CountingReceiver:
    """A webhook receiver on 127.0.0.1 that answers 204 and counts the deliveries of each
    webhook-id (signatures are not its subject: test_webhooks checks them)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deliveries: dict[str, int] = {}
        seen = self.deliveries

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("webhook-id", "?")
                seen[key] = seen.get(key, 0) + 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook_down(stack: Stack, down_s: float = 60.0) -> Outcome:
    """Alerts fire while the webhook receiver is down for `down_s`; once it is up, every event
    is delivered, each once."""
    out = Outcome("webhook_down")
    target = stack.webhook_target
    if target is None:
        return out.judge(webhook_target_configured=False)
    with stack.load() as load:
        fault = time.monotonic()
        events = wait_until(lambda: outbox_state(stack.outbox, target)["deliveries"], 60, 1.0)
        time.sleep(max(0.0, down_s - (time.monotonic() - fault)))
        with CountingReceiver(stack.receiver_port) as receiver:
            up = time.monotonic()

            def all_done() -> float | None:
                states = outbox_state(stack.outbox, target)["deliveries"]
                return time.monotonic() if states and "pending" not in states.values() else None

            done = wait_until(all_done, 120, 0.5)
            time.sleep(2.0)
            delivered = dict(receiver.deliveries)
    final = outbox_state(stack.outbox, target)["deliveries"]
    ids = {k.split("@")[0] for k in final}
    out.count(load, fault, done)
    out.recover_s = None if done is None else done - up
    dups = {k: n for k, n in delivered.items() if n > 1}
    out.lost = f"{len(ids - set(delivered))} of {len(ids)} events undelivered"
    out.figures.update(events_while_down=len(events or {}), events=len(ids),
                       receiver_down_s=round(up - fault, 1), duplicates=len(dups),
                       dead=sum(s == "dead" for s in final.values()))
    return out.judge(events_fired=bool(events), all_delivered=ids <= set(delivered),
                     each_once=not dups, none_dead=out.figures["dead"] == 0,
                     serving_unaffected=out.failed == 0)
