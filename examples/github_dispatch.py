"""Forwarding the receiver's events to GitHub's repository_dispatch API, where
.github/workflows/retrain.yml takes them (retrain, gate, rollout)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx


class GitHubDispatch:
    """Forwards events to GitHub's repository_dispatch API (POST /repos/{repo}/dispatches)."""

    def __init__(self, repo: str, token: str, api_url: str = "https://api.github.com",
                 timeout_s: float = 10.0) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo) or any(
            part.strip(".") == "" for part in repo.split("/")
        ):
            raise ValueError(f"--forward-to-github {repo!r}: expected OWNER/REPO")
        if not token:
            raise ValueError("forwarding to GitHub needs a token in $GITHUB_TOKEN")
        self.url = f"{api_url.rstrip('/')}/repos/{repo}/dispatches"
        self.token = token
        self.timeout_s = timeout_s

    def payload(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """GitHub takes at most 10 top-level client_payload keys: the event's essentials."""
        data = event["data"] if isinstance(event.get("data"), dict) else {}
        return {
            "event_type": event["type"],
            "client_payload": {
                "id": event["id"], "type": event["type"], "subject": event.get("subject"),
                "time": event.get("time"), "model": data.get("model"),
                "version": data.get("version"), "source": event.get("source"),
            },
        }

    def send(self, event: Mapping[str, Any]) -> str | None:
        """None when GitHub accepted the dispatch, else why not."""
        headers = {"Authorization": f"Bearer {self.token}",
                   "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28"}
        try:
            answer = httpx.post(self.url, json=self.payload(event), headers=headers,
                                timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if answer.status_code == 204:
            return None
        return f"GitHub answered {answer.status_code}: {answer.text[:200]}"
