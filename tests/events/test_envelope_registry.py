"""The envelope's wire shape and the registry's validation, without any transport."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from cloudretail.runtime.events.envelope import EnvelopeError, Event, EventMetadata
from cloudretail.runtime.events.registry import EventRegistry, EventType, EventValidationError
from pydantic import BaseModel

from tests.events.support import OrderPlaced, make_registry, order


def test_envelope_is_camel_case_on_the_wire_with_nulls_for_absent_metadata() -> None:
    event = Event(
        type="order.placed",
        timestamp=datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
        data={"a": 1},
        metadata=EventMetadata(correlation_id="c-1", service="orders"),
    )
    wire = json.loads(event.to_bytes())
    assert wire == {
        "id": str(event.id),
        "type": "order.placed",
        "timestamp": "2024-05-01T12:00:00.123Z",
        "version": "1",
        "data": {"a": 1},
        "metadata": {
            "correlationId": "c-1",
            "causationId": None,
            "service": "orders",
            "userId": None,
            "traceparent": None,
        },
    }
    assert event.to_wire() == wire


def test_envelope_round_trips_and_accepts_both_spellings() -> None:
    event = Event(
        type="x.y",
        data={"n": 1},
        metadata=EventMetadata(correlation_id="c", causation_id="e-0", service="s", user_id="u"),
    )
    assert Event.from_bytes(event.to_bytes()) == event
    assert Event.from_bytes(event.to_bytes().decode()) == event
    snake = Event.model_validate(
        {
            "type": "x.y",
            "data": {},
            "metadata": {"correlation_id": "c", "service": "s", "user_id": "u"},
        }
    )
    assert snake.metadata.user_id == "u"


def test_envelope_times_are_utc_milliseconds() -> None:
    naive = Event(
        type="x",
        timestamp=datetime(2024, 1, 1, 10, 0),
        data={},
        metadata=EventMetadata(correlation_id="c", service="s"),
    )
    assert naive.to_wire()["timestamp"] == "2024-01-01T10:00:00.000Z"
    plus_two = timezone(timedelta(hours=2))
    shifted = Event(
        type="x",
        timestamp=datetime(2024, 1, 1, 12, 0, tzinfo=plus_two),
        data={},
        metadata=EventMetadata(correlation_id="c", service="s"),
    )
    assert shifted.to_wire()["timestamp"] == "2024-01-01T10:00:00.000Z"


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"not json", "Invalid JSON"),
        (b"{}", "type: Field required"),
        (b'{"type": "x", "data": {}, "metadata": {"service": "s"}}', "correlationId"),
        (
            b'{"id": "nope", "type": "x", "data": {}, "metadata": '
            b'{"correlationId": "c", "service": "s"}}',
            "id:",
        ),
    ],
)
def test_from_bytes_says_what_is_wrong(raw: bytes, complaint: str) -> None:
    with pytest.raises(EnvelopeError, match="not an event envelope") as caught:
        Event.from_bytes(raw)
    assert complaint in str(caught.value)


def test_registry_validates_into_json_safe_dicts() -> None:
    registry = make_registry("p")
    order_id = uuid.uuid4()
    data = registry.validate("order.placed", order(order_id, "9.90"))
    assert data == {"order_id": str(order_id), "customer": "ada", "total": "9.90"}
    model = OrderPlaced(order_id=order_id, customer="ada", total=Decimal("9.90"))
    assert registry.validate("order.placed", model) == data
    assert registry.parse("order.placed", data) == model
    assert registry.key_of("order.placed", data) == str(order_id)
    assert registry.topics() == ["p.orders", "p.payments"]
    assert registry.get("payment.completed").topic == "p.payments"
    assert "order.placed" in registry and len(registry) == 2


def test_registry_errors_are_clear() -> None:
    registry = make_registry("p")
    with pytest.raises(EventValidationError, match=r"unknown event type 'nope' \(known: "):
        registry.get("nope")
    with pytest.raises(EventValidationError) as caught:
        registry.validate("order.placed", {"order_id": "x", "customer": "ada"})
    message = str(caught.value)
    assert message.startswith("invalid payload for event 'order.placed':")
    assert "order_id" in message and "total: Field required" in message


def test_registry_refuses_inconsistent_declarations() -> None:
    class Payload(BaseModel):
        thing_id: str

    with pytest.raises(ValueError, match="declared twice"):
        EventRegistry([EventType("a", "t", "thing_id", "1", Payload)] * 2)
    with pytest.raises(ValueError, match="key field 'order_id' is not a field of Payload"):
        EventRegistry([EventType("a", "t", "order_id", "1", Payload)])
    with pytest.raises(ValueError, match="'orders events' is not a legal Kafka topic name"):
        EventRegistry([EventType("a", "orders events", "thing_id", "1", Payload)])


def test_key_must_have_a_value() -> None:
    class Maybe(BaseModel):
        thing_id: str | None = None

    registry = EventRegistry([EventType("a", "t", "thing_id", "1", Maybe)])
    with pytest.raises(EventValidationError, match="no value for its key field 'thing_id'"):
        registry.key_of("a", registry.validate("a", {}))
