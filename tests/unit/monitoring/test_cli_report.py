"""`vigil report` against a stand-in monitor on 127.0.0.1 (the real one: tests/integration)."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vigil.tools.cli import main


class _Monitor(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Monitor.seen.append(dict(self.headers))
        encoding = None
        if self.path == "/monitor/v1/models/breast%20cancer/report?version=1":
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
