"""The order service's read model of the catalog (event-carried state transfer): product
events keep `product_snapshots`, an order is priced from a fresh snapshot without asking the
product service, a stale or missing one is asked for (and refreshed by the answer), an older
or redelivered event never rolls a newer price back, and a product deleted or not for sale
is refused without a call.

The events are the ones the product service really published (read from its outbox),
delivered through the runtime's consumer (EventConsumer on a MemoryBus in place of Kafka)
with the handlers the generated order app wires. "Without a call" is shown by stopping the
product service: an order that needed it would get 503.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.envelope import Event
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.types import utc_now

from generated.events import REGISTRY
from generated.services.order.models import ProductSnapshot
from handlers.order import (
    DEFAULT_SNAPSHOT_MAX_AGE,
    SNAPSHOT_MAX_AGE_VARIABLE,
    SnapshotConfigError,
    snapshot_max_age,
)
from tests.services.commerce import (
    Shop,
    capture_event_handlers,
    eventually,
    order_body,
    running_shop,
)

SNAPSHOTS = cast(sa.Table, ProductSnapshot.__table__)


class Feed:
    """The order service's consumer on a MemoryBus; `deliver` sends events and waits until
    each has been handled (applied, or skipped as a duplicate)."""

    def __init__(self, shop: Shop, handlers: dict[str, Handler]) -> None:
        self.bus = MemoryBus()
        self.producer = self.bus.producer()
        self.sent = 0
        self.consumer = EventConsumer(
            shop.database("order"),
            REGISTRY,
            self.bus.source("order", consumer_topics(REGISTRY, handlers)),
            self.producer,
            service="order",
            handlers=handlers,
            backoff_base=0.01,
        )

    async def deliver(self, *events: Event) -> None:
        for event in events:
            topic = REGISTRY.get(event.type).topic
            key = REGISTRY.key_of(event.type, event.data).encode()
            await self.producer.send(topic, key, event.to_bytes())
        self.sent += len(events)
        stats = self.consumer.stats

        async def handled() -> bool:
            return stats.applied + stats.duplicates + stats.dead_lettered >= self.sent

        await eventually(handled, 15, f"{self.sent} product events handled")
        assert stats.dead_lettered == 0


@pytest.fixture(params=["sqlite", "postgres"])
async def shop(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Shop]:
    monkeypatch.delenv(SNAPSHOT_MAX_AGE_VARIABLE, raising=False)
    handlers = capture_event_handlers(monkeypatch, "order")
    async with running_shop(request.param, tmp_path, issuer) as started:
        started.handlers = handlers  # type: ignore[attr-defined]
        yield started


@pytest.fixture
async def feed(shop: Shop) -> AsyncIterator[Feed]:
    handlers: dict[str, Handler] = shop.handlers  # type: ignore[attr-defined]
    made = Feed(shop, handlers)
    await made.consumer.start()
    try:
        yield made
    finally:
        await made.consumer.stop()


async def _published(shop: Shop, product_id: str) -> list[Event]:
    """The events the product service published about a product, oldest first."""
    rows = await shop.rows("product", outbox, outbox.c.message_key == product_id)
    return [Event.from_bytes(row["payload"]) for row in sorted(rows, key=lambda r: r["seq"])]


async def _snapshot(shop: Shop, product_id: str) -> dict[str, Any] | None:
    rows = await shop.rows("order", SNAPSHOTS, SNAPSHOTS.c.product_id == uuid.UUID(product_id))
    return rows[0] if rows else None


async def _age(shop: Shop, product_id: str, by: timedelta) -> None:
    """Make the snapshot look last refreshed `by` ago."""
    async with shop.database("order").engine.begin() as connection:
        await connection.execute(
            sa.update(SNAPSHOTS)
            .where(SNAPSHOTS.c.product_id == uuid.UUID(product_id))
            .values(refreshed_at=utc_now() - by)
        )


async def _change(shop: Shop, product_id: str, **fields: Any) -> None:
    async with shop.client("product") as client:
        changed = await client.patch(f"/api/products/{product_id}", json=fields, headers=shop.admin)
    assert changed.status_code == 200, changed.text
    await asyncio.sleep(0.01)  # so the next change's events carry a later millisecond


async def _order(shop: Shop, product_id: str, quantity: int = 2) -> httpx.Response:
    async with shop.client("order") as client:
        return await client.post(
            "/api/orders", json=order_body(product_id, quantity), headers=shop.bearer()
        )


def _line(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    [line] = response.json()["items"]
    return dict(line)


async def test_product_events_keep_the_snapshot(shop: Shop, feed: Feed) -> None:
    product_id = await shop.new_product(stock=5, price="10.00")
    await _change(shop, product_id, price="12.50", name="Renamed item")
    events = await _published(shop, product_id)
    assert [event.type for event in events] == [
        "product.created",
        "product.updated",
        "product.price_changed",
    ]
    assert events[0].data["is_active"] is True
    assert await _snapshot(shop, product_id) is None  # no broker in the shop: nothing yet

    await feed.deliver(events[0])
    created = await _snapshot(shop, product_id)
    assert created is not None
    assert (created["name"], created["price"], created["is_active"]) == (
        "Test item",
        Decimal("10.00"),
        True,
    )
    assert created["changed_at"] == created["refreshed_at"] == events[0].timestamp

    await feed.deliver(*events[1:])
    row = await _snapshot(shop, product_id)
    assert row is not None
    assert (row["name"], row["price"], row["is_active"], row["deleted"]) == (
        "Renamed item",
        Decimal("12.50"),
        True,
        False,
    )
    assert row["changed_at"] == row["refreshed_at"] == events[-1].timestamp

    # `product.price_changed` alone carries the new price too.
    other = await shop.new_product(stock=5, price="3.00")
    await _change(shop, other, price="4.00")
    created_other, _, price_changed = await _published(shop, other)
    await feed.deliver(created_other, price_changed)
    repriced = await _snapshot(shop, other)
    assert repriced is not None and repriced["price"] == Decimal("4.00")


async def test_a_fresh_snapshot_prices_the_order_without_the_product_service(
    shop: Shop, feed: Feed
) -> None:
    product_id = await shop.new_product(stock=5, price="10.00")
    await feed.deliver(*await _published(shop, product_id))
    await shop.servers["product"].stop()

    line = _line(await _order(shop, product_id, 2))
    assert (line["name"], line["unit_price"], line["line_total"]) == (
        "Test item",
        "10.00",
        "20.00",
    )
    assert (await shop.stock(product_id)) == (3, 0)


async def test_a_stale_or_missing_snapshot_asks_the_product_service(shop: Shop, feed: Feed) -> None:
    # Never heard of (a product older than the order service's read model): asked for.
    unseen = await shop.new_product(stock=5, price="7.25")
    assert _line(await _order(shop, unseen, 1))["unit_price"] == "7.25"
    learnt = await _snapshot(shop, unseen)
    assert learnt is not None
    assert (learnt["name"], learnt["price"], learnt["is_active"]) == (
        "Test item",
        Decimal("7.25"),
        True,
    )

    # Known, but the price change has not arrived and the snapshot is past its bound.
    product_id = await shop.new_product(stock=10, price="10.00")
    await feed.deliver(*await _published(shop, product_id))
    await _change(shop, product_id, price="11.00")
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "10.00"  # still fresh
    await _age(shop, product_id, timedelta(seconds=DEFAULT_SNAPSHOT_MAX_AGE + 60))
    before = utc_now()
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "11.00"
    refreshed = await _snapshot(shop, product_id)
    assert refreshed is not None
    assert refreshed["price"] == Decimal("11.00")
    assert refreshed["refreshed_at"] >= before - timedelta(milliseconds=1)

    # The answer made it fresh again: no call needed; stale again, the call is made (and
    # fails, the catalog being down).
    await shop.servers["product"].stop()
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "11.00"
    await _age(shop, product_id, timedelta(seconds=DEFAULT_SNAPSHOT_MAX_AGE + 60))
    down = await _order(shop, product_id, 1)
    assert down.status_code == 503, down.text
    assert down.json()["detail"] == "the product catalog is unavailable"


async def test_an_answer_older_than_the_snapshot_still_refreshes_it(shop: Shop, feed: Feed) -> None:
    """The values stay those of the newer event; the answer still shows them current."""
    product_id = await shop.new_product(stock=5, price="10.00")
    [created] = await _published(shop, product_id)
    # An event stamped later than the product's updated_at (a product host's clock ahead).
    later = created.model_copy(
        update={"id": uuid.uuid4(), "timestamp": utc_now() + timedelta(minutes=1)}
    )
    ahead = Event.from_bytes(later.to_bytes())
    await feed.deliver(ahead)
    await _age(shop, product_id, timedelta(seconds=DEFAULT_SNAPSHOT_MAX_AGE + 60))
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "10.00"  # asked
    row = await _snapshot(shop, product_id)
    assert row is not None and row["changed_at"] == ahead.timestamp
    await shop.servers["product"].stop()
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "10.00"


async def test_an_older_or_redelivered_event_does_not_roll_the_price_back(
    shop: Shop, feed: Feed
) -> None:
    product_id = await shop.new_product(stock=5, price="10.00")
    await _change(shop, product_id, price="11.00")
    await _change(shop, product_id, price="12.00")
    events = await _published(shop, product_id)
    _, updated_11, changed_11, _, changed_12 = events
    assert updated_11.timestamp < changed_12.timestamp
    await feed.deliver(*events)
    newest = await _snapshot(shop, product_id)
    assert newest is not None and newest["price"] == Decimal("12.00")

    # The same events again (a redelivery), and copies of the older ones under new ids (a
    # replay, which the consumer's dedup does not catch): the newest price stays.
    replayed = [event.model_copy(update={"id": uuid.uuid4()}) for event in events[:3]]
    await feed.deliver(changed_11, updated_11, *replayed)
    assert feed.consumer.stats.duplicates == 2
    row = await _snapshot(shop, product_id)
    assert row is not None
    assert (row["price"], row["changed_at"], row["refreshed_at"]) == (
        Decimal("12.00"),
        newest["changed_at"],
        newest["refreshed_at"],
    )
    await shop.servers["product"].stop()
    assert _line(await _order(shop, product_id, 1))["unit_price"] == "12.00"


async def test_a_deleted_or_inactive_product_is_refused_without_a_call(
    shop: Shop, feed: Feed
) -> None:
    withdrawn = await shop.new_product(stock=5)
    await _change(shop, withdrawn, is_active=False)
    deleted = await shop.new_product(stock=5)
    async with shop.client("product") as client:
        gone = await client.delete(f"/api/products/{deleted}", headers=shop.admin)
    assert gone.status_code == 204, gone.text
    await feed.deliver(*await _published(shop, withdrawn), *await _published(shop, deleted))
    withdrawn_row = await _snapshot(shop, withdrawn)
    deleted_row = await _snapshot(shop, deleted)
    assert withdrawn_row is not None and withdrawn_row["is_active"] is False
    assert deleted_row is not None and deleted_row["deleted"] is True
    await shop.servers["product"].stop()

    refused = await _order(shop, withdrawn)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == f"product {withdrawn} is not for sale"
    missing = await _order(shop, deleted)
    assert missing.status_code == 422, missing.text
    assert missing.json()["detail"] == f"product {deleted} does not exist"
    # Deletion is final: refused without a call even once the snapshot is old.
    await _age(shop, deleted, timedelta(days=1))
    assert (await _order(shop, deleted)).status_code == 422
    assert (await shop.stock(withdrawn)) == (5, 0) and (await shop.stock(deleted)) == (5, 0)


async def test_a_product_not_for_sale_from_the_product_service_is_refused(shop: Shop) -> None:
    product_id = await shop.new_product(stock=5)
    await _change(shop, product_id, is_active=False)
    refused = await _order(shop, product_id)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == f"product {product_id} is not for sale"
    row = await _snapshot(shop, product_id)
    assert row is not None and row["is_active"] is False  # the answer is kept


async def test_a_zero_bound_asks_for_every_order(
    tmp_path: Path, issuer: TokenIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SNAPSHOT_MAX_AGE_VARIABLE, "0")
    async with running_shop("sqlite", tmp_path, issuer) as shop:
        assert shop.app("order").state.product_snapshot_max_age == timedelta(0)
        product_id = await shop.new_product(stock=5, price="10.00")
        assert _line(await _order(shop, product_id, 1))["unit_price"] == "10.00"
        assert await _snapshot(shop, product_id) is not None
        await shop.servers["product"].stop()
        down = await _order(shop, product_id, 1)
        assert down.status_code == 503, down.text


def test_the_bound_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SNAPSHOT_MAX_AGE_VARIABLE, raising=False)
    assert snapshot_max_age() == timedelta(minutes=5)
    monkeypatch.setenv(SNAPSHOT_MAX_AGE_VARIABLE, " 2.5 ")
    assert snapshot_max_age() == timedelta(seconds=2.5)
    for bad in ("soon", "-1", "nan", "inf", "86401"):
        monkeypatch.setenv(SNAPSHOT_MAX_AGE_VARIABLE, bad)
        with pytest.raises(SnapshotConfigError) as refused:
            snapshot_max_age()
        assert str(refused.value) == (
            f"{SNAPSHOT_MAX_AGE_VARIABLE}={bad!r} is not a number of seconds from 0 to 86400"
        )
