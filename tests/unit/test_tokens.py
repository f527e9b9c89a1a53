"""The tokens file and token checks: digests only, 0600, atomic, noticed without a restart."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
import yaml

from vigil.core.settings import AppSettings
from vigil.tools.cli import main
from vigil.core.tokens import (
    SCOPES,
    TokensFileError,
    TokenVerifier,
    create_token,
    parse_scopes,
    read_tokens,
    revoke_token,
)


def _touch_later(path: Path) -> None:
    """A new mtime even on coarse clocks, so a re-read sees a change."""
    stamp = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_create_stores_only_a_digest_in_a_0600_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    token = create_token(path, "ci", frozenset({"infer", "monitor"}))
    assert token.startswith("vigil_") and len(token) > 40
    text = path.read_text()
    assert token not in text
    (record,) = read_tokens(path)
    assert (record.name, record.scopes) == ("ci", frozenset({"infer", "monitor"}))
    assert record.sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert path.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(text)["tokens"][0]["scopes"] == ["infer", "monitor"]


def test_names_are_unique_and_revocation_removes_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    create_token(path, "a", frozenset({"infer"}))
    create_token(path, "b", frozenset({"admin"}))
    with pytest.raises(ValueError, match="a token named 'a' exists"):
        create_token(path, "a", frozenset({"infer"}))
    revoke_token(path, "a")
    assert [r.name for r in read_tokens(path)] == ["b"]
    with pytest.raises(ValueError, match="no token named 'a'"):
        revoke_token(path, "a")


@pytest.mark.parametrize("text", ["infer,root", "", " , ", "INFER"])
def test_scopes_must_be_known(text: str) -> None:
    with pytest.raises(ValueError, match="scopes must be a comma-separated subset"):
        parse_scopes(text)


def test_parse_scopes_ignores_spaces() -> None:
    assert parse_scopes(" infer , admin") == frozenset({"infer", "admin"})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("tokens: []\n", "expected a mapping with version: 1"),
        ("version: 2\ntokens: []\n", "expected a mapping with version: 1"),
        ("version: 1\ntokens: {}\n", "expected only 'version' and a list 'tokens'"),
        ("version: 1\nextra: 1\n", "expected only 'version' and a list 'tokens'"),
        ("version: 1\ntokens: [{name: a, scopes: [infer], sha256: abc}]\n",
         "sha256 must be 64 lowercase hex digits"),
        (f"version: 1\ntokens: [{{name: a, scopes: [root], sha256: '{'0' * 64}'}}]\n",
         "scopes must be a comma-separated subset"),
        (f"version: 1\ntokens: [{{name: a, scopes: [infer], sha256: '{'0' * 64}'}}, "
         f"{{name: a, scopes: [infer], sha256: '{'1' * 64}'}}]\n", "repeated name 'a'"),
        (f"version: 1\ntokens: [{{name: a, scopes: [infer], sha256: '{'0' * 64}', token: x}}]\n",
         "expected name, scopes, sha256, created"),
        ("version: 1\ntokens: [[\n", "while parsing"),
    ],
)
def test_a_malformed_file_is_refused_with_where_and_why(tmp_path: Path, doc: str, message: str):
    path = tmp_path / "tokens.yaml"
    path.write_text(doc)
    with pytest.raises(TokensFileError, match=message):
        read_tokens(path)
    with pytest.raises(TokensFileError):  # a server does not start on it
        TokenVerifier(path)


def test_the_default_file_sits_beside_the_model_repository(tmp_path: Path) -> None:
    beside = AppSettings(model_repository=tmp_path / "models").tokens_path()
    assert beside == tmp_path.resolve() / "tokens.yaml"
    named = AppSettings(model_repository=tmp_path / "models", tokens_file="/etc/vigil/t.yaml")
    assert named.tokens_path() == Path("/etc/vigil/t.yaml")


# ---------------------------------------------------------------- checks


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.yaml"
    return path, {
        "infer": create_token(path, "reader", frozenset({"infer"})),
        "ops": create_token(path, "ops", frozenset({"monitor", "admin"})),
    }


def test_check_allows_the_scope_and_refuses_the_rest(tokens) -> None:
    path, issued = tokens
    verifier = TokenVerifier(path)
    assert verifier.enabled
    ok = verifier.check(f"Bearer {issued['infer']}", "infer")
    assert (ok.allowed, ok.token_name) == (True, "reader")
    assert verifier.check(f"bearer {issued['ops']}", "admin").allowed  # scheme is case-blind
    assert verifier.check(f"Bearer {issued['ops']}", None).allowed  # any valid token
    denied = verifier.check(f"Bearer {issued['infer']}", "monitor")
    assert (denied.allowed, denied.status, denied.token_name) == (False, 403, "reader")
    assert denied.message == "token 'reader' lacks the 'monitor' scope this route needs"
    for header in (None, "", "Bearer", "Bearer  ", f"Basic {issued['infer']}",
                   f"Bearer {issued['infer']}x", f"Bearer {issued['infer']} extra",
                   f"{issued['infer']}"):
        refused = verifier.check(header, "infer")
        assert (refused.allowed, refused.status) == (False, 401), header
    assert issued["infer"] not in verifier.check(f"Bearer {issued['infer']}x", "infer").message


def test_without_a_file_no_token_is_valid_until_one_appears(tmp_path: Path) -> None:
    """Without a file the verifier is not enabled (the guard then admits its own host only)
    and its check grants nothing; a file created later is noticed without a restart."""
    path = tmp_path / "tokens.yaml"
    verifier = TokenVerifier(path, recheck_s=0.0)
    assert not verifier.enabled and not verifier.check(None, "infer").allowed
    token = create_token(path, "late", frozenset({"infer"}))
    assert verifier.enabled  # noticed without a restart
    assert not verifier.check(None, "infer").allowed
    assert verifier.check(f"Bearer {token}", "infer").allowed


def test_changes_are_noticed_and_revocation_applies(tokens) -> None:
    path, issued = tokens
    verifier = TokenVerifier(path, recheck_s=0.0)
    assert verifier.check(f"Bearer {issued['infer']}", "infer").allowed
    revoke_token(path, "reader")
    assert verifier.check(f"Bearer {issued['infer']}", "infer").status == 401
    assert verifier.check(f"Bearer {issued['ops']}", "monitor").allowed


def test_rechecks_are_rate_limited(tokens) -> None:
    path, issued = tokens
    verifier = TokenVerifier(path, recheck_s=3600)
    revoke_token(path, "reader")
    assert verifier.check(f"Bearer {issued['infer']}", "infer").allowed  # not looked at yet
    verifier.refresh()
    assert not verifier.check(f"Bearer {issued['infer']}", "infer").allowed


def test_a_vanished_or_broken_file_keeps_the_last_tokens(tokens, caplog) -> None:
    caplog.set_level(logging.ERROR, "vigil.core.tokens")
    path, issued = tokens
    verifier = TokenVerifier(path, recheck_s=0.0)
    path.write_text("version: [\n")
    _touch_later(path)
    assert verifier.check(f"Bearer {issued['infer']}", "infer").allowed  # last good set
    assert not verifier.check(None, "infer").allowed  # still enforced
    path.unlink()
    assert verifier.enabled and not verifier.check(None, "infer").allowed  # never opens up
    assert any("vanished" in r.getMessage() for r in caplog.records)
    assert any("unusable" in r.getMessage() for r in caplog.records)


def test_cli_create_prints_the_token_last_and_list_revoke(tmp_path: Path, capsys) -> None:
    models = tmp_path / "models"
    models.mkdir()
    assert main(["tokens", "create", "ci", "--scopes", "infer,monitor",
                 "--models-dir", str(models)]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    path = tmp_path / "tokens.yaml"
    assert TokenVerifier(path).check(f"Bearer {token}", "monitor").allowed
    assert main(["tokens", "list", "--models-dir", str(models)]) == 0
    listing = capsys.readouterr().out
    assert "ci  scopes=infer,monitor" in listing and token not in listing
    assert main(["tokens", "create", "x", "--scopes", "root", "--file", str(path)]) == 1
    assert "scopes must be" in capsys.readouterr().err
    assert main(["tokens", "revoke", "ci", "--file", str(path)]) == 0
    assert read_tokens(path) == []


def test_cli_honours_vigil_tokens_file(tmp_path: Path, capsys, monkeypatch) -> None:
    path = tmp_path / "elsewhere" / "t.yaml"
    monkeypatch.setenv("VIGIL_TOKENS_FILE", str(path))
    assert main(["tokens", "create", "ci", "--scopes", "admin"]) == 0
    assert [r.name for r in read_tokens(path)] == ["ci"]
    assert str(path) in capsys.readouterr().out


# ---------------------------------------------------------------- scopes: least privilege


@pytest.mark.parametrize(
    ("scopes", "grants"),
    [
        ("metrics", {"metrics"}),
        ("monitor", {"monitor", "metrics"}),  # as before `metrics` existed: a monitor token scrapes
        ("infer", {"infer"}),
        # admin changes versions and may label; it reads no sampled rows, scrapes nothing
        ("admin", {"admin", "feedback"}),
        ("feedback", {"feedback"}),  # labels only: it cannot run a model or read what it served
        ("infer,metrics", {"infer", "metrics"}),
    ],
)
def test_each_scope_grants_itself_and_only_what_it_implies(
    tmp_path: Path, scopes: str, grants: set[str]
) -> None:
    path = tmp_path / "tokens.yaml"
    token = create_token(path, "t", parse_scopes(scopes))
    verifier = TokenVerifier(path)
    for scope in SCOPES:
        decision = verifier.check(f"Bearer {token}", scope)
        assert decision.allowed is (scope in grants), (scopes, scope)
        if not decision.allowed:
            assert decision.status == 403 and f"lacks the {scope!r} scope" in decision.message


def test_a_tokens_file_from_before_the_metrics_scope_keeps_its_rights(tmp_path: Path) -> None:
    """A file written when the scopes were infer, monitor and admin reads the same: nothing it
    granted breaks and nothing widens (a monitor token still scrapes, and reads no more)."""
    path = tmp_path / "tokens.yaml"
    digest = hashlib.sha256(b"vigil_old").hexdigest()
    path.write_text(f"version: 1\ntokens:\n  - {{name: prom, scopes: [monitor], sha256: {digest}}}\n")
    verifier = TokenVerifier(path)
    assert verifier.check("Bearer vigil_old", "metrics").allowed
    assert verifier.check("Bearer vigil_old", "monitor").allowed
    assert not verifier.check("Bearer vigil_old", "admin").allowed
    assert not verifier.check("Bearer vigil_old", "infer").allowed
