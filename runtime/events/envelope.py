"""The event envelope: one wire shape for every event, camelCase as the seed's services wrote it.

```json
{"id": "…uuid…", "type": "order.created", "timestamp": "2024-05-01T12:00:00.000Z",
 "version": "1", "data": {...},
 "metadata": {"correlationId": "…", "causationId": null, "service": "order", "userId": null,
              "traceparent": "00-…-…-01"}}
```

`causationId`, `userId` and `traceparent` are always present and `null` when absent: consumers
in any language read one fixed shape instead of testing for missing keys. `traceparent` is the
W3C trace context of the span that wrote the event, so its relay and its consumers continue
that trace.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from cloudretail.runtime.tracing import valid_traceparent
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)
from pydantic.alias_generators import to_camel

ENVELOPE_VERSION = "1"


class EnvelopeError(ValueError):
    """Bytes that are not an event envelope (bad JSON or a missing/invalid field)."""


def _utc_now() -> datetime:
    # Defaults skip validation, so trim to the wire's milliseconds here as well.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def format_timestamp(value: datetime) -> str:
    """UTC with milliseconds and a Z, as JavaScript's toISOString writes it."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventMetadata(BaseModel):
    """Who caused an event and which request it belongs to."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, serialize_by_alias=True
    )

    correlation_id: str = Field(min_length=1)
    causation_id: str | None = None
    service: str = Field(min_length=1)
    user_id: str | None = None
    traceparent: str | None = None

    @field_validator("traceparent", mode="before")
    @classmethod
    def _w3c_or_nothing(cls, value: object) -> str | None:
        # From the wire: anything but a well-formed traceparent is dropped, not the event. The
        # trace is a hint for following it; refusing the event for it would lose data.
        return valid_traceparent(value)


class Event(BaseModel):
    """One event as it travels: the payload in `data`, everything else describes it."""

    model_config = ConfigDict(populate_by_name=True, frozen=True, serialize_by_alias=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str = Field(min_length=1)
    timestamp: datetime = Field(default_factory=_utc_now)
    version: str = ENVELOPE_VERSION
    data: dict[str, Any]
    metadata: EventMetadata

    @field_validator("timestamp")
    @classmethod
    def _aware_utc_millis(cls, value: datetime) -> datetime:
        # A naive time on the wire can only sensibly mean UTC; keeping it naive would make
        # comparisons with aware times raise later, far from the cause.
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # The wire carries milliseconds; trimming here makes an event equal to its round trip.
        return value.replace(microsecond=value.microsecond // 1000 * 1000)

    @field_serializer("timestamp")
    def _timestamp_text(self, value: datetime) -> str:
        return format_timestamp(value)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict, camelCase keys."""
        return self.model_dump(mode="json", by_alias=True)

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Event:
        """Parse an envelope; anything else raises `EnvelopeError` saying what is wrong."""
        try:
            return cls.model_validate_json(raw)
        except ValidationError as error:
            raise EnvelopeError(f"not an event envelope: {_summarise(error)}") from error


def kept_traceparent(raw: bytes | str) -> str | None:
    """The traceparent an envelope's metadata kept, read without validating the rest (the
    outbox relay reads it from every row it sends); None when there is none or not one."""
    try:
        metadata = json.loads(raw)["metadata"]
        return valid_traceparent(metadata.get("traceparent"))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _summarise(error: ValidationError) -> str:
    parts = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "(message)"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
