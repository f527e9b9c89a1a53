"""The `vigil` command line: example models, the model repository, reference profiles, reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _examples_build(args: argparse.Namespace) -> int:
    from vigil.examples import build_examples

    for version in build_examples(Path(args.models_dir), force=args.force, progress=args.progress):
        m = version.manifest
        profile = "profile" if version.has_profile else "no profile"
        print(f"{m.name}/{m.version}  sha256={m.sha256[:12]}  {profile}  {version.path}")
    return 0


def _profile_build(args: argparse.Namespace) -> int:
    from vigil.profiles import profile_version

    version_dir = Path(args.models_dir) / args.model / args.version
    if not version_dir.is_dir():
        raise FileNotFoundError(f"no model version {args.model}/{args.version} in {args.models_dir}")
    profile = profile_version(
        version_dir, Path(args.data), outputs_from_model=args.outputs_from_model,
        progress=args.progress,
    )
    outputs = [c.name for c in profile.outputs]
    print(
        f"{args.model}/{args.version}: {profile.rows} rows, {len(profile.features)} features, "
        f"outputs {outputs or 'none'} ({(profile.meta or {}).get('outputs')}), "
        f"{profile.nbytes} bytes of arrays -> {version_dir}/profile.json, profile.npz"
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    import gzip
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    query = f"?{urllib.parse.urlencode({'version': args.version})}" if args.version else ""
    model = urllib.parse.quote(args.model, safe="")
    url = f"{args.monitor_url.rstrip('/')}/monitor/v1/models/{model}/report{query}"
    # The monitor keeps reports gzip-compressed (about a quarter of the page's size).
    request = urllib.request.Request(url, headers={**_client_auth(), "Accept-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read()
            if response.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        raise RuntimeError(f"{url} answered {exc.code}: {detail}") from None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    print(f"wrote {len(body)} bytes to {out}")
    return 0


class ClientSettings(BaseSettings):
    """What the CLI needs from the environment to call a running server."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the server (VIGIL_TOKEN)."
    )


def _client_auth() -> dict[str, str]:
    token = ClientSettings().token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def _models_list(args: argparse.Namespace) -> int:
    from vigil.repository import scan

    for name, versions in scan(Path(args.models_dir)).items():
        for version in versions:
            m = version.manifest
            sig = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in m.inputs)
            print(f"{name}/{m.version}  inputs: {sig}  sha256={m.sha256[:12]}")
    return 0


def _tokens_file(args: argparse.Namespace) -> Path:
    """--file, else VIGIL_TOKENS_FILE (read by the serving settings), else tokens.yaml beside
    the model repository: the same file the running apps use."""
    from serving.settings import ServerSettings
    from vigil.tokens import tokens_file

    if args.file:
        return Path(args.file)
    settings = ServerSettings(model_repository=Path(args.models_dir))
    return tokens_file(settings.tokens_file, settings.model_repository)


def _tokens_create(args: argparse.Namespace) -> int:
    from vigil.tokens import create_token, parse_scopes

    path = _tokens_file(args)
    token = create_token(path, args.name, parse_scopes(args.scopes))
    print(f"created token {args.name!r} with scopes {args.scopes} in {path} (only its SHA-256 is "
          "stored); it is shown once, here:")
    print(token)
    return 0


def _tokens_list(args: argparse.Namespace) -> int:
    from vigil.tokens import read_tokens

    path = _tokens_file(args)
    records = read_tokens(path) if path.exists() else []
    if not records:
        print(f"no tokens in {path}")
    for r in records:
        print(f"{r.name}  scopes={','.join(sorted(r.scopes))}  created={r.created}  "
              f"sha256={r.sha256[:12]}")
    return 0


def _tokens_revoke(args: argparse.Namespace) -> int:
    from vigil.tokens import revoke_token

    path = _tokens_file(args)
    revoke_token(path, args.name)
    print(f"revoked token {args.name!r} in {path}; running servers refuse it within a second")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    examples = commands.add_parser("examples", help="the bundled example models")
    examples_cmd = examples.add_subparsers(dest="examples_command", required=True)
    build = examples_cmd.add_parser("build", help="build breast_cancer/1 and mlp/1")
    build.add_argument("--models-dir", default="models", help="model repository (default: models)")
    build.add_argument("--force", action="store_true", help="rebuild versions that exist")
    _progress_flag(build)
    build.set_defaults(func=_examples_build)

    models = commands.add_parser("models", help="the model repository")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    listing = models_cmd.add_parser("list", help="list models, versions and signatures")
    listing.add_argument("--models-dir", default="models")
    listing.set_defaults(func=_models_list)

    profile = commands.add_parser("profile", help="reference profiles for drift monitoring")
    profile_cmd = profile.add_subparsers(dest="profile_command", required=True)
    pbuild = profile_cmd.add_parser(
        "build", help="profile reference data beside a model version (profile.json + .npz)"
    )
    pbuild.add_argument("--model", required=True)
    pbuild.add_argument("--version", required=True)
    pbuild.add_argument("--data", required=True, help="reference data: .parquet, .csv or .npz")
    pbuild.add_argument("--models-dir", default="models", help="model repository (default: models)")
    pbuild.add_argument(
        "--outputs-from-model", action=argparse.BooleanOptionalAction, default=False,
        help="run the model on the reference features for the output columns (prediction "
        "drift); without it, outputs are profiled only when the data holds them",
    )
    _progress_flag(pbuild)
    pbuild.set_defaults(func=_profile_build)

    tokens = commands.add_parser("tokens", help="scoped bearer tokens (infer, monitor, admin)")
    tokens_cmd = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tokens_cmd.add_parser("create", help="create a token; it is printed once, last")
    create.add_argument("name", help="a name for the token (letters, digits, '.', '_', '-')")
    create.add_argument("--scopes", required=True,
                        help="comma-separated: infer (inference, metadata, readiness), monitor "
                        "(/monitor, /v2/vigil), admin (model operations)")
    listing_tokens = tokens_cmd.add_parser("list", help="list token names and scopes")
    revoke = tokens_cmd.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")
    for sub, func in ((create, _tokens_create), (listing_tokens, _tokens_list),
                      (revoke, _tokens_revoke)):
        sub.add_argument("--file", default=None,
                         help="tokens file (default: VIGIL_TOKENS_FILE, else tokens.yaml beside "
                         "the model repository)")
        sub.add_argument("--models-dir", default="models", help="model repository (default: models)")
        sub.set_defaults(func=func)

    report = commands.add_parser("report", help="fetch the monitor's HTML drift report")
    report.add_argument("--model", required=True)
    report.add_argument("--version", default=None, help="default: the newest")
    report.add_argument("--out", required=True, help="HTML file to write")
    report.add_argument("--monitor-url", default="http://127.0.0.1:8000",
                        help="where the server runs; its bearer token comes from VIGIL_TOKEN")
    report.add_argument("--timeout", type=float, default=120.0, help="seconds (default: 120)")
    report.set_defaults(func=_report)
    return parser


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar (default: on a terminal, for large builds)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI answers with a message, not a traceback
        print(f"vigil: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
