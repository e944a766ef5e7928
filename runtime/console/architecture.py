"""The platform's diagrams for the console: the Mermaid blocks of the architecture page
`cloudretail generate` writes from the spec (generated/docs/architecture.md), each with the
heading it stands under."""

from __future__ import annotations

import re
from pathlib import Path

_BLOCK = re.compile(r"^```mermaid[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.MULTILINE)


def diagrams(markdown: str) -> list[dict[str, str]]:
    """Each Mermaid block of `markdown`: {"title": the nearest heading above it, "source"}."""
    found = []
    for block in _BLOCK.finditer(markdown):
        headings = _HEADING.findall(markdown, 0, block.start())
        found.append({"title": headings[-1] if headings else "Diagram", "source": block.group(1)})
    return found


def read_diagrams(path: str | None) -> list[dict[str, str]]:
    """The diagrams of the page at `path`; none when there is no such page."""
    if not path:
        return []
    try:
        return diagrams(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return []
