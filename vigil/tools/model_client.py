"""The two doors of `vigil models`: a running server's admin API over HTTP, and, when no server
answers, the model repository itself. Both answer in the server's JSON shapes."""

from __future__ import annotations

import getpass
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vigil.core import audit, model_ops, repository, repository_health, rollout
from vigil.core.actions import AliasAction, VersionUse
from vigil.core.aliases import AliasError, read_aliases
from vigil.core.rollout import PlanRefused
from vigil.tools.server_client import ServerClient, ServerError

DEFAULT_URL = "http://127.0.0.1:8000"


def local_actor() -> str:
    """Who changes the repository without a server: `local:<os user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"local:{user}"


class ModelsError(Exception):
    """A refusal from the server (its {"error"} message) or from the repository, with the HTTP
    status it has or would have."""

    def __init__(self, message: str, status: int, scope: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.scope = scope  # the token scope the refused route needs (401/403 from a server)


class Models(Protocol):
    """What `vigil models` asks, whichever door answers."""

    def index(self) -> list[dict[str, Any]]: ...

    def aliases(self, model: str) -> dict[str, Any]: ...

    def version(self, model: str, version: str) -> dict[str, Any]: ...

    def history(self, model: str, limit: int) -> tuple[list[dict[str, Any]], bool]: ...

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False, plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Endpoint:
    """A route of the server's API: method, path template and the token scope it needs."""

    method: str
    path: str
    scope: str

    def at(self, **labels: str) -> str:
        return self.path.format(**{k: urllib.parse.quote(v, safe="") for k, v in labels.items()})


INDEX = Endpoint("POST", "/v2/repository/index", "admin")
ALIASES = Endpoint("GET", "/v2/repository/models/{model}/aliases", "admin")
HISTORY = Endpoint("GET", "/v2/repository/models/{model}/history?limit={limit}", "admin")
# The version's whole record (lineage, metadata): the admin route; /v2/models/... (infer) shows a
# client only the signature and a few parameters.
VERSION = Endpoint("GET", "/v2/repository/models/{model}/versions/{version}", "admin")
CHANGE = Endpoint("POST", "/v2/repository/models/{model}/{route}", "admin")


