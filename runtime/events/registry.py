"""The event types a platform knows: their topic, their key field and their typed payload.

A generated module builds one `EventRegistry` from the spec; publishing and consuming both go
through it, so an event that does not match its declared payload never reaches the broker and
never reaches a handler.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

_LEGAL_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


class EventValidationError(ValueError):
    """An unknown event type, or a payload that does not fit its type."""


@dataclass(frozen=True)
class EventType:
    """One declared event. `key` names the payload field whose value keys the Kafka message."""

    name: str
    topic: str
    key: str
    version: str
    payload: type[BaseModel]


class EventRegistry:
    """Lookup and validation of declared event types."""

    def __init__(self, types: Iterable[EventType]) -> None:
        self._types: dict[str, EventType] = {}
        for event_type in types:
            if not _LEGAL_TOPIC.fullmatch(event_type.topic):
                raise ValueError(
                    f"event type {event_type.name!r}: {event_type.topic!r} is not a legal Kafka "
                    "topic name (letters, digits, '.', '_', '-'; at most 249)"
                )
            if event_type.name in self._types:
                raise ValueError(f"event type {event_type.name!r} is declared twice")
            if event_type.key not in event_type.payload.model_fields:
                raise ValueError(
                    f"event type {event_type.name!r}: key field {event_type.key!r} is not a "
                    f"field of {event_type.payload.__name__}"
                )
            self._types[event_type.name] = event_type

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[EventType]:
        return iter(self._types.values())

    def __len__(self) -> int:
        return len(self._types)

    def get(self, name: str) -> EventType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(sorted(self._types)) or "none"
            raise EventValidationError(f"unknown event type {name!r} (known: {known})") from None

    def topics(self) -> list[str]:
        """Every topic some event type goes to, sorted."""
        return sorted({event_type.topic for event_type in self._types.values()})

    def parse(self, name: str, data: Mapping[str, Any] | BaseModel) -> BaseModel:
        """The payload as an instance of the type's model."""
        payload_model = self.get(name).payload
        if isinstance(data, payload_model):
            # Revalidate anyway: a model built with model_construct or mutated is unchecked.
            data = data.model_dump()
        elif isinstance(data, BaseModel):
            data = data.model_dump()
        try:
            return payload_model.model_validate(data)
        except ValidationError as error:
            raise EventValidationError(
                f"invalid payload for event {name!r}: {_summarise(error)}"
            ) from error

    def validate(self, name: str, data: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
        """The validated payload as a JSON-safe dict (UUIDs, decimals and times as strings)."""
        return self.parse(name, data).model_dump(mode="json")

    def key_of(self, name: str, payload: Mapping[str, Any]) -> str:
        """The message key of a validated payload: its key field as text."""
        event_type = self.get(name)
        value = payload.get(event_type.key)
        if value is None or value == "":
            raise EventValidationError(
                f"event {name!r} has no value for its key field {event_type.key!r}; "
                "set it or pass key="
            )
        return str(value)


def _summarise(error: ValidationError) -> str:
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "(payload)"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
