"""Schemathesis hooks for load_tests.fuzz_api (loaded through SCHEMATHESIS_HOOKS): three
generated model names in four become real models, so that bad bodies reach the codecs, and
versions become "1" as often; alias changes keep their generated names, so that a fuzz run never moves
the aliases of a model a test serves (an unknown model is 404 before any change)."""

from __future__ import annotations

import os
import itertools
from typing import Any

import schemathesis

MODELS = [m for m in os.environ.get("VIGIL_FUZZ_MODELS", "").split(",") if m]
# Alias changes on real models too: only for a server of a private repository (in process).
CHANGES = os.environ.get("VIGIL_FUZZ_CHANGES") == "1"


_DRAWN = itertools.count()


def _pick(value: Any, choices: list[str]) -> Any:
    """A real name for three generated values in four, in turn (the coverage phase repeats one
    name for many bodies)."""
    n = next(_DRAWN)
    if not choices or n % 4 == 3:
        return value
    return choices[n % len(choices)]


@schemathesis.hook
def map_path_parameters(ctx: schemathesis.HookContext, path_parameters: dict[str, Any]
                        ) -> dict[str, Any]:
    operation = ctx.operation
    if operation is None or path_parameters is None:
        return path_parameters
    if (not CHANGES and operation.method.upper() == "POST"
            and operation.path.endswith("/{action}")):
        return path_parameters  # alias changes: never a real model
    out = dict(path_parameters)
    if "model" in out:
        out["model"] = _pick(out["model"], MODELS)
    if "version" in out:
        out["version"] = _pick(out["version"], ["1"])
    return out


@schemathesis.hook
def map_case(ctx: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """A JSON inference body mostly without Inference-Header-Content-Length (with it, the
    server reads the body as the binary extension's: a JSON header then tensor bytes), so that
    generated documents reach the codec rather than the split."""
    if (case.media_type == "application/json" and case.headers
            and next(_DRAWN) % 4 != 3):
        kept = {k: v for k, v in case.headers.items()
                if k.lower() != "inference-header-content-length"}
        if len(kept) != len(case.headers):
            case.headers = kept
    return case
