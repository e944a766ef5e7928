"""GDPR across services, as the spec declares it (a table's `subject`, a column's `pii`).

Erasing an account in the user service publishes `user.deleted`; the order and payment
services consume it through the runtime's consumer (on a MemoryBus in place of Kafka) with
the handler their generated apps wire, which applies the spec's declarations. The export
of the user service gathers the person's rows from every service holding them, over their
generated internal routes. Real servers on loopback ports (tests/services/commerce.py), on
SQLite and on PostgreSQL; the assertions read the raw rows of each database.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.tables import outbox

from generated.events import REGISTRY
from generated.services.order.models import Order, OrderEvent
from generated.services.payment.models import Payment
from generated.services.user.models import User
from tests.services.commerce import (
    ADDRESS,
    SERVICES,
    Shop,
    capture_event_handlers,
    eventually,
    order_body,
    running_shop,
)
from tests.services.conftest import SERVICE_TOKEN

ERASED = uuid.UUID(int=0)
PASSWORD = "correct horse battery"
HOLDERS = ("order", "payment")  # the services that consume user.deleted and erase by the spec


@pytest.fixture(params=["sqlite", "postgres"])
async def shop(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Shop]:
    handlers = {service: capture_event_handlers(monkeypatch, service) for service in HOLDERS}
    services = (*SERVICES, "user", "notification", "analytics")
    async with running_shop(request.param, tmp_path, issuer, services=services) as started:
        started.handlers = handlers  # type: ignore[attr-defined]
        yield started


async def _register(shop: Shop, first_name: str) -> str:
    async with shop.client("user") as client:
        made = await client.post(
            "/api/users/register",
            json={
                "email": f"{first_name.lower()}-{uuid.uuid4().hex[:8]}@example.com",
                "password": PASSWORD,
                "first_name": first_name,
                "last_name": "Lovelace",
                "gdpr_consent": True,
            },
        )
    assert made.status_code == 201, made.text
    user_id: str = made.json()["id"]
    return user_id


async def _place(shop: Shop, user_id: str, token: str = "tok_visa") -> dict[str, Any]:
    product_id = await shop.new_product(stock=5, price="12.50")
    async with shop.client("order") as client:
        placed = await client.post(
            "/api/orders",
            json=order_body(product_id, 2, token),
            headers={**shop.bearer(user_id), "Idempotency-Key": f"checkout-{uuid.uuid4()}"},
        )
    assert placed.status_code in (201, 402), placed.text
    order: dict[str, Any] = placed.json() if placed.status_code == 201 else placed.json()["order"]
    return order


async def _deliver(shop: Shop, *events: tuple[str, bytes, bytes]) -> list[EventConsumer]:
    """Send (topic, key, value) messages, and run the order and payment consumers until
    each has seen all of them."""
    bus = MemoryBus()
    producer = bus.producer()
    for topic, key, value in events:
        await producer.send(topic, key, value)
    consumers = []
    for service in HOLDERS:
        handlers: dict[str, Handler] = shop.handlers[service]  # type: ignore[attr-defined]
        consumers.append(
            EventConsumer(
                shop.database(service),
                REGISTRY,
                bus.source(service, consumer_topics(REGISTRY, handlers)),
                bus.producer(),
                service=service,
                handlers=handlers,
                backoff_base=0.01,
            )
        )
    for consumer in consumers:
        await consumer.start()
    try:

        async def handled() -> bool:
            seen = (c.stats.applied + c.stats.duplicates + c.stats.dead_lettered for c in consumers)
            return all(count == len(events) for count in seen)

        await eventually(handled, 15, "user.deleted handled by order and payment")
    finally:
        for consumer in consumers:
            await consumer.stop()
    for consumer in consumers:
        assert consumer.stats.dead_lettered == 0
    return consumers


async def _published(shop: Shop, event_type: str) -> tuple[str, bytes, bytes]:
    """The user service's event of `event_type`, as its outbox relay would send it."""
    rows = await shop.rows("user", outbox, outbox.c.event_type == event_type)
    assert len(rows) == 1, rows
    row = rows[0]
    return row["topic"], row["message_key"].encode(), row["payload"].encode()


def _user_deleted(user_id: str) -> tuple[str, bytes, bytes]:
    """Another `user.deleted` for the same account (a new event id): the inbox does not
    skip it, so the erasure itself must find nothing left to change."""
    event = Event(
        type="user.deleted",
        data=REGISTRY.validate("user.deleted", {"user_id": user_id}),
        metadata=EventMetadata(correlation_id="gdpr-again", service="user"),
    )
    key = REGISTRY.key_of("user.deleted", event.data).encode()
    return REGISTRY.get("user.deleted").topic, key, event.to_bytes()


