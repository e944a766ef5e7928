"""GDPR erasure reaches orders and payments (issue 11, defect 21): both services consume
`user.deleted` and anonymise what they hold of the person (the shipping address, the link
to the account) while keeping what accounting needs (amounts, statuses, transaction ids),
as the spec's `subject` and `pii` declare it (tests/services/test_personal_data.py has the
rest: the whole path from the user service, erasing twice, the export).

The event is delivered through the runtime's consumer (EventConsumer, on a MemoryBus in
place of Kafka) with the handlers the generated apps wire, as `user-events` would bring it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.memory import MemoryBus

from generated.events import REGISTRY
from generated.services.order.models import Order, OrderEvent
from tests.services.commerce import (
    Shop,
    capture_event_handlers,
    eventually,
    order_body,
    running_shop,
)
from tests.services.conftest import CUSTOMER_ID

OTHER_ID = "00000000-0000-4000-8000-000000000003"
ERASED = uuid.UUID(int=0)
ADDRESS_FIELDS = ("line1", "line2", "city", "postal_code")


@pytest.fixture(params=["sqlite", "postgres"])
async def shop(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Shop]:
    handlers = {
        service: capture_event_handlers(monkeypatch, service) for service in ("order", "payment")
    }
    async with running_shop(request.param, tmp_path, issuer) as started:
        started.handlers = handlers  # type: ignore[attr-defined]
        yield started


def _user_deleted(user_id: str) -> Event:
    return Event(
        type="user.deleted",
        data=REGISTRY.validate("user.deleted", {"user_id": user_id}),
        metadata=EventMetadata(correlation_id="gdpr-erasure-1", service="user"),
    )


async def _place(shop: Shop, subject: str, token: str = "tok_visa") -> dict[str, Any]:
    product_id = await shop.new_product(stock=5, price="12.50")
    async with shop.client("order") as client:
        placed = await client.post(
            "/api/orders",
            json=order_body(product_id, 2, token),
            headers={**shop.bearer(subject), "Idempotency-Key": f"checkout-{uuid.uuid4()}"},
        )
    assert placed.status_code in (201, 402), placed.text
    order: dict[str, Any] = placed.json() if placed.status_code == 201 else placed.json()["order"]
    return order


def _consumer(shop: Shop, bus: MemoryBus, service: str) -> EventConsumer:
    handlers: dict[str, Handler] = shop.handlers[service]  # type: ignore[attr-defined]
    assert "user.deleted" in handlers, f"the {service} service does not consume user.deleted"
    return EventConsumer(
        shop.database(service),
        REGISTRY,
        bus.source(service, consumer_topics(REGISTRY, handlers)),
        bus.producer(),
        service=service,
        handlers=handlers,
        backoff_base=0.01,
    )


async def test_user_deleted_anonymises_orders_and_payments(shop: Shop) -> None:
    paid = await _place(shop, CUSTOMER_ID)
    declined = await _place(shop, CUSTOMER_ID, "tok_declined")
    kept = await _place(shop, OTHER_ID)
    before = {row["id"]: row for row in await shop.rows("order", Order.__table__)}

    bus = MemoryBus()
    consumers = [_consumer(shop, bus, service) for service in ("order", "payment")]
    event = _user_deleted(CUSTOMER_ID)
    topic = REGISTRY.get("user.deleted").topic
    key = REGISTRY.key_of("user.deleted", event.data).encode()
    producer = bus.producer()
    await producer.send(topic, key, event.to_bytes())
    await producer.send(topic, key, event.to_bytes())  # a redelivery
    await producer.send(topic, key, _user_deleted(CUSTOMER_ID).to_bytes())  # sent twice
    for consumer in consumers:
        await consumer.start()
    try:

        async def handled() -> bool:
            return all(c.stats.applied + c.stats.duplicates == 3 for c in consumers)

        await eventually(handled, 15, "user.deleted handled by order and payment")
    finally:
        for consumer in consumers:
            await consumer.stop()
    for consumer in consumers:
        assert (consumer.stats.applied, consumer.stats.duplicates) == (2, 1)
        assert consumer.stats.dead_lettered == 0

    # Orders: no address, no link to the person; amounts, lines and statuses as they were.
    orders = {row["id"]: row for row in await shop.rows("order", Order.__table__)}
    for placed in (paid, declined):
        row = orders[uuid.UUID(placed["id"])]
        earlier = before[uuid.UUID(placed["id"])]
        assert row["user_id"] == ERASED
        assert not any(row["shipping_address"].get(name) for name in ADDRESS_FIELDS), row
        assert row["shipping_address"]["country"] == "US"  # where it was sold, for tax
        assert row["idempotency_key"] is None
        for name in ("status", "total_amount", "items", "payment_id", "currency"):
            assert row[name] == earlier[name], name
    assert orders[uuid.UUID(paid["id"])]["status"] == "confirmed"
    timeline = await shop.rows("order", OrderEvent.__table__)
    assert timeline and not any(CUSTOMER_ID in str(row["data"]) for row in timeline)

    # Someone else's order is untouched.
    other = orders[uuid.UUID(kept["id"])]
    assert other["user_id"] == uuid.UUID(OTHER_ID)
    assert other["shipping_address"]["line1"] == "1 Main St"

    # Payments: the amount, status and transaction stay; the person does not.
    payment = await shop.payment(paid["id"])
    assert payment is not None
    assert payment["user_id"] == ERASED
    assert (payment["status"], str(payment["amount"])) == ("completed", "25.00")
    assert payment["transaction_id"]
    other_payment = await shop.payment(kept["id"])
    assert other_payment is not None and other_payment["user_id"] == uuid.UUID(OTHER_ID)

    # The person's token (should one still be valid) finds nothing of theirs.
    async with shop.client("order") as client:
        mine = await client.get("/api/orders", headers=shop.bearer(CUSTOMER_ID))
    assert mine.status_code == 200 and mine.json()["total"] == 0
