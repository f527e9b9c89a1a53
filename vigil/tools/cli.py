"""The `vigil` command line: example models, model versions (vigil.tools.models_cli), reference
profiles, reports, tokens, the webhook outbox, the Grafana dashboard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vigil.tools import models_cli, tokens_cli, webhooks_cli
from vigil.tools.argtable import MODELS_DIR, Command, Entry, add_commands, arg
from vigil.tools.console import refuse as _refuse



def _examples_build(args: argparse.Namespace) -> int:
    from vigil.tools.examples import build_examples

    for version in build_examples(Path(args.models_dir), force=args.force, progress=args.progress):
        m = version.manifest
        profile = "profile" if version.has_profile else "no profile"
        print(f"{m.name}/{m.version}  sha256={m.sha256[:12]}  {profile}  {version.path}")
    return 0


def _profile_build(args: argparse.Namespace) -> int:
    from vigil.tools.profiles import profile_version

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
    import urllib.parse

    from vigil.tools.server_client import ServerClient, url_refusal

    if (why := url_refusal(args.monitor_url, args.insecure)) is not None:
        return _refuse(why)
    query = f"?{urllib.parse.urlencode({'version': args.version})}" if args.version else ""
    model = urllib.parse.quote(args.model, safe="")
    monitor = ServerClient(args.monitor_url, args.timeout, insecure=args.insecure)
    # The monitor keeps reports gzip-compressed (about a quarter of the page's size); the
    # client decompresses them.
    body = monitor.send("GET", f"/monitor/v1/models/{model}/report{query}",
                        headers={"Accept-Encoding": "gzip"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    print(f"wrote {len(body)} bytes to {out}")
    return 0


def _dashboards_build(args: argparse.Namespace) -> int:
    try:
        from vigil.tools import dashboards
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("grafana_foundation_sdk"):
            raise
        return _refuse("building the dashboard needs grafana-foundation-sdk: "
                       "pip install -e '.[observe]'", 1)
    out = Path(args.out)
    if args.check:
        if dashboards.is_current(out):
            print(f"{out} is up to date")
            return 0
        state = "differs from" if out.is_file() else "is missing; expected"
        return _refuse(f"{out} {state} what vigil.tools.dashboards generates; regenerate it "
                       f"with `{dashboards.REGENERATE} --out {out}` and commit the result", 1)
    changed = dashboards.write(out)
    print(f"{'wrote' if changed else 'unchanged:'} {out}")
    return 0


# ---------------------------------------------------------------------- the parser

_PROGRESS = arg("--progress", action=argparse.BooleanOptionalAction, default=None,
                help="show a progress bar (default: on a terminal, for large builds)")
_EXAMPLES = Command("examples", "the bundled example models", sub=(
    Command("build", "build breast_cancer/1 and mlp/1", _examples_build, (
        MODELS_DIR, arg("--force", action="store_true", help="rebuild versions that exist"),
        _PROGRESS)),
))

_PROFILE = Command("profile", "reference profiles for drift monitoring", sub=(
    Command("build", "profile reference data beside a model version (profile.json + .npz)",
            _profile_build, (
                arg("--model", required=True),
                arg("--version", required=True),
                arg("--data", required=True, help="reference data: .parquet, .csv or .npz"),
                MODELS_DIR,
                arg("--outputs-from-model", action=argparse.BooleanOptionalAction,
                    default=False, help="run the model on the reference features for the "
                    "output columns (prediction drift); without it, outputs are profiled only "
                    "when the data holds them"),
                _PROGRESS)),
))

_DASHBOARDS = Command("dashboards", "the Grafana dashboard, generated as code", sub=(
    Command("build", "write the Vigil dashboard JSON (needs the observe extra)",
            _dashboards_build, (
                arg("--out", default="configs/grafana/vigil.json",
                    help="JSON file to write (default: configs/grafana/vigil.json)"),
                arg("--check", action="store_true", help="write nothing; exit 1 when the file "
                    "differs from what would be generated"),
            ), description="Generate the Vigil Grafana dashboard from vigil.tools.dashboards "
            "(grafana-foundation-sdk) and write it as JSON."),
))

_REPORT = Command("report", "fetch the monitor's HTML drift report", _report, (
    arg("--model", required=True),
    arg("--version", default=None, help="default: the newest"),
    arg("--out", required=True, help="HTML file to write"),
    arg("--monitor-url", default="http://127.0.0.1:8000",
        help="where the server runs; its bearer token comes from VIGIL_TOKEN"),
    models_cli.INSECURE_ARG,
    arg("--timeout", type=float, default=120.0, help="seconds (default: 120)"),
))

_TOP: tuple[Entry, ...] = (_EXAMPLES, models_cli.add_parser, _PROFILE, tokens_cli.COMMAND,
                           webhooks_cli.COMMAND, _DASHBOARDS, _REPORT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__)
    add_commands(parser.add_subparsers(dest="command", required=True), _TOP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI answers with a message, not a traceback
        return _refuse(str(exc), 1)


if __name__ == "__main__":
    sys.exit(main())
