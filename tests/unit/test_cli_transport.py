"""The bearer token never goes in clear to another host: every `vigil models` command refuses
(exit 2, before it writes or sends anything) plain http to a host that is not loopback while
VIGIL_TOKEN is set, unless --insecure, which sends it with a warning. Without a token there is
nothing to protect and nothing is refused.

The other host, vigil.example, is reached through a stand-in HTTP proxy on 127.0.0.1
(HTTP_PROXY): the admin API stand-in of tests.unit.cli_support, which sees what anyone on the
path would see. No traffic leaves 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.graphs import double_graph
from tests.local_http import serving
from tests.unit.cli_support import (
    ELSEWHERE,
    REFUSAL,
    WARNING,
    StandInAdminServer,
    run_cli,
    validated_repo,
)
from vigil.core import audit
from vigil.core.aliases import read_aliases
from vigil.tools.server_client import RefusedURL, check_url

# Every `vigil models` subcommand that talks to a server (publish: its reload), in an order
# that the stand-in accepts one after the other.
COMMANDS: list[tuple[str, ...]] = [
    ("promote", "m", "2"),
    ("canary", "m", "3", "--weight", "0.1"),
    ("canary", "m", "--off"),
    ("shadow", "m", "1"),
    ("rollback", "m"),
    ("retire", "m", "3"),
    ("unload", "m"),
    ("load", "m"),
    ("list",),
    ("show", "m"),
    ("history", "m"),
    ("publish", "PUBLISH_FILE", "--name", "m"),
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return validated_repo(tmp_path / "repo")


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "m4.onnx"
    path.write_bytes(double_graph().SerializeToString())
    return path


@pytest.fixture
def proxy(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInAdminServer]:
    """The stand-in admin API, as the HTTP proxy every request to vigil.example goes through."""
    server = StandInAdminServer(repo)
    with serving(server.app) as url:
        monkeypatch.setenv("HTTP_PROXY", url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        yield server


def _models(capsys: pytest.CaptureFixture[str], repo: Path, onnx_file: Path, argv: tuple[str, ...],
            *extra: str) -> tuple[int, str, str]:
    argv = tuple(str(onnx_file) if a == "PUBLISH_FILE" else a for a in argv)
    return run_cli(capsys, "models", *argv, "--url", ELSEWHERE, "--repository", str(repo), *extra)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0] + "-" + "-".join(argv[1:2]))
def test_a_token_is_not_sent_in_clear_to_another_host(
    argv: tuple[str, ...], proxy: StandInAdminServer, repo: Path, onnx_file: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """VIGIL_TOKEN set, --url http://vigil.example: exit 2 with what to do; nothing reached the
    proxy, and the repository is neither changed nor read in the server's stead."""
    monkeypatch.setenv("VIGIL_TOKEN", "admin-token")
    code, out, err = _models(capsys, repo, onnx_file, argv)
    assert (code, out, err) == (2, "", REFUSAL)
    assert proxy.requests == []
    assert read_aliases(repo, "m").generation == 1 and list(audit.entries(repo, "m")) == []
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1", "2", "3"]


def test_insecure_sends_the_token_with_a_warning(
    proxy: StandInAdminServer, repo: Path, onnx_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--insecure: each command reaches the server through the proxy with its token (the
    stand-in answers 401 to a request without one) and warns once on stderr."""
    monkeypatch.setenv("VIGIL_TOKEN", "both-token")
    for argv in COMMANDS:
        code, _, err = _models(capsys, repo, onnx_file, argv, "--insecure")
        assert (code, err) == (0, WARNING), argv
    routes = {path.rsplit("/", 1)[1] for _, path, _ in proxy.requests}
    assert routes == {"promote", "canary", "shadow", "rollback", "retire", "unload", "load",
                      "index", "aliases", "1", "history"}  # 1: production's metadata, for show
    changes = [e for e in audit.entries(repo, "m") if e["action"] != "publish"]  # local
    assert {e["actor"] for e in changes} == {"both-token"}


def test_without_a_token_nothing_is_refused(
    proxy: StandInAdminServer, repo: Path, onnx_file: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No VIGIL_TOKEN: plain http to another host goes ahead without a warning (the stand-in
    then refuses the anonymous request itself)."""
    monkeypatch.delenv("VIGIL_TOKEN", raising=False)
    code, _, err = _models(capsys, repo, onnx_file, ("list",))
    assert code == 1
    assert err.startswith(f"vigil: POST {ELSEWHERE}/v2/repository/index answered 401: ")
    assert [path for _, path, _ in proxy.requests] == ["/v2/repository/index"]


@pytest.mark.parametrize(("url", "token", "insecure", "answer"), [
    ("http://127.0.0.1:8000", True, False, None),
    ("http://127.9.9.9:8000", True, False, None),
    ("http://localhost:8000/", True, False, None),
    ("http://[::1]:8000", True, False, None),
    ("https://vigil.example", True, False, None),
    ("http://vigil.example", False, False, None),
    ("http://vigil.example", True, False, "refused"),
    ("http://10.0.0.5:8000", True, False, "refused"),
    ("http://localhost.vigil.example", True, False, "refused"),
    ("http://vigil.example", True, True, "warned"),
    ("ftp://127.0.0.1/", False, False, "not http"),
    ("127.0.0.1:8000", False, False, "not http"),
])
def test_check_url(url: str, token: bool, insecure: bool, answer: str | None) -> None:
    """Loopback hosts and https take a token; plain http elsewhere is refused with it, or
    warned about under --insecure; a URL that is not http(s) is refused whatever the token."""
    if answer in ("refused", "not http"):
        with pytest.raises(RefusedURL) as caught:
            check_url(url, sends_token=token, insecure=insecure)
        expected = "use an https:// URL, or give --insecure" if answer == "refused" else \
            "expected an http:// or https:// URL with a host"
        assert expected in str(caught.value)
        return
    warning = check_url(url, sends_token=token, insecure=insecure)
    assert (warning is not None) == (answer == "warned")
