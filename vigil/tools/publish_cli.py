"""`vigil models publish`: an ONNX file becomes a new immutable version in the repository
(written directly); then the server at --url, if one runs, is asked to load it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vigil.tools.argtable import arg, positive_int
from vigil.tools.console import print_json, refuse
from vigil.tools.model_client import ModelsError, ServerModels, local_actor
from vigil.tools.models_output import convergence, explained, print_mapping, signature
from vigil.tools.server_client import NoServer

DESCRIPTION = (
    "Publish an ONNX file as a new immutable version of a model in the repository (written "
    "directly), with its signature, lineage and optional reference profile; then ask the server "
    "at --url, if one runs, to load it. Publishing never moves production traffic: promote or "
    "canary the version for that."
)

ARGS = (
    arg("file", metavar="FILE.onnx"),
    arg("--name", required=True, help="model name"),
    arg("--version", default=None,
        help="version label (default: one above the highest numbered version)"),
    arg("--reference", default=None, metavar="DATA",
        help="reference data (.parquet, .csv, .npz) for drift monitoring: its profile is "
        "written into the version"),
    arg("--outputs-from-model", action=argparse.BooleanOptionalAction, default=False,
        help="profile the model's outputs on the reference features too (prediction drift)"),
    arg("--max-batch-rows", type=int, default=None, metavar="N",
        help="declare batching: rows of several requests may share one run, up to N (needs a "
        "dynamic first dimension on every input and output)"),
    arg("--meta", action="append", default=[], metavar="KEY=VALUE",
        help="free-form metadata (repeatable; VALUE as JSON when it parses)"),
    arg("--training-data", default=None, metavar="FILE",
        help="recorded in the lineage with its sha256 and row count"),
    arg("--code-commit", default=None, metavar="SHA",
        help="default: `git rev-parse HEAD` here, when this is a git work tree"),
    arg("--params", default=None, metavar="JSON",
        help="training parameters, a JSON object (or @FILE)"),
    arg("--metrics", default=None, metavar="JSON",
        help="evaluation figures, a JSON object (or @FILE)"),
    arg("--max-model-bytes", type=positive_int, default=2 * 1024**3, metavar="N",
        help="refuse larger files (default: 2 GiB)"),
    arg("--actor", default=None,
        help="who publishes, for the lineage and the audit log (default: local:<os user>)"),
    arg("--inherit-metadata", action=argparse.BooleanOptionalAction, default=True,
        help="take production's feature names, classes, task and held-out set "
        "(metadata.evaluation) for a new version of a served model (default: on; --meta "
        "overrides a key)"),
    arg("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="show a progress bar while profiling (default: on a terminal, for large data)"),
)


def publish(args: argparse.Namespace) -> int:
    from vigil.tools.publishing import PublishError, current_commit, publish_file

    try:
        metadata = _pairs(args.meta)
        params = _json_object("--params", args.params)
        metrics = _json_object("--metrics", args.metrics)
        done = publish_file(
            Path(args.repository), Path(args.file), args.name, actor=args.actor or local_actor(),
            version=args.version,
            reference=None if args.reference is None else Path(args.reference),
            outputs_from_model=args.outputs_from_model, max_batch_rows=args.max_batch_rows,
            metadata=metadata,
            training_data=None if args.training_data is None else Path(args.training_data),
            code_commit=args.code_commit or current_commit(Path.cwd()),
            params=params, metrics=metrics, max_model_bytes=args.max_model_bytes,
            progress=args.progress, inherit_metadata=args.inherit_metadata,
        )
    except PublishError as exc:
        return refuse(str(exc))
    m = done.version.manifest
    if not args.json:
        batching = (f"batches up to {m.max_batch_rows} rows" if m.max_batch_rows
                    else "never batched")
        profile = (f"reference profile of {done.profile_rows} rows" if done.profile_rows
                   is not None else "no reference profile (the monitor tracks latency and errors "
                   "only)")
        print(f"published {m.name}/{m.version} -> {done.version.path}")
        print(f"  sha256 {m.sha256}; {batching}; {profile}")
        print(f"  inputs  {signature(m.inputs)}")
        print(f"  outputs {signature(m.outputs)}")
        print_mapping("lineage", m.lineage)
    loaded, code = _load_published(args, m.name)
    if args.json:
        print_json({
            "name": m.name, "version": m.version, "path": str(done.version.path),
            "sha256": m.sha256, "max_batch_rows": m.max_batch_rows,
            "inputs": [s.to_metadata() for s in m.inputs],
            "outputs": [s.to_metadata() for s in m.outputs],
            "metadata": m.metadata, "lineage": m.lineage, "profile_rows": done.profile_rows,
            "audit": done.entry, "load": loaded,
        })
    return code


def _load_published(args: argparse.Namespace, model: str) -> tuple[dict[str, Any] | None, int]:
    """Ask the server at --url to load the model's versions again, so that its replicas have
    the new one; never a model an operator unloaded. Returns its answer and the exit code."""
    from vigil.core.aliases import read_aliases

    quiet = args.json
    # The repository was just written here: its aliases say whether the model is unloaded (the
    # server's own view of a model it has not read yet is a 404).
    if read_aliases(Path(args.repository), model).unloaded:
        if not quiet:
            print(f"{model} is unloaded, so it stays so; `vigil models load {model}` serves it "
                  "again")
        return None, 0
    try:
        server = ServerModels(args.url, args.timeout, insecure=args.insecure)
        answer = server.change(model, "load")
    except NoServer:
        if not quiet:
            print(f"no server at {args.url}: the repository {args.repository} was written; a "
                  "server reads it when it starts")
        return None, 0
    except ModelsError as exc:
        refuse(f"published, but the server did not load it: {explained(exc)}", 1)
        return None, 1
    if not quiet:
        print(f"{args.url}: {model} reloaded")
    return answer, convergence(answer, quiet)


def _pairs(items: list[str]) -> dict[str, Any]:
    """--meta KEY=VALUE: VALUE as JSON when it is JSON (numbers, lists), else as text."""
    from vigil.tools.publishing import PublishError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PublishError(f"--meta {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def _json_object(flag: str, text: str | None) -> dict[str, Any] | None:
    """A JSON object given inline, or read from a file as @PATH."""
    from vigil.tools.publishing import PublishError

    if text is None:
        return None
    source = text
    if text.startswith("@"):
        try:
            source = Path(text[1:]).read_text()
        except OSError as exc:
            raise PublishError(f"{flag} {text}: {exc}") from None
    try:
        doc = json.loads(source)
    except ValueError as exc:
        raise PublishError(f"{flag}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise PublishError(f"{flag}: expected a JSON object, got {type(doc).__name__}")
    return doc
