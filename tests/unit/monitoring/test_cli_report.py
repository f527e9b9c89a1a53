"""`vigil report` against a stand-in monitor on 127.0.0.1 (the real one: tests/integration),
also as the HTTP proxy through which another host is reached."""

from __future__ import annotations

import gzip
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.cli_support import ELSEWHERE, REFUSAL, WARNING, nowhere
from vigil.tools.cli import main


class _Monitor(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Monitor.seen.append(dict(self.headers))
        encoding = None
        target = urllib.parse.urlsplit(self.path)  # absolute when asked as a proxy
        if (target.path, target.query) == ("/monitor/v1/models/breast%20cancer/report",
                                           "version=1"):
            status, body, kind = 200, b"<html>report</html>", "text/html"
            if "gzip" in self.headers.get("accept-encoding", ""):  # as the monitor keeps it
                body, encoding = gzip.compress(body), "gzip"
        else:
            status, body, kind = 409, b'{"error": "no sampled rows yet"}', "application/json"
        self.send_response(status)
        self.send_header("content-type", kind)
        if encoding:
            self.send_header("content-encoding", encoding)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def monitor_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Monitor)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_report_is_written(monitor_url: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("VIGIL_TOKEN", "vigil_secret")
    out = tmp_path / "deep" / "report.html"
    args = ["report", "--model", "breast cancer", "--version", "1", "--out", str(out),
            "--monitor-url", monitor_url + "/"]
    assert main(args) == 0
    assert out.read_text() == "<html>report</html>"  # sent gzip-compressed, written plain
    assert f"wrote 19 bytes to {out}" in capsys.readouterr().out
    headers = {k.lower(): v for k, v in _Monitor.seen[-1].items()}
    assert headers["authorization"] == "Bearer vigil_secret"
    assert headers["accept-encoding"] == "gzip"


def test_without_vigil_token_no_authorization_is_sent(monitor_url, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    out = tmp_path / "r.html"
    main(["report", "--model", "breast cancer", "--version", "1", "--out", str(out),
          "--monitor-url", monitor_url])
    assert "authorization" not in {k.lower() for k in _Monitor.seen[-1]}


def test_monitor_errors_are_shown(monitor_url: str, tmp_path: Path, capsys) -> None:
    args = ["report", "--model", "mlp", "--out", str(tmp_path / "r.html"), "--monitor-url", monitor_url]
    assert main(args) == 1
    assert capsys.readouterr().err.strip().endswith("answered 409: no sampled rows yet")
    assert not (tmp_path / "r.html").exists()


def _report_args(out: Path, url: str, *extra: str) -> list[str]:
    return ["report", "--model", "breast cancer", "--version", "1", "--out", str(out),
            "--monitor-url", url, *extra]


def test_the_token_is_not_sent_in_clear_to_another_host(
    monitor_url: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    """VIGIL_TOKEN set, --monitor-url http://vigil.example (through a proxy on 127.0.0.1):
    exit 2 with what to do, nothing sent, nothing written; --insecure sends it and warns."""
    monkeypatch.setenv("VIGIL_TOKEN", "vigil_secret")
    monkeypatch.setenv("HTTP_PROXY", monitor_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    seen, out = len(_Monitor.seen), tmp_path / "r.html"
    assert main(_report_args(out, ELSEWHERE)) == 2
    assert capsys.readouterr().err == REFUSAL
    assert len(_Monitor.seen) == seen and not out.exists()

    assert main(_report_args(out, ELSEWHERE, "--insecure")) == 0
    assert capsys.readouterr().err == WARNING
    assert out.read_text() == "<html>report</html>"
    assert {k.lower(): v for k, v in _Monitor.seen[-1].items()}["authorization"] == \
        "Bearer vigil_secret"


def test_a_monitor_that_does_not_answer_names_the_timeout(tmp_path: Path, capsys) -> None:
    """A monitor that accepts and never answers: exit 1 naming --timeout, nothing written."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        assert main(_report_args(tmp_path / "r.html", url, "--timeout", "0.3")) == 1
    assert capsys.readouterr().err == (
        f"vigil: GET {url}/monitor/v1/models/breast%20cancer/report?version=1: no answer "
        "within 0.3 s (--timeout)\n")
    assert not (tmp_path / "r.html").exists()


def test_no_monitor_is_said_plainly(tmp_path: Path, capsys) -> None:
    url = nowhere()
    assert main(_report_args(tmp_path / "r.html", url)) == 1
    assert capsys.readouterr().err == f"vigil: no server at {url}\n"
