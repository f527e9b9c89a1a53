"""What both Serve applications and the command line read alike: where the model repository is,
which models, how callers are let in, and the files kept beside the repository."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

TOKENS_FILE_NAME = "tokens.yaml"
MAX_MODELS = 10_000  # most model names an application may be limited to


def beside_repository(configured: str | Path | None, model_repository: str | Path,
                      default_name: str) -> Path:
    """The configured file, else `default_name` beside the model repository folder (not inside
    it: it is no model). The tokens file and the webhook outbox live there."""
    if configured:
        return Path(configured).expanduser()
    return Path(model_repository).expanduser().resolve().parent / default_name


class AppSettings(BaseSettings):
    """The fields every Vigil process shares. Environment variables prefixed VIGIL_ fill unset
    fields (nested with '__'); explicit values (serve.yaml `args`) win. Each application's own
    settings extend this class; the command line reads it alone, so `vigil tokens` finds the
    same tokens file as the servers without importing either of them."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model_repository: Path = Field(
        default=Path("models"),
        description="Folder laid out as <name>/<version>/model.onnx + model.yaml. Relative paths "
        "resolve against the working directory of the process that builds the application.",
    )
    models: list[str] | None = Field(
        default=None, max_length=MAX_MODELS,
        description="Names of the models to serve or monitor; unset: every model found.",
    )
    auth: Literal["tokens", "none"] = Field(
        default="tokens",
        description="'tokens': routes other than health need a bearer token with the route's "
        "scope from tokens_file; without that file the application is open to its own host only, "
        "and refuses to start unless it is sure that it listens on loopback. 'none': everything "
        "open to anyone (logged as a warning).",
    )
    tokens_file: Path | None = Field(
        default=None,
        description="Tokens file (`vigil tokens`); unset: tokens.yaml beside model_repository. "
        "Re-read when it changes, no restart needed. Environment: VIGIL_TOKENS_FILE.",
    )

    def tokens_path(self) -> Path:
        """The tokens file in use."""
        return beside_repository(self.tokens_file, self.model_repository, TOKENS_FILE_NAME)

    def resolved(self) -> Self:
        """These settings with model_repository made absolute against the working directory (in
        the process that builds an application, before its replicas start elsewhere)."""
        repo = Path(self.model_repository).expanduser()
        if not repo.is_absolute():
            repo = (Path.cwd() / repo).resolve()
        return self.model_copy(update={"model_repository": repo})
