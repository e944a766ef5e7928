"""The event bus service: `generated/eventbus/` (its models and migrations come from the
migrations target, like every database's)."""

from __future__ import annotations

from cloudretail.generator.model import Platform
from cloudretail.generator.pycode import pytuple
from cloudretail.generator.render import OutputFile


def files(platform: Platform) -> list[OutputFile]:
    roles = platform.auth.roles if platform.auth else None
    context = {"platform": platform, "bus": platform.event_bus, "token_roles": pytuple(roles)}
    return [
        OutputFile(
            "eventbus/__init__.py",
            "services/package.py.j2",
            {"doc": "The event bus: every event of the platform, stored, audited, streamed."},
        ),
        OutputFile("eventbus/app.py", "eventbus/app.py.j2", context),
        OutputFile("eventbus/__main__.py", "eventbus/__main__.py.j2", context),
    ]
