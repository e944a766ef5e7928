"""The analytics service's test scenario: events of every topic about three accounts, three
products and three orders, and the summary they must add up to; and a feed that runs events
through the runtime's consumer (EventConsumer with the handlers the generated app wires,
on a MemoryBus in place of Kafka) one at a time, so a test decides the order they apply in.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from cloudretail.runtime.events.consumer import EventConsumer, consumer_topics
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.memory import MemoryBus
from fastapi import FastAPI

from generated.events import REGISTRY
from generated.services.analytics import app as analytics_app
from tests.services.commerce import eventually

# Ids sort as numbered, so ties in the summary's order are known.
USERS = [uuid.UUID(f"00000000-0000-4000-8000-0000000001{n:02d}") for n in range(1, 4)]
PRODUCTS = [uuid.UUID(f"00000000-0000-4000-8000-0000000002{n:02d}") for n in range(1, 4)]
ORDERS = [uuid.UUID(f"00000000-0000-4000-8000-0000000003{n:02d}") for n in range(1, 4)]
PAYMENTS = [uuid.UUID(f"00000000-0000-4000-8000-0000000004{n:02d}") for n in range(1, 4)]
# Two hours ago, on the hour: inside the summary's default window of 24 hours.
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def at(minutes: int) -> datetime:
    return BASE + timedelta(minutes=minutes)


def event(kind: str, data: dict[str, Any], moment: datetime) -> Event:
    return Event(
        type=kind,
        timestamp=moment,
        data=REGISTRY.validate(kind, data),
        metadata=EventMetadata(correlation_id="analytics-test", service=kind.split(".")[0]),
    )


def line(product: uuid.UUID, quantity: int, price: str, name: str) -> dict[str, Any]:
    return {
        "product_id": str(product),
        "name": name,
        "quantity": quantity,
        "unit_price": price,
        "line_total": str(Decimal(price) * quantity),
    }


def scenario() -> list[Event]:
    """In the order the platform would publish them; hours BASE and BASE + 1 h."""
    u1, u2, u3 = USERS
    p1, p2, p3 = PRODUCTS
    o1, o2, o3 = ORDERS
    pay1, pay2, pay3 = PAYMENTS
    return [
        event("user.created", {"user_id": u1, "email": "a@x.example", "role": "customer"}, at(1)),
        event("user.created", {"user_id": u2, "email": "b@x.example", "role": "customer"}, at(2)),
        event("user.created", {"user_id": u3, "email": "c@x.example", "role": "customer"}, at(3)),
        event(
            "product.created",
            {"product_id": p1, "name": "Widget", "sku": "W-1", "price": "10.00"},
            at(4),
        ),
        event(
            "product.created",
            {"product_id": p2, "name": "Gadget", "sku": "G-1", "price": "5.00"},
            at(5),
        ),
        # p3's catalog event is gone (retention): its name comes from the order line.
        event(
            "order.created",
            {
                "order_id": o1,
                "user_id": u1,
                "items": [line(p1, 2, "10.00", "Widget (old)"), line(p2, 1, "5.00", "Gadget")],
                "total_amount": "25.00",
            },
            at(10),
        ),
        event(
            "payment.completed",
            {"payment_id": pay1, "order_id": o1, "amount": "25.00", "currency": "USD"},
            at(11),
        ),
        event(
            "order.confirmed",
            {"order_id": o1, "user_id": u1, "payment_id": pay1, "total_amount": "25.00"},
            at(61),
        ),
        event(
            "order.created",
            {
                "order_id": o2,
                "user_id": u1,
                "items": [line(p2, 3, "5.00", "Gadget")],
                "total_amount": "15.00",
            },
            at(62),
        ),
        event(
            "payment.failed",
            {"payment_id": pay2, "order_id": o2, "reason": "card declined"},
            at(63),
        ),
        event(
            "order.cancelled",
            {"order_id": o2, "user_id": u1, "reason": "charge_payment: card declined"},
            at(64),
        ),
        event(
            "order.created",
            {
                "order_id": o3,
                "user_id": u2,
                "items": [line(p3, 1, "7.50", "Thing")],
                "total_amount": "7.50",
            },
            at(65),
        ),
        event(
            "payment.completed",
            {"payment_id": pay3, "order_id": o3, "amount": "7.50", "currency": "eur"},
            at(66),
        ),
        event(
            "order.confirmed",
            {"order_id": o3, "user_id": u2, "payment_id": pay3, "total_amount": "7.50"},
            at(67),
        ),
        event(
            "inventory.low_stock",
            {"product_id": p1, "available": 3, "reorder_level": 10},
            at(68),
        ),
        event(
            "inventory.low_stock",
            {"product_id": p2, "available": 4, "reorder_level": 5},
            at(69),
        ),
        event(
            "inventory.low_stock",
            {"product_id": p1, "available": 1, "reorder_level": 10},
            at(70),
        ),
        event("product.updated", {"product_id": p2, "fields": {"name": "Gadget Pro"}}, at(71)),
        event("product.deleted", {"product_id": p1}, at(72)),
    ]


def _hour(offset: int, **counts: Any) -> dict[str, Any]:
    zero = dict.fromkeys(
        (
            "orders_created",
            "orders_confirmed",
            "orders_cancelled",
            "payments_failed",
            "registrations",
            "low_stock_alerts",
        ),
        0,
    )
    return {
        "hour": (BASE + timedelta(hours=offset)).isoformat(),
        **zero,
        "revenue": {},
        **counts,
    }


TOTALS = {
    "orders_created": 3,
    "orders_confirmed": 2,
    "orders_cancelled": 1,
    "payments_failed": 1,
    "registrations": 3,
    "low_stock_alerts": 3,
    "revenue": {"EUR": "7.50", "USD": "25.00"},
}

EXPECTED_HOURLY = [
    _hour(0, registrations=3, orders_created=1),
    _hour(
        1,
        orders_created=2,
        orders_confirmed=2,
        orders_cancelled=1,
        payments_failed=1,
        low_stock_alerts=3,
        revenue={"EUR": "7.50", "USD": "25.00"},
    ),
]

EXPECTED_TOP = [
    {
        "product_id": str(PRODUCTS[0]),
        "name": "Widget",  # the catalog's name beats the later order line's
        "deleted": True,
        "units": 2,
        "orders": 1,
        "revenue": {"USD": "20.00"},
    },
    {
        "product_id": str(PRODUCTS[1]),
        "name": "Gadget Pro",
        "deleted": False,
        "units": 1,  # the cancelled order's three are not sales
        "orders": 1,
        "revenue": {"USD": "5.00"},
    },
    {
        "product_id": str(PRODUCTS[2]),
        "name": "Thing",
        "deleted": False,
        "units": 1,
        "orders": 1,
        "revenue": {"EUR": "7.50"},
    },
]

EXPECTED_LOW_STOCK = [
    {
        "product_id": str(PRODUCTS[0]),
        "name": "Widget",
        "alerts": 2,
        "available": 1,
        "reorder_level": 10,
        "last_alert_at": at(70).isoformat(),
    },
    {
        "product_id": str(PRODUCTS[1]),
        "name": "Gadget Pro",
        "alerts": 1,
        "available": 4,
        "reorder_level": 5,
        "last_alert_at": at(69).isoformat(),
    },
]

EXPECTED_CONVERSION = {
    "orders_created": 3,
    "confirmed": 2,
    "cancelled": 1,
    "confirmed_share": 0.6667,
    "registrations": 3,
    "ordered": 2,
    "ordered_share": 0.6667,
    "view_to_order": None,
    "note": "view-to-order conversion needs product-view events, which the platform does "
    "not publish",
}


def assert_scenario_summary(summary: dict[str, Any]) -> None:
    assert summary["totals"] == TOTALS
    assert summary["all_time"] == TOTALS
    assert summary["confirmed_awaiting_payment"] == 0
    assert summary["hourly"] == EXPECTED_HOURLY
    assert summary["top_products"] == EXPECTED_TOP
    assert summary["low_stock"] == EXPECTED_LOW_STOCK
    assert summary["conversion"] == EXPECTED_CONVERSION


def without_window(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary less its window's edges (two reads straddling an hour differ there)."""
    return {key: value for key, value in summary.items() if key != "window"}


