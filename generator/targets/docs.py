"""Architecture docs with Mermaid diagrams drawn from the spec, so they cannot drift."""

from __future__ import annotations

from generator.model import Platform
from generator.render import OutputFile


def files(platform: Platform) -> list[OutputFile]:
    return [OutputFile("docs/architecture.md", "docs/architecture.md.j2", {"platform": platform})]
