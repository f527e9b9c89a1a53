"""`vigil webhooks`: list, show, retry and replay deliveries in the outbox; new signing secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from monitoring.alert_settings import secret_key
from monitoring.outbox import STATES, NewEvent, Outbox
from tests.unit.cli_support import run_cli
from vigil.tools.cli import main
from vigil.tools.webhooks_cli import _DELIVERY_STATES

CREATED = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00


def _body(event_id: str, subject: str) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": event_id, "source": "http://127.0.0.1:8000/monitor",
        "type": "vigil.drift.detected", "subject": subject, "time": "2023-11-14T22:13:20Z",
        "datacontenttype": "application/json", "data": {"model": "m", "share": 0.5},
    }).encode()


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    """Three events: ev-old (retrain dead, audit delivered), ev-mid (retrain delivered),
    ev-new (retrain and audit pending)."""
    path = tmp_path / "vigil-outbox.sqlite"
    outbox = Outbox(path)
    events = [("ev-old", ("retrain", "audit")), ("ev-mid", ("retrain",)),
              ("ev-new", ("retrain", "audit"))]
    for i, (event_id, targets) in enumerate(events):
        subject = f"models/m/versions/{i + 1}"
        outbox.commit({}, [NewEvent(event_id, "vigil.drift.detected", subject, CREATED + i,
                                    _body(event_id, subject), targets)])
    outbox.record_attempt("ev-old", "retrain", state="dead", now=CREATED + 60, status=503,
                          error="HTTP 503 from http://127.0.0.1:9000/events: " + "x" * 80)
    outbox.record_attempt("ev-old", "audit", state="delivered", now=CREATED + 60, status=204,
                          error=None)
    outbox.record_attempt("ev-mid", "retrain", state="delivered", now=CREATED + 61, status=200,
                          error=None)
    outbox.close()
    return path


def _rows(path: Path, **filters: str) -> dict[tuple[str, str], object]:
    outbox = Outbox(path)
    try:
        return {(d.event_id, d.target): d for d in outbox.deliveries(limit=1000, **filters)}
    finally:
        outbox.close()


_run = run_cli


def test_state_choices_are_the_outbox_states() -> None:
    assert _DELIVERY_STATES == STATES


# ------------------------------------------------------------------ list


def test_list_is_a_table_newest_event_first(outbox_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "list", "--outbox", str(outbox_path))
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split()[:8] == ["EVENT", "TYPE", "SUBJECT", "TARGET", "STATE", "ATTEMPTS",
                                  "STATUS", "LAST"]
    assert [line.split()[0] for line in lines] == ["ev-new", "ev-new", "ev-mid", "ev-old", "ev-old"]
    dead = next(line for line in lines if " dead " in line)
    assert dead.split()[:7] == ["ev-old", "vigil.drift.detected", "models/m/versions/1",
                                "retrain", "dead", "1", "503"]
    assert "HTTP 503 from" in dead and "x" * 80 not in dead and "..." in dead  # shortened
    assert dead.endswith("2023-11-14T22:13:20+00:00")


def test_list_filters_by_state_target_and_limit(outbox_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    box = ["--outbox", str(outbox_path)]
    _, out, _ = _run(capsys, "webhooks", "list", "--state", "delivered", *box)
    assert sorted(tuple(line.split()[i] for i in (0, 3)) for line in out.splitlines()[1:]) == [
        ("ev-mid", "retrain"), ("ev-old", "audit")]
    _, out, _ = _run(capsys, "webhooks", "list", "--target", "audit", "--state", "pending", *box)
    assert [line.split()[:4] for line in out.splitlines()[1:]] == [
        ["ev-new", "vigil.drift.detected", "models/m/versions/3", "audit"]]
    _, out, _ = _run(capsys, "webhooks", "list", "--limit", "2", *box)
    assert len(out.splitlines()) == 1 + 2
    code, out, _ = _run(capsys, "webhooks", "list", "--target", "nobody", *box)
    assert code == 0 and out.startswith("no deliveries with target=nobody in ")


def test_list_json_lines(outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "list", "--json", "--state", "dead",
                        "--outbox", str(outbox_path))
    assert code == 0
    (line,) = out.splitlines()
    row = json.loads(line)
    assert {k: row[k] for k in ("event_id", "target", "state", "attempts", "last_status",
                                "type", "subject", "created_at")} == {
        "event_id": "ev-old", "target": "retrain", "state": "dead", "attempts": 1,
        "last_status": 503, "type": "vigil.drift.detected", "subject": "models/m/versions/1",
        "created_at": CREATED}
    assert row["last_error"].endswith("x" * 80)  # whole, in JSON
    assert "body" not in row


@pytest.mark.parametrize(("argv", "message"), [
    (["--state", "failed"], "invalid choice: 'failed'"),
    (["--limit", "0"], "must be at least 1: 0"),
    (["--limit", "ten"], "not a whole number: 'ten'"),
])
def test_list_refuses_bad_options(outbox_path: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["webhooks", "list", "--outbox", str(outbox_path), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------ show


def test_show_prints_the_event_and_its_deliveries(outbox_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "show", "ev-old", "--outbox", str(outbox_path))
    assert code == 0
    event_text, deliveries = out.split("\ndeliveries (2):\n")
    assert json.loads(event_text) == json.loads(_body("ev-old", "models/m/versions/1"))
    assert '\n  "id": "ev-old",\n' in event_text  # pretty
    lines = deliveries.splitlines()
    assert lines[0].startswith("  audit: delivered, attempts 1, last status 204, ")
    assert lines[1].startswith("  retrain: dead, attempts 1, last status 503, ")
    assert lines[2] == "    last error: HTTP 503 from http://127.0.0.1:9000/events: " + "x" * 80


def test_show_unknown_event(outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "webhooks", "show", "ev-nope", "--outbox", str(outbox_path))
    assert (code, out) == (1, "")
    assert err == f"vigil: no such event in {outbox_path}: ev-nope\n"


# ------------------------------------------------------------------ retry


def test_retry_moves_dead_back_to_pending_with_a_fresh_budget(
        outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "retry", "ev-old", "--outbox", str(outbox_path))
    assert code == 0
    assert out.startswith("re-queued 1 dead delivery; ")
    rows = _rows(outbox_path)
    retried = rows[("ev-old", "retrain")]
    assert (retried.state, retried.attempts, retried.done_at) == ("pending", 0, None)
    assert rows[("ev-old", "audit")].state == "delivered"  # only dead ones move
    assert rows[("ev-mid", "retrain")].state == "delivered"
    _, out, _ = _run(capsys, "webhooks", "retry", "ev-old", "--outbox", str(outbox_path))
    assert out.startswith("re-queued 0 dead deliveries; ")  # nothing dead any more


def test_retry_all_dead_respects_target(outbox_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    box = ["--outbox", str(outbox_path)]
    _, out, _ = _run(capsys, "webhooks", "retry", "--all-dead", "--target", "audit", *box)
    assert out.startswith("re-queued 0 dead deliveries to audit; ")
    assert _rows(outbox_path)[("ev-old", "retrain")].state == "dead"
    code, out, _ = _run(capsys, "webhooks", "retry", "--all-dead", *box)
    assert code == 0 and out.startswith("re-queued 1 dead delivery; ")
    assert _rows(outbox_path, state="dead") == {}


@pytest.mark.parametrize(("argv", "code", "message"), [
    ([], 2, "vigil: name the events to retry, or --all-dead for every dead delivery\n"),
    (["ev-old", "--all-dead"], 2, "vigil: give event ids or --all-dead, not both\n"),
    (["ev-old", "ev-nope"], 1, "vigil: no such event in {path}: ev-nope\n"),
])
def test_retry_refuses(outbox_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                       code: int, message: str) -> None:
    got, out, err = _run(capsys, "webhooks", "retry", *argv, "--outbox", str(outbox_path))
    assert (got, out, err) == (code, "", message.format(path=outbox_path))
    assert _rows(outbox_path)[("ev-old", "retrain")].state == "dead"  # nothing moved


def test_retry_help_says_the_monitor_sends(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["webhooks", "retry", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "monitor sends pending deliveries within about a second" in text
    assert "sends nothing itself" in text


# ------------------------------------------------------------------ replay


def test_replay_requeues_delivered_with_the_same_event(
        outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "replay", "ev-mid", "--target", "retrain",
                        "--outbox", str(outbox_path))
    assert code == 0
    assert out.splitlines()[0] == "ev-mid: pending again for retrain"
    row = _rows(outbox_path)[("ev-mid", "retrain")]
    assert (row.event_id, row.state, row.attempts, row.done_at) == ("ev-mid", "pending", 0, None)
    assert row.body == _body("ev-mid", "models/m/versions/2")  # same id, same bytes


def test_replay_to_a_new_target_adds_a_delivery(outbox_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "replay", "ev-mid", "ev-old", "--target", "audit",
                        "--target", "archive", "--outbox", str(outbox_path))
    assert code == 0
    assert out.splitlines()[-1].startswith("re-queued 4 deliveries; ")
    rows = _rows(outbox_path)
    for key in (("ev-mid", "audit"), ("ev-mid", "archive"), ("ev-old", "audit"),
                ("ev-old", "archive")):
        assert (rows[key].state, rows[key].attempts) == ("pending", 0)
        assert json.loads(rows[key].body)["id"] == key[0]
    assert rows[("ev-old", "retrain")].state == "dead"  # not named


def test_replay_without_target_uses_the_events_targets(
        outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "webhooks", "replay", "ev-old", "--outbox", str(outbox_path))
    assert code == 0
    assert out.splitlines()[0] == "ev-old: pending again for audit, retrain"
    rows = _rows(outbox_path)
    assert {k[1]: v.state for k, v in rows.items() if k[0] == "ev-old"} == {
        "audit": "pending", "retrain": "pending"}


def test_replay_unknown_event_changes_nothing(outbox_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = _rows(outbox_path)
    code, out, err = _run(capsys, "webhooks", "replay", "ev-mid", "ev-nope", "--target", "retrain",
                          "--outbox", str(outbox_path))
    assert (code, out) == (1, "")
    assert err == f"vigil: no such event in {outbox_path}: ev-nope\n"
    assert _rows(outbox_path) == before


def test_replay_needs_an_event_id(outbox_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["webhooks", "replay", "--target", "retrain", "--outbox", str(outbox_path)])
    assert exit_info.value.code == 2
    assert "the following arguments are required: EVENT_ID" in capsys.readouterr().err


# ------------------------------------------------------------------ secret


def test_secret_is_32_random_bytes_the_monitor_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    code, first, _ = _run(capsys, "webhooks", "secret")
    assert code == 0
    _, second, _ = _run(capsys, "webhooks", "secret")
    value = first.strip()
    assert value.startswith("whsec_") and first.endswith("\n") and len(first.splitlines()) == 1
    key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    assert len(key) == 32
    assert secret_key(value, "VIGIL_WEBHOOK_SECRET", "retrain") == key
    assert second.strip() != value


# ------------------------------------------------------------------ which file


@pytest.mark.parametrize("command", [["list"], ["show", "ev-old"], ["retry", "--all-dead"],
                                     ["replay", "ev-old", "--target", "retrain"]])
def test_a_missing_outbox_is_refused_not_created(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 command: list[str]) -> None:
    monkeypatch.delenv("VIGIL_OUTBOX_PATH", raising=False)
    path = tmp_path / "nowhere" / "outbox.sqlite"
    code, out, err = _run(capsys, "webhooks", *command, "--outbox", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"vigil: no webhook outbox at {path} ")
    assert not path.parent.exists()
    models = tmp_path / "models"
    code, _, err = _run(capsys, "webhooks", *command, "--models-dir", str(models))
    assert code == 2
    assert f"no webhook outbox at {tmp_path / 'vigil-outbox.sqlite'} " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_models_dir_finds_the_outbox_beside_it(outbox_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIGIL_OUTBOX_PATH", raising=False)
    models = outbox_path.parent / "models"  # need not exist
    code, out, _ = _run(capsys, "webhooks", "list", "--state", "dead", "--models-dir", str(models))
    assert code == 0 and out.splitlines()[1].startswith("ev-old ")


def test_the_monitors_environment_names_the_outbox(outbox_path: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    moved = tmp_path / "volume" / "alerts.sqlite"
    moved.parent.mkdir()
    outbox_path.rename(moved)
    monkeypatch.setenv("VIGIL_OUTBOX_PATH", str(moved))
    code, out, _ = _run(capsys, "webhooks", "show", "ev-mid")
    assert code == 0 and '"id": "ev-mid"' in out


def test_a_file_that_is_no_outbox_is_named(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "notes.sqlite"
    path.write_text("not a database, just text that is long enough to have a header" * 10)
    code, _, err = _run(capsys, "webhooks", "list", "--outbox", str(path))
    assert code == 1
    assert err.startswith(f"vigil: {path}: file is not a database")
