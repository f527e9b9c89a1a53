"""The `vigil` commands' one HTTP client (httpx): the bearer token in VIGIL_TOKEN never goes in
clear to another host, and every failure becomes a status and a message that says what to do."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil.core.hosts import is_loopback
from vigil.tools.console import error_text, warn

INSECURE_FLAG = "--insecure"


class ClientSettings(BaseSettings):
    """What the CLI needs from the environment to call a running server."""

    model_config = SettingsConfigDict(env_prefix="VIGIL_", extra="ignore")

    token: SecretStr | None = Field(
        default=None, description="Bearer token sent to the server (VIGIL_TOKEN)."
    )


def client_token() -> str | None:
    """VIGIL_TOKEN, or None when it is unset or empty."""
    token = ClientSettings().token
    return token.get_secret_value() if token and token.get_secret_value() else None


class RefusedURL(ValueError):
    """A server URL the client will not use: not http(s), or plain http to another host while
    a token would go with the request (and --insecure was not given)."""


class NoServer(ConnectionError):
    """Nothing listens at the URL (connection refused): the one case a caller may fall back."""

    def __init__(self, url: str) -> None:
        super().__init__(f"no server at {url}")
        self.url = url


class ServerError(Exception):
    """The server refused (its {"error"} message) or gave no usable answer, with the HTTP status
    it answered or stands for (502 not JSON, 503 the connection failed, 504 no answer in time)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str, *, sends_token: bool, insecure: bool) -> str | None:
    """Whether the client may call `url`: raises RefusedURL when it may not; returns a warning
    to show when only --insecure lets a token go in clear."""
    import httpx  # the parser the requests use: the host checked is the host called

    try:
        parsed = httpx.URL(url)
        host = parsed.host
    except httpx.InvalidURL as exc:
        raise RefusedURL(f"{url}: not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise RefusedURL(f"{url}: expected an http:// or https:// URL with a host")
    if not sends_token or parsed.scheme == "https" or is_loopback(host):
        return None
    clear = (f"the bearer token in VIGIL_TOKEN would go in clear (plain http) to {host}, "
             "which is not this host")
    if not insecure:
        raise RefusedURL(f"{clear}: use an https:// URL, or give {INSECURE_FLAG} to send it "
                         "anyway on a network you trust")
    return f"{clear} ({INSECURE_FLAG}): anyone on the path can read and reuse it"


def url_refusal(url: str, insecure: bool) -> str | None:
    """For a command about to call `url`: why it must not (a bad command line), or None, after
    warning on stderr when only --insecure lets VIGIL_TOKEN go in clear."""
    try:
        warning = check_url(url, sends_token=client_token() is not None, insecure=insecure)
    except RefusedURL as exc:
        return str(exc)
    if warning:
        warn(warning)
    return None


class ServerClient:
    """Requests to the server at `url`, with VIGIL_TOKEN as a bearer token when set. Refuses
    (RefusedURL) at construction a URL that check_url refuses."""

    def __init__(self, url: str, timeout: float, *, insecure: bool = False) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        token = client_token()
        check_url(self.url, sends_token=token is not None, insecure=insecure)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer to `method path` (with `body` as JSON); a 2xx answer that is not
        JSON is a 502 ServerError."""
        headers = {"Accept": "application/json"}
        raw = self.send(method, path, body=body, headers=headers)
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"{method} {self.url}{path} answered with something other than "
                              f"JSON: {raw[:200]!r}", 502) from None

    def send(self, method: str, path: str, *, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
        """The body of a 2xx answer (decompressed when it came gzip-encoded). Raises NoServer
        when the connection is refused, else ServerError."""
        import httpx  # here: the commands that call no server start without it (~0.1 s)

        where = f"{method} {self.url}{path}"
        try:
            with httpx.Client(timeout=self.timeout, follow_redirects=False) as client:
                answer = client.request(method, self.url + path, json=body,
                                        headers={**self.headers, **(headers or {})})
        except httpx.TimeoutException:
            raise ServerError(f"{where}: no answer within {self.timeout:g} s (--timeout)",
                              504) from None
        except httpx.TransportError as exc:
            if _refused(exc):
                raise NoServer(self.url) from None
            raise ServerError(f"{where}: {exc or type(exc).__name__}", 503) from None
        if answer.is_success:
            return answer.content
        detail = error_text(answer.content)
        if answer.is_redirect:  # never followed: the token would go where the user did not say
            detail = f"moved to {answer.headers.get('location')}; use that URL"
        raise ServerError(f"{where} answered {answer.status_code}: {detail}", answer.status_code)


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused (ECONNREFUSED somewhere in the exception's causes)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
