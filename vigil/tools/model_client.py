"""The two doors of `vigil models`: a running server's admin API over HTTP, and, when no server
answers, the model repository itself. Both answer in the server's JSON shapes."""

from __future__ import annotations

import getpass
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil.core import audit, model_ops, repository
from vigil.core.aliases import AliasError, read_aliases

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientSettings(BaseSettings):
    """What the CLI needs from the environment to call a running server."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the server (VIGIL_TOKEN)."
    )


def client_auth() -> dict[str, str]:
    """The Authorization header for VIGIL_TOKEN; none when it is unset."""
    token = ClientSettings().token
    return {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}


def local_actor() -> str:
    """Who changes the repository without a server: `local:<os user>`."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = f"uid{os.getuid()}"
    return f"local:{user}"


class NoServer(ConnectionError):
    """Nothing listens at the URL (connection refused): the one case that falls back."""

    def __init__(self, url: str) -> None:
        super().__init__(f"no server at {url}")
        self.url = url


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

    def history(self, model: str) -> list[dict[str, Any]]: ...

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False,
    ) -> dict[str, Any]: ...


# action -> (route under /v2/repository/models/{m}/, the body's fields besides reason)
_ROUTES: dict[str, tuple[str, tuple[str, ...]]] = {
    "promote": ("promote", ("version",)),
    "rollback": ("rollback", ()),
    "canary": ("canary", ("version", "weight", "sticky_header")),
    "canary_cleared": ("canary", ("version",)),
    "shadow": ("shadow", ("version",)),
    "shadow_cleared": ("shadow", ("version",)),
    "retire": ("retire", ("version",)),
    "load": ("load", ()),
    "unload": ("unload", ()),
}
_NO_REASON = ("load", "unload")  # their body is {}


class ServerModels:
    """The admin API of the server at `url` (scope `admin`; a version's metadata needs
    `infer`). Connection refused raises NoServer; any answer but 2xx raises ModelsError."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        self.url = url.rstrip("/")
        self.headers = headers
        self.timeout = timeout

    def index(self) -> list[dict[str, Any]]:
        return list(self._call("POST", "/v2/repository/index", {}))

    def aliases(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v2/repository/models/{_q(model)}/aliases"))

    def version(self, model: str, version: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/v2/models/{_q(model)}/versions/{_q(version)}"))

    def history(self, model: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v2/repository/models/{_q(model)}/history")["entries"])

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False,
    ) -> dict[str, Any]:
        route, fields = _ROUTES[action]
        values = {"version": version, "weight": weight, "sticky_header": sticky_header}
        body: dict[str, Any] = {f: values[f] for f in fields}
        if action not in _NO_REASON:
            body["reason"] = reason
        if force:  # sent only when asked: a promotion past the model gate
            body["force"] = True
        return dict(self._call("POST", f"/v2/repository/models/{_q(model)}/{route}", body))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310 # the user's URL
                raw = response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            raise ModelsError(
                f"{method} {url} answered {status}: {_error_text(exc.read())}", status,
                "infer" if path.startswith("/v2/models/") else "admin",
            ) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                raise NoServer(self.url) from None
            if isinstance(exc.reason, TimeoutError):
                raise ModelsError(f"{method} {url}: no answer within {self.timeout:g} s "
                                  "(--timeout)", 504) from None
            raise ModelsError(f"{method} {url}: {exc.reason}", 503) from None
        except TimeoutError:
            raise ModelsError(f"{method} {url}: no answer within {self.timeout:g} s "
                              "(--timeout)", 504) from None
        except OSError as exc:  # the connection dropped mid-answer
            raise ModelsError(f"{method} {url}: {exc}", 503) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ModelsError(f"{method} {url} answered with something other than JSON: "
                              f"{raw[:200]!r}", 502) from None


def _q(label: str) -> str:
    return urllib.parse.quote(label, safe="")


def _error_text(raw: bytes) -> str:
    text = raw.decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(no body)"


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
        say PUBLISHED (a server would load it), RETIRED or UNLOADED, never READY."""
        try:
            found = repository.scan(self.root)
            rows = []
            for name, versions in found.items():
                state = read_aliases(self.root, name)
                published = [v.manifest.version for v in versions]
                for label in published:
                    status, reason = "PUBLISHED", ""
                    if label in state.retired:
                        status, reason = "RETIRED", "retired"
                    elif state.unloaded:
                        status, reason = "UNLOADED", "model unloaded"
                    rows.append({"name": name, "version": label, "state": status,
                                 "reason": reason, "aliases": state.roles(label, published)})
        except (repository.RepositoryError, AliasError) as exc:
            raise ModelsError(str(exc), getattr(exc, "status", 500)) from None
        return rows

    def aliases(self, model: str) -> dict[str, Any]:
        published = self._published(model)
        try:
            state = read_aliases(self.root, model)
        except AliasError as exc:
            raise ModelsError(str(exc), exc.status) from None
        return {"model": model, "aliases": state.to_dict(), "published": published,
                "serving": state.serving(published), "failed": {}}

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
        return {
            "name": model,
            "versions": [version],
            "platform": manifest.platform,
            "inputs": [s.to_metadata() for s in manifest.inputs],
            "outputs": [s.to_metadata() for s in manifest.outputs],
            "parameters": {
                "sha256": manifest.sha256,
                "created": manifest.created,
                "max_batch_rows": manifest.max_batch_rows,
                "aliases": roles,
                "lineage": manifest.lineage,
                "metadata": manifest.metadata,
            },
        }

    def history(self, model: str) -> list[dict[str, Any]]:
        found = list(audit.entries(self.root, model))
        if not found:
            self._published(model)  # an unknown model is a 404, not an empty history
        return found

    def change(
        self, model: str, action: str, *, version: str | None = None,
        weight: float | None = None, sticky_header: str | None = None, reason: str = "",
        force: bool = False,
    ) -> dict[str, Any]:
        try:
            done = model_ops.apply(
                self.root, model, action, actor=self.actor, reason=reason, version=version,
                weight=weight, sticky_header=sticky_header, force=force,
            )
        except AliasError as exc:
            raise ModelsError(str(exc), exc.status) from None
        # Change.to_dict() without the server's converged/replicas/behind: no replica was asked.
        return done.to_dict()
