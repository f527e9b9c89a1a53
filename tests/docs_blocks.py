"""The code blocks of a documentation page as the site shows them (README snippets included), and
the answers their comments promise: what the quick-start test runs and checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SNIPPET = re.compile(r'^--8<-- "([^":]+):([\w-]+)"\s*$', re.M)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language and its text."""

    lang: str
    code: str

    def expected(self) -> list[str]:
        """What the block's output must contain: the start of each `# {...` answer line (up to
        its '...'), and the trailing `# ...` comment of each print() line."""
        found = []
        for line in self.code.splitlines():
            stripped = line.strip()
            if stripped.startswith("# {"):
                found.append(stripped[2:].split("...")[0])
            elif stripped.startswith("print(") and "#" in stripped:
                found.append(stripped.rsplit("#", 1)[1].strip())
        return found

    def runs_make(self) -> bool:
        """True for a block of `make` commands (the test plays those itself)."""
        return any(re.match(r"make\s", line.strip()) for line in self.code.splitlines())


def snippet(path: str, section: str) -> str:
    """The text between `--8<-- [start:section]` and `[end:section]` in a file of the checkout,
    as pymdownx.snippets includes it."""
    text = (ROOT / path).read_text()
    match = re.search(rf"^[^\n]*--8<-- \[start:{section}\][^\n]*\n(.*?)"
                      rf"^[^\n]*--8<-- \[end:{section}\]", text, re.M | re.S)
    assert match, f"{path} has no snippet section {section!r}"
    return match[1]


def expanded(page: Path) -> str:
    """A page's Markdown with its snippet lines replaced by what they include."""
    return _SNIPPET.sub(lambda m: snippet(m[1], m[2]), page.read_text())


def blocks(markdown: str) -> list[Block]:
    return [Block(m[1], m[2]) for m in _FENCE.finditer(markdown)]


def section(markdown: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no section {heading!r}"
    return match[1]
