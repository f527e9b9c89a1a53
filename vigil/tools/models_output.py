"""How `vigil models` shows answers: tensor signatures, mappings, refusals with the token scope
they need, one line per change, whether every replica applied it (exit 3 when not), and where
the repository's files differ from what is served (exit 4)."""

from __future__ import annotations

import json
from typing import Any

from vigil.tools.console import refuse, warn
from vigil.tools.model_client import ModelsError
from vigil.tools.server_client import client_token

NOT_CONVERGED = 3  # exit code: the server saved the change, not every replica applied it yet
# Exit code: the repository's files differ from what is served (a version served from memory,
# a file that no longer matches, an entry that cannot be read, an alias naming no version).
REPOSITORY_FAULT = 4


def signature(specs: Any) -> str:
    """`name:DATATYPE[shape]` for each tensor (TensorSpecs or their V2 metadata dicts)."""
    parts = []
    for s in specs:
        doc = s if isinstance(s, dict) else s.to_metadata()
        parts.append(f"{doc['name']}:{doc['datatype']}{list(doc['shape'])}")
    return ", ".join(parts) or "-"


def print_mapping(title: str, doc: dict[str, Any]) -> None:
    print(f"  {title}:" + ("" if doc else " -"))
    for key, value in doc.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        print(f"    {key}: {text}")


def explained(exc: ModelsError) -> str:
    """The refusal, and for 401/403 which token the route needs."""
    message = str(exc)
    if exc.scope and exc.status == 401:
        has = ("the token in VIGIL_TOKEN was not accepted" if client_token()
               else "VIGIL_TOKEN is not set")
        message += (f"\n{has}: this command needs a token with the '{exc.scope}' scope "
                    f"(`vigil tokens create NAME --scopes {exc.scope}` on the server's host)")
    elif exc.scope and exc.status == 403:
        message += (f"\nthis command needs a token with the '{exc.scope}' scope in VIGIL_TOKEN "
                    f"(`vigil tokens create NAME --scopes {exc.scope}` on the server's host)")
    return message


def convergence(answer: dict[str, Any], quiet: bool) -> int:
    """Exit 3, naming the replicas behind, when the server says not all of them applied it."""
    if "converged" not in answer:  # changed in the repository: no replica was asked
        return 0
    replicas = answer.get("replicas") or {}
    took = float(answer.get("applied_s") or 0)
    if answer["converged"]:
        if not quiet:
            print(f"  applied by all {len(replicas)} replica(s) in {took:.2f} s")
        return 0
    behind = answer.get("behind") or []
    return refuse(f"{answer.get('model')}: the change is saved (generation "
                  f"{answer.get('generation')}), but {len(behind)} of {len(replicas)} "
                  f"replica(s) had not applied it after {took:.2f} s: "
                  f"{', '.join(map(str, behind))}; they serve as before until they catch up",
                  NOT_CONVERGED)


def describe(answer: dict[str, Any]) -> str:
    """One line saying what a change did."""
    model, action = answer.get("model"), answer.get("action")
    old, new = answer.get("from_version"), answer.get("to_version")
    aliases = answer.get("aliases") or {}
    suffix = f" (generation {answer.get('generation')})"
    if not answer.get("changed", True):
        return f"{model}: {action}: nothing to change{suffix}"
    if action in ("promote", "rollback"):
        return f"{model}: production {old or '-'} -> {new}{suffix}"
    if action == "canary":
        canary = aliases.get("canary") or {}
        sticky = (f", sticky on header {canary['sticky_header']}" if canary.get("sticky_header")
                  else "")
        return (f"{model}: canary {new} takes {canary.get('weight', 0):g} of unversioned "
                f"requests{sticky} (was {old or '-'}){suffix}")
    if action == "canary_cleared":
        return f"{model}: canary {old} cleared; production takes all traffic{suffix}"
    if action == "shadow":
        return f"{model}: shadow {new} gets a copy of unversioned requests (was {old or '-'}){suffix}"
    if action == "shadow_cleared":
        return f"{model}: shadow {old} cleared{suffix}"
    if action == "retire":
        return f"{model}/{old}: retired, no longer loaded (its files stay){suffix}"
    if action == "unload":
        return f"{model}: unloaded, no version is served{suffix}"
    if str(action).startswith("rollout"):
        return _rollout_change(str(model), str(action), aliases, old, suffix)
    return f"{model}: loaded{suffix}"


def _rollout_change(model: str, action: str, aliases: dict[str, Any], old: str | None,
                    suffix: str) -> str:
    state = aliases.get("rollout")
    if state is None:  # it ended (aborted, rolled back, promoted)
        return f"{model}: rollout of {old or '-'} ended ({action}); production is " \
               f"{aliases.get('production') or '-'}{suffix}"
    plan = state["plan"]
    weight = plan["steps"][state["step"]]
    verb = {"rollout": "started", "rollout_paused": "paused",
            "rollout_resumed": "resumed"}.get(action, action)
    return (f"{model}: rollout of {state['version']} {verb}: step {state['step'] + 1} of "
            f"{len(plan['steps'])} at {weight * 100:g}%; `vigil models rollout status {model}` "
            f"follows it{suffix}")


def repository_faults(descriptions: list[str]) -> int:
    """Exit 4, saying each fault and what it means, when the files differ from what is served;
    0 when they do not."""
    if not descriptions:
        return 0
    for text in descriptions:
        warn(f"repository fault: {text}")
    return refuse(f"the repository's files differ from what is served ({len(descriptions)} "
                  "fault(s) above): what serves now is not what a restart would serve; "
                  "`vigil models list` shows them, docs/operations.md says how to fix each",
                  REPOSITORY_FAULT)


def fault_texts(faults: Any) -> list[str]:
    """The descriptions of an answer's `faults` (dicts from the server, or strings)."""
    return [str(f.get("description") or f.get("detail")) if isinstance(f, dict) else str(f)
            for f in faults or []]