async def read_summary(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    answer = await client.get("/api/analytics/summary", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


class Feed:
    """The analytics consumer over a MemoryBus, into the app's database."""

    def __init__(self, app: FastAPI) -> None:
        handlers = analytics_app.event_handlers()
        self.bus = MemoryBus()
        topics = consumer_topics(REGISTRY, handlers)
        self.consumer = EventConsumer(
            app.state.database,
            REGISTRY,
            self.bus.source("analytics", topics),
            self.bus.producer(),
            service="analytics",
            handlers=handlers,
            backoff_base=0.01,
            backoff_max=0.05,
            poll_timeout=0.05,
        )
        self.producer = self.bus.producer()

    async def __aenter__(self) -> Feed:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    def handled(self) -> int:
        stats = self.consumer.stats
        return stats.applied + stats.duplicates + stats.dead_lettered + stats.skipped

    async def send(self, *events: Event) -> None:
        """Publish each event and wait until the consumer is done with it."""
        for item in events:
            before = self.handled()
            topic = REGISTRY.get(item.type).topic
            key = REGISTRY.key_of(item.type, item.data).encode()
            await self.producer.send(topic, key, item.to_bytes())

            async def done(before: int = before) -> bool:
                return self.handled() > before

            await eventually(done, 10, f"{item.type} handled")
        assert self.consumer.stats.dead_lettered == 0