def change_body(action: AliasAction, *, version: str | None, weight: float | None,
                sticky_header: str | None, reason: str, force: bool,
                plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """The admin route's body for `action`, from what the action takes (vigil.core.actions)."""
    spec = action.spec
    body: dict[str, Any] = {}
    if spec.version is not VersionUse.NONE:
        body["version"] = version
    if spec.weight:
        body.update(weight=weight, sticky_header=sticky_header)
    if spec.plan:
        body["plan"] = plan or {}
    if spec.reason:
        body["reason"] = reason
    if force:  # sent only when asked: live traffic for a version past the model gate
        body["force"] = True
    return body


class ServerModels:
    """The admin API of the server at `url` (each Endpoint names its scope). Connection refused
    raises NoServer; any answer but 2xx raises ModelsError. A token that would go in clear to
    another host raises RefusedURL unless `insecure`."""

    def __init__(self, url: str, timeout: float, *, insecure: bool = False) -> None:
        self.client = ServerClient(url, timeout, insecure=insecure)
        self.url = self.client.url

    def index(self) -> list[dict[str, Any]]:
        return list(self._call(INDEX, {}))

    def aliases(self, model: str) -> dict[str, Any]:
        return dict(self._call(ALIASES, model=model))

    def version(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call(VERSION, model=model, version=version))

    def history(self, model: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
        doc = self._call(HISTORY, model=model, limit=str(limit))
        return list(doc["entries"]), bool(doc.get("more"))

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False, plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        chosen = AliasAction(action)
        if chosen.spec.route is None:
            raise ModelsError(f"{action} is the monitor's own change, not an admin route", 400)
        body = change_body(chosen, version=version, weight=weight, sticky_header=sticky_header,
                           reason=reason, force=force, plan=plan)
        return dict(self._call(CHANGE, body, model=model, route=chosen.spec.route))

    def _call(self, endpoint: Endpoint, body: dict[str, Any] | None = None, **labels: str) -> Any:
        try:
            return self.client.json(endpoint.method, endpoint.at(**labels), body)
        except ServerError as exc:
            raise ModelsError(str(exc), exc.status, endpoint.scope) from None


class LocalModels:
    """The repository at `root`, read and changed in place (vigil.core.model_ops), as `actor`."""

    def __init__(self, root: Path, actor: str) -> None:
        self.root = Path(root)
        self.actor = actor

    def _published(self, model: str) -> list[str]:
        try:
            return model_ops.published_versions(self.root, model)
        except AliasError as exc:
            raise ModelsError(str(exc), exc.status) from None

    def index(self) -> list[dict[str, Any]]:
        """Every version with what a server would do with it: no server runs, so the states
        say PUBLISHED (a server would load it), RETIRED or UNLOADED, never READY; `faults` what
        a server would find wrong (vigil.core.repository_health), and a model whose entry
        cannot be read a row of its own (version "")."""
        if not self.root.is_dir():
            raise ModelsError(f"model repository {self.root} does not exist", 404)
        rows = []
        for name in sorted(p.name for p in self.root.iterdir()
                           if p.is_dir() and repository.valid_name(p.name)):
            faults = repository_health.disk_faults(self.root, name)
            wide = [f.describe() for f in faults if f.kind in repository_health.MODEL_WIDE]
            try:
                versions = repository.scan(self.root, [name])[name]
                state = read_aliases(self.root, name)
            except repository.ModelNotFound:
                continue
            except (repository.RepositoryError, AliasError):
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE",
                             "reason": "; ".join(wide), "aliases": [], "faults": wide})
                continue
            published = [v.manifest.version for v in versions]
            for label in published:
                status, reason = "PUBLISHED", ""
                found = [f.describe() for f in faults if f.subject == label]
                if label in state.retired:
                    status, reason = "RETIRED", "retired"
                elif state.unloaded:
                    status, reason = "UNLOADED", "model unloaded"
                elif found:
                    status, reason = "UNAVAILABLE", "; ".join(found)
                rows.append({"name": name, "version": label, "state": status,
                             "reason": reason, "aliases": state.roles(label, published),
                             "faults": found})
        return rows

    def aliases(self, model: str) -> dict[str, Any]:
        published = self._published(model)
        try:
            state = read_aliases(self.root, model)
        except AliasError as exc:
            raise ModelsError(str(exc), exc.status) from None
        return {"model": model, "aliases": state.to_dict(), "published": published,
                "serving": state.serving(published), "failed": {},
                "broken": repository_health.broken_aliases(state, published),
                "faults": _fault_docs(self.root, model)}

    def version(self, model: str, version: str) -> dict[str, Any]:
        published = self._published(model)
        if version not in published:
            raise ModelsError(
                f"model '{model}' has no version '{version}'; published: {published}", 404
            )
        try:
            manifest = repository.read_manifest(self.root / model / version)
            roles = read_aliases(self.root, model).roles(version, published)
        except (repository.RepositoryError, AliasError) as exc:
            raise ModelsError(str(exc), getattr(exc, "status", 500)) from None
        return repository.version_metadata(manifest, [version], roles, full=True)

    def history(self, model: str, limit: int) -> tuple[list[dict[str, Any]], bool]:
        found, more = audit.tail(self.root, model, limit)
        if not found:
            self._published(model)  # an unknown model is a 404, not an empty history
        return found, more

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False, plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        try:
            chosen = AliasAction(action)
            if chosen.spec.route is None:
                raise AliasError(f"{action} is the monitor's own change", 400)
            done = model_ops.apply(
                self.root, model, action, actor=self.actor, reason=reason, version=version,
                weight=weight, sticky_header=sticky_header, force=force,
                plan=rollout.plan_from_dict(plan or {}) if chosen.spec.plan else None,
            )
        except PlanRefused as exc:
            raise ModelsError(str(exc), exc.status) from None
        except (AliasError, model_ops.ChangeFailed) as exc:
            raise ModelsError(str(exc), exc.status) from None
        # Change.to_dict() without the server's converged/replicas/behind: no replica was asked.
        return {**done.to_dict(), "faults": _fault_docs(self.root, model)}


def _fault_docs(root: Path, model: str) -> list[dict[str, Any]]:
    """The model's faults as its files show them, in the server's shape."""
    return [f.to_dict() | {"description": f.describe()}
            for f in repository_health.disk_faults(root, model)]