async def _raw(shop: Shop) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tables holding personal data, as stored."""
    return {
        "orders": await shop.rows("order", Order.__table__),
        "order_events": await shop.rows("order", OrderEvent.__table__),
        "payments": await shop.rows("payment", Payment.__table__),
    }


def _text(rows: Any) -> str:
    return json.dumps(rows, default=str)


async def test_erasing_an_account_reaches_every_service_holding_its_data(shop: Shop) -> None:
    ada = await _register(shop, "Ada")
    bob = await _register(shop, "Bob")
    paid = await _place(shop, ada)
    declined = await _place(shop, ada, "tok_declined")
    kept = await _place(shop, bob)
    before = {row["id"]: row for row in (await _raw(shop))["orders"]}
    async with shop.client("user") as client:
        erased = await client.delete("/api/users/profile", headers=shop.bearer(ada))
    assert erased.status_code == 200, erased.text
    assert await shop.rows("user", User.__table__, User.__table__.c.id == uuid.UUID(ada)) == []

    deleted = await _published(shop, "user.deleted")
    for consumer in await _deliver(shop, deleted, deleted):  # the second one a redelivery
        assert (consumer.stats.applied, consumer.stats.duplicates) == (1, 1)
    after = await _raw(shop)

    # Ada's rows keep what the books need and name her nowhere, not even inside JSON.
    mine = [row for row in after["orders"] if str(row["id"]) in (paid["id"], declined["id"])]
    assert len(mine) == 2
    for row in mine:
        earlier = before[row["id"]]
        assert row["user_id"] == ERASED
        assert row["shipping_address"] == {
            "line1": None,
            "line2": None,
            "city": None,
            "postal_code": None,
            "country": "US",  # where it was sold, for tax
        }
        assert row["idempotency_key"] is None and row["request_fingerprint"] is None
        for name in ("status", "total_amount", "items", "payment_id", "currency", "created_at"):
            assert row[name] == earlier[name], name
    ada_orders = {uuid.UUID(paid["id"]), uuid.UUID(declined["id"])}
    mine_text = _text(
        [
            *mine,
            *(row for row in after["order_events"] if row["order_id"] in ada_orders),
            *(row for row in after["payments"] if row["order_id"] in ada_orders),
        ]
    )
    assert ada not in mine_text
    for personal in (ADDRESS["line1"], ADDRESS["city"], ADDRESS["postal_code"]):
        assert personal not in mine_text
    timeline = [row for row in after["order_events"] if row["order_id"] in ada_orders]
    assert timeline and all(row["data"].get("user_id") == str(ERASED) for row in timeline)
    payment = await shop.payment(paid["id"])
    assert payment is not None and payment["user_id"] == ERASED
    assert (payment["status"], str(payment["amount"]), payment["currency"]) == (
        "completed",
        "25.00",
        "USD",
    )
    assert payment["transaction_id"]

    # Bob's are as they were.
    bobs = next(row for row in after["orders"] if str(row["id"]) == kept["id"])
    assert bobs == before[bobs["id"]]
    other_payment = await shop.payment(kept["id"])
    assert other_payment is not None and other_payment["user_id"] == uuid.UUID(bob)

    # Erasing again (a new event for the same account) changes nothing, to the byte.
    for consumer in await _deliver(shop, _user_deleted(ada)):
        assert (consumer.stats.applied, consumer.stats.duplicates) == (1, 0)
    assert await _raw(shop) == after


async def test_the_export_gathers_the_persons_rows_from_every_service(shop: Shop) -> None:
    ada = await _register(shop, "Ada")
    bob = await _register(shop, "Bob")
    async with shop.client("user") as client:
        # A TOTP secret (stored encrypted), which no export may carry.
        setup = await client.post("/api/users/2fa/setup", headers=shop.bearer(ada))
        assert setup.status_code == 200, setup.text
    secret = setup.json()["secret"]
    ada_orders = {(await _place(shop, ada))["id"], (await _place(shop, ada, "tok_declined"))["id"]}
    bob_order = (await _place(shop, bob))["id"]

    async with shop.client("user") as client:
        answer = await client.get("/api/users/profile/export", headers=shop.bearer(ada))
    assert answer.status_code == 200, answer.text
    export = answer.json()
    assert export["user"]["first_name"] == "Ada"
    assert export["consent"]["gdpr_consent"] is True and export["consent"]["given_at"]
    data = export["data"]
    assert set(data) == {"user", "order", "payment", "notification", "analytics"}
    assert set(data["order"]) == {"orders", "order_events"}
    # No event reached the consumers here: their tables are there, empty.
    assert data["notification"] == {"recipients": [], "notifications": []}
    assert data["analytics"] == {"customer_facts": []}

    [me] = data["user"]["users"]
    assert (me["id"], me["first_name"], me["gdpr_consent"]) == (ada, "Ada", True)
    assert "password" not in me and "two_factor_secret" not in me
    assert {row["id"] for row in data["order"]["orders"]} == ada_orders
    assert {row["user_id"] for row in data["order"]["orders"]} == {ada}
    assert all(
        row["shipping_address"] == {**ADDRESS, "line2": None} for row in data["order"]["orders"]
    )
    timeline = data["order"]["order_events"]
    assert timeline and {row["order_id"] for row in timeline} == ada_orders
    payments = data["payment"]["payments"]
    assert {row["order_id"] for row in payments} == ada_orders
    assert {row["amount"] for row in payments} == {"25.00"}  # decimals keep their digits

    text = json.dumps(export)
    assert bob not in text and bob_order not in text
    assert secret not in text and "$argon2" not in text

    # The internal routes answer the platform's services only.
    async with shop.client("order") as client:
        path = f"/internal/order/subjects/{ada}"
        assert (await client.get(path)).status_code == 401
        wrong = await client.get(path, headers={"X-Service-Token": "not the token"})
        assert wrong.status_code == 403
        right = await client.get(path, headers={"X-Service-Token": SERVICE_TOKEN})
        assert right.status_code == 200
        assert right.json()["tables"] == data["order"]

    # Without one of the services holding the data there is no export, not a partial one.
    await shop.servers["payment"].stop()
    async with shop.client("user") as client:
        refused = await client.get("/api/users/profile/export", headers=shop.bearer(ada))
    assert refused.status_code == 503, refused.text
    assert refused.json()["service"] == "payment"
