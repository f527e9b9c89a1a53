"""`vigil tokens`: create, list and revoke the scoped bearer tokens in the tokens file the
running apps read. Needs neither onnxruntime nor a server."""

from __future__ import annotations

import argparse
from pathlib import Path

from vigil.tools.argtable import MODELS_DIR, Command, arg


def _tokens_file(args: argparse.Namespace) -> Path:
    """--file, else VIGIL_TOKENS_FILE (read by the serving settings), else tokens.yaml beside
    the model repository: the same file the running apps use."""
    from vigil.core.settings import AppSettings

    if args.file:
        return Path(args.file)
    return AppSettings(model_repository=Path(args.models_dir)).tokens_path()


def _tokens_create(args: argparse.Namespace) -> int:
    from vigil.core.tokens import create_token, parse_scopes

    path = _tokens_file(args)
    token = create_token(path, args.name, parse_scopes(args.scopes))
    print(f"created token {args.name!r} with scopes {args.scopes} in {path} (only its SHA-256 is "
          "stored); it is shown once, here:")
    print(token)
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    from vigil.core.tokens import read_tokens

    path = _tokens_file(args)
    records = read_tokens(path) if path.exists() else []
    if not records:
        print(f"no tokens in {path}")
    for r in records:
        print(f"{r.name}  scopes={','.join(sorted(r.scopes))}  created={r.created}  "
              f"sha256={r.sha256[:12]}")
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    from vigil.core.tokens import revoke_token

    path = _tokens_file(args)
    revoke_token(path, args.name)
    print(f"revoked token {args.name!r} in {path}; running servers refuse it within a second")
    return 0


_TOKENS_FILE = (
    arg("--file", default=None, help="tokens file (default: VIGIL_TOKENS_FILE, else tokens.yaml "
        "beside the model repository)"),
    MODELS_DIR,
)

COMMAND = Command("tokens", "scoped bearer tokens (metrics, infer, feedback, monitor, admin)", sub=(
    Command("create", "create a token; it is printed once, last", _tokens_create, (
        arg("name", help="a name for the token (letters, digits, '.', '_', '-')"),
        arg("--scopes", required=True,
            help="comma-separated: metrics (scraping /monitor/metrics only), infer (inference, "
            "metadata, readiness), feedback (ground-truth labels for served requests), monitor (drift, reports, sampled rows, status under "
            "/monitor and /v2/vigil; scraping too), admin (model operations; labels too)"),
        *_TOKENS_FILE)),
    Command("list", "list token names and scopes", _tokens_list, _TOKENS_FILE),
    Command("revoke", "revoke a token by name", _tokens_revoke, (arg("name"), *_TOKENS_FILE)),
))
