"""Architecture docs with Mermaid diagrams drawn from the spec, so they cannot drift."""

from __future__ import annotations

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile


def files(platform: Platform) -> list[OutputFile]:
    # The envelope's example is one of the platform's own events (any kind will do if none).
    example = platform.events[0] if platform.events else None
    context = {
        "platform": platform,
        "example_type": example.name if example else "thing.happened",
        "example_service": example.producer if example else "a-service",
    }
    return [OutputFile("docs/architecture.md", "docs/architecture.md.j2", context)]
