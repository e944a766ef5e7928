"""Typed event payloads and the registry of the platform: `generated/events.py`."""

from __future__ import annotations

from dataclasses import dataclass

from generator.model import PYTHON_TYPES, Event, Platform
from generator.pycode import Imports
from generator.render import OutputFile

_IMPORTS: dict[str, tuple[str, ...]] = {
    "uuid.UUID": ("uuid",),
    "Decimal": ("decimal", "Decimal"),
    "datetime": ("datetime", "datetime"),
    "Any": ("typing", "Any"),
}


@dataclass(frozen=True)
class EventCode:
    event: Event
    fields: tuple[str, ...]  # "name: type" or "name: type | None = None"


def _fields(event: Event) -> tuple[str, ...]:
    return tuple(
        f"{field.name}: {PYTHON_TYPES[field.type]} | None = None"
        if field.optional
        else f"{field.name}: {PYTHON_TYPES[field.type]}"
        for field in event.payload
    )


def files(platform: Platform) -> list[OutputFile]:
    imports = Imports().add("pydantic", "BaseModel")
    imports.add("runtime.events.registry", "EventRegistry", "EventType")
    for event in platform.events:
        for field in event.payload:
            needed = _IMPORTS.get(PYTHON_TYPES[field.type])
            if needed:
                imports.add(*needed)
    events = tuple(EventCode(event, _fields(event)) for event in platform.events)
    context = {"platform": platform, "events": events, "imports": imports.lines()}
    return [OutputFile("events.py", "events/events.py.j2", context)]
