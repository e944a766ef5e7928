"""Typed event payloads and the registry of the platform: `generated/events.py`."""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.kinds import kind_of
from cloudretail.generator.model import Event, Platform
from cloudretail.generator.pycode import Imports
from cloudretail.generator.render import OutputFile


@dataclass(frozen=True)
class EventCode:
    event: Event
    fields: tuple[str, ...]  # "name: type" or "name: type | None = None"


def _fields(event: Event) -> tuple[str, ...]:
    return tuple(
        f"{field.name}: {kind_of(field.type).python} | None = None"
        if field.optional
        else f"{field.name}: {kind_of(field.type).python}"
        for field in event.payload
    )


def files(platform: Platform) -> list[OutputFile]:
    imports = Imports().add("pydantic", "BaseModel")
    imports.add("cloudretail.runtime.events.registry", "EventRegistry", "EventType")
    for event in platform.events:
        for field in event.payload:
            needed = kind_of(field.type).python_import
            if needed:
                imports.add(*needed)
    events = tuple(EventCode(event, _fields(event)) for event in platform.events)
    context = {"platform": platform, "events": events, "imports": imports.lines()}
    return [OutputFile("events.py", "events/events.py.j2", context)]
