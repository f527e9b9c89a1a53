"""The `vigil` command line: build the example models, inspect a model repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _examples_build(args: argparse.Namespace) -> int:
    from serving.examples import build_examples

    for version in build_examples(Path(args.models_dir), force=args.force):
        m = version.manifest
        print(f"{m.name}/{m.version}  sha256={m.sha256[:12]}  {version.path}")
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from serving.repository import scan

    for name, versions in scan(Path(args.models_dir)).items():
        for version in versions:
            m = version.manifest
            sig = ", ".join(f"{s.name}:{s.datatype}{list(s.shape)}" for s in m.inputs)
            print(f"{name}/{m.version}  inputs: {sig}  sha256={m.sha256[:12]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    examples = commands.add_parser("examples", help="the bundled example models")
    examples_cmd = examples.add_subparsers(dest="examples_command", required=True)
    build = examples_cmd.add_parser("build", help="build breast_cancer/1 and mlp/1")
    build.add_argument("--models-dir", default="models", help="model repository (default: models)")
    build.add_argument("--force", action="store_true", help="rebuild versions that exist")
    build.set_defaults(func=_examples_build)

    models = commands.add_parser("models", help="the model repository")
    models_cmd = models.add_subparsers(dest="models_command", required=True)
    listing = models_cmd.add_parser("list", help="list models, versions and signatures")
    listing.add_argument("--models-dir", default="models")
    listing.set_defaults(func=_models_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # a CLI answers with a message, not a traceback
        print(f"vigil: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
