"""Behaviour of publish -> outbox -> relay -> broker -> consumer, written once.

Bound to each transport (MemoryBus, the embedded tansu broker) and database (SQLite,
PostgreSQL) by the Test* classes in test_flow.py, which provide the `harness` and `databases`
fixtures, in the style of FastStream's tests/brokers/base.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from cloudretail.runtime.correlation import correlation_id_var
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.outbox import publish
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.events.topics import dlq_topic
from sqlalchemy import select

from tests.events.support import BusHarness, ServiceFactory, eventually, order, record


def _headers(message: Any) -> dict[str, bytes]:
    return dict(message.headers)


class EventFlowCases:
    """Every case runs on every binding; transport or database specifics live elsewhere."""

    async def test_publish_lands_on_its_topic_in_the_seed_envelope(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        await orders.start_relay()
        order_id = uuid.uuid4()
        token = correlation_id_var.set("req-abc-123")
        try:
            event = await orders.publish("order.placed", order(order_id, "12.50"), user_id="u-7")
        finally:
            correlation_id_var.reset(token)

        [message] = await harness.read_topic(registry.get("order.placed").topic, expected=1)
        assert message.key == str(order_id).encode()
        wire = json.loads(message.value)
        assert set(wire) == {"id", "type", "timestamp", "version", "data", "metadata"}
        assert wire["id"] == str(event.id)
        assert wire["type"] == "order.placed"
        assert wire["version"] == "1"
        assert wire["timestamp"].endswith("Z")
        # Validated and JSON-safe: the UUID and the Decimal arrive as strings.
        assert wire["data"] == {"order_id": str(order_id), "customer": "ada", "total": "12.50"}
        assert wire["metadata"] == {
            "correlationId": "req-abc-123",
            "causationId": None,
            "service": orders.name,
            "userId": "u-7",
            "traceparent": None,  # published outside any span
        }
        assert _headers(message)["event-type"] == b"order.placed"
        assert Event.from_bytes(message.value) == event

        async def stamped() -> bool:
            rows = await orders.outbox_rows()
            return bool(rows) and rows[0].sent_at is not None

        await eventually(stamped, what="outbox row stamped sent")
        assert orders.relay is not None and orders.relay.healthy

    async def test_same_event_delivered_twice_is_applied_once(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        billing = await services("billing")
        consumer = billing.consumer({"order.placed": record})
        await consumer.start()
        event = Event(
            type="order.placed",
            data=registry.validate("order.placed", order()),
            metadata=EventMetadata(correlation_id="c-1", service="orders"),
        )
        producer = harness.producer()
        topic = registry.get("order.placed").topic
        key = event.data["order_id"].encode()
        # The relay resending after a crash between ack and stamp looks exactly like this.
        await producer.send(topic, key, event.to_bytes())
        await producer.send(topic, key, event.to_bytes())

        async def both_seen() -> bool:
            return consumer.stats.applied + consumer.stats.duplicates >= 2

        await eventually(both_seen, what="both deliveries handled")
        assert consumer.stats.applied == 1
        assert consumer.stats.duplicates == 1
        rows = await billing.applied_rows()
        assert [row.event_id for row in rows] == [event.id]
        assert await billing.processed_count() == 1

    async def test_poison_event_goes_to_the_dlq_and_the_partition_moves_on(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        billing = await services("billing")
        await orders.start_relay()
        poison_order = uuid.uuid4()
        attempts: list[uuid.UUID] = []

        async def fragile(ctx: EventContext) -> None:
            if ctx.payload.order_id == poison_order:  # type: ignore[attr-defined]
                attempts.append(ctx.event.id)
                raise RuntimeError("cannot bill this order")
            await record(ctx)

        consumer = billing.consumer({"order.placed": fragile}, max_attempts=3)
        await consumer.start()
        # Same key for all: one partition, so the good events are queued behind the poison.
        shared_key = str(uuid.uuid4())
        poison = await orders.publish("order.placed", order(poison_order), key=shared_key)
        good = [await orders.publish("order.placed", order(), key=shared_key) for _ in range(3)]

        async def good_applied() -> bool:
            return len(await billing.applied_rows()) == 3

        await eventually(good_applied, what="events behind the poison applied")
        assert [row.event_id for row in await billing.applied_rows()] == [e.id for e in good]
        assert attempts == [poison.id] * 3

        topic = registry.get("order.placed").topic
        [dead] = await harness.read_topic(dlq_topic(topic), expected=1)
        assert Event.from_bytes(dead.value).id == poison.id
        assert dead.key == shared_key.encode()
        headers = _headers(dead)
        assert headers["attempts"] == b"3"
        assert b"cannot bill this order" in headers["error"]
        assert headers["original-topic"] == topic.encode()
        assert int(headers["original-offset"]) >= 0
        partition = int(headers["original-partition"])
        assert consumer.stats.dead_lettered == 1

        async def committed_past_everything() -> bool:
            offset = await harness.committed(billing.name, topic, partition)
            return offset is not None and offset >= int(headers["original-offset"]) + 4

        await eventually(committed_past_everything, what="offset committed past the poison")

    async def test_offset_is_committed_only_after_the_handler_transaction(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        shipping = await services("shipping")
        await orders.start_relay()
        key = str(uuid.uuid4())
        events = [await orders.publish("order.placed", order(), key=key) for _ in range(5)]
        topic = registry.get("order.placed").topic
        [first, *_] = await harness.read_topic(topic, expected=5)
        partition = first.partition

        entered = asyncio.Event()

        async def hangs_on_third(ctx: EventContext) -> None:
            await record(ctx)
            if ctx.event.id == events[2].id:
                entered.set()
                await asyncio.sleep(3600)  # "killed" here, inside the transaction

        crashing = shipping.consumer({"order.placed": hangs_on_third})
        await crashing.start()
        await asyncio.wait_for(entered.wait(), 15)
        # The third is mid-transaction: the events before it are committed in the database
        # (each in its own transaction) or not at all (in one batch with the third); the
        # offset must not cover any event the database does not have.
        kept = len(await shipping.applied_rows())
        assert kept in (0, 1, 2)
        committed = await harness.committed(shipping.name, topic, partition)
        assert committed is None or committed <= first.offset + kept

        await crashing.stop(timeout=0.1)  # cancels the handler: its transaction rolls back
        assert len(await shipping.applied_rows()) == kept
        committed = await harness.committed(shipping.name, topic, partition)
        assert committed is None or committed <= first.offset + kept
        redelivered_applied = kept - (0 if committed is None else committed - first.offset)

        survivor = shipping.consumer({"order.placed": record})
        await survivor.start()

        async def all_applied() -> bool:
            return len(await shipping.applied_rows()) == 5

        await eventually(all_applied, timeout=20, what="redelivered events applied")
        await asyncio.sleep(0.3)  # room for any wrong extra application to show up
        rows = await shipping.applied_rows()
        assert [row.event_id for row in rows] == [event.id for event in events]
        assert await shipping.processed_count() == 5
        # The redelivered, already-applied events were recognised, not applied again.
        assert survivor.stats.applied == 5 - kept
        assert survivor.stats.duplicates == redelivered_applied

    async def test_causation_and_correlation_flow_into_events_a_handler_publishes(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        payments = await services("payments")
        await orders.start_relay()
        await payments.start_relay()

        async def charge(ctx: EventContext) -> None:
            await record(ctx)
            placed = ctx.payload
            await ctx.publish(
                "payment.completed",
                {
                    "payment_id": uuid.uuid4(),
                    "order_id": placed.order_id,  # type: ignore[attr-defined]
                    "amount": placed.total,  # type: ignore[attr-defined]
                },
            )

        await payments.consumer({"order.placed": charge}).start()
        token = correlation_id_var.set("checkout-42")
        try:
            placed = await orders.publish("order.placed", order(), user_id="u-1")
        finally:
            correlation_id_var.reset(token)

        topic = registry.get("payment.completed").topic
        [message] = await harness.read_topic(topic, expected=1)
        completed = Event.from_bytes(message.value)
        assert completed.type == "payment.completed"
        assert completed.metadata.correlation_id == "checkout-42"
        assert completed.metadata.causation_id == str(placed.id)
        assert completed.metadata.service == payments.name
        assert completed.metadata.user_id == "u-1"
        assert message.key == str(placed.data["order_id"]).encode()

    async def test_broker_outage_fails_no_write_and_loses_no_event(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        billing = await services("billing")
        relay = await orders.start_relay()
        consumer = billing.consumer({"order.placed": record})
        await consumer.start()
        before = [await orders.publish("order.placed", order()) for _ in range(5)]

        async def applied_count(count: int) -> Any:
            async def check() -> bool:
                return len(await billing.applied_rows()) >= count

            return check

        await eventually(await applied_count(5), timeout=20, what="events before the outage")

        async with harness.outage():
            # The business writes all succeed while the broker is gone.
            during = [await orders.publish("order.placed", order()) for _ in range(50)]

            async def relay_noticed() -> bool:
                return not relay.healthy

            await eventually(relay_noticed, timeout=15, what="relay reporting the outage")
            rows = await orders.outbox_rows()
            unsent = [row for row in rows if row.sent_at is None]
            assert len(unsent) == 50
            assert any(row.attempts > 0 and row.last_error for row in unsent)

        await eventually(await applied_count(55), timeout=30, what="all 55 events applied")
        await asyncio.sleep(0.3)
        rows = await billing.applied_rows()
        ids = [row.event_id for row in rows]
        assert sorted(map(str, ids)) == sorted(str(e.id) for e in before + during)
        assert len(ids) == len(set(ids)) == 55
        assert await billing.processed_count() == 55

        async def relay_recovered() -> bool:
            return relay.healthy and all(r.sent_at for r in await orders.outbox_rows())

        await eventually(relay_recovered, what="relay healthy, outbox drained")

    async def test_events_of_one_key_are_applied_in_publish_order(
        self, services: ServiceFactory, registry: EventRegistry
    ) -> None:
        orders = await services("orders")
        billing = await services("billing")
        await orders.start_relay(batch_size=7)
        await billing.consumer({"order.placed": record}).start()
        order_id = uuid.uuid4()
        published = [await orders.publish("order.placed", order(order_id)) for _ in range(20)]

        async def all_applied() -> bool:
            return len(await billing.applied_rows()) == 20

        await eventually(all_applied, timeout=15, what="20 events applied")
        assert [row.event_id for row in await billing.applied_rows()] == [e.id for e in published]

    async def test_invalid_payload_is_refused_at_publish(self, services: ServiceFactory) -> None:
        orders = await services("orders")
        async with orders.database.session() as session:
            with pytest.raises(EventValidationError, match=r"order\.placed.*total"):
                await publish(
                    session,
                    orders.registry,
                    "order.placed",
                    {"order_id": uuid.uuid4(), "customer": "ada", "total": "lots"},
                    service=orders.name,
                )
            with pytest.raises(EventValidationError, match=r"unknown event type 'order\.lost'"):
                await publish(session, orders.registry, "order.lost", {}, service=orders.name)
        assert await orders.outbox_rows() == []

    async def test_invalid_payload_on_consume_goes_straight_to_the_dlq(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        billing = await services("billing")
        consumer = billing.consumer({"order.placed": record}, max_attempts=5)
        await consumer.start()
        topic = registry.get("order.placed").topic
        # A publisher with another idea of the payload (or no validation) sent these.
        bad = Event(
            type="order.placed",
            data={"order_id": "not-a-uuid", "customer": "ada"},
            metadata=EventMetadata(correlation_id="c", service="rogue"),
        )
        producer = harness.producer()
        await producer.send(topic, b"k", bad.to_bytes())
        await producer.send(topic, b"k", b"\x00 definitely not json")
        good = Event(
            type="order.placed",
            data=registry.validate("order.placed", order()),
            metadata=EventMetadata(correlation_id="c", service="orders"),
        )
        await producer.send(topic, b"k", good.to_bytes())

        dead = await harness.read_topic(dlq_topic(topic), expected=2)
        assert len(dead) == 2
        by_value = {message.value: _headers(message) for message in dead}
        assert by_value[bad.to_bytes()]["attempts"] == b"1"
        assert b"order_id" in by_value[bad.to_bytes()]["error"]
        assert b"not an event envelope" in by_value[b"\x00 definitely not json"]["error"]

        async def good_applied() -> bool:
            return len(await billing.applied_rows()) == 1

        await eventually(good_applied, what="the valid event behind them applied")
        assert [row.event_id for row in await billing.applied_rows()] == [good.id]
        assert consumer.stats.dead_lettered == 2

    async def test_event_types_without_a_handler_are_skipped_and_committed(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        billing = await services("billing")
        consumer = billing.consumer({"order.placed": record})
        await consumer.start()
        topic = registry.get("order.placed").topic
        other = Event(
            type="order.archived",
            data={"order_id": str(uuid.uuid4())},
            metadata=EventMetadata(correlation_id="c", service="orders"),
        )
        producer = harness.producer()
        await producer.send(topic, b"same-key", other.to_bytes())
        await producer.send(
            topic,
            b"same-key",
            Event(
                type="order.placed",
                data=registry.validate("order.placed", order()),
                metadata=EventMetadata(correlation_id="c", service="orders"),
            ).to_bytes(),
        )

        async def handled() -> bool:
            return consumer.stats.applied == 1

        await eventually(handled, what="the handled event applied")
        assert consumer.stats.skipped == 1
        assert consumer.stats.dead_lettered == 0
        [message] = [m for m in await harness.read_topic(topic, expected=2) if m.offset == 1]

        async def committed() -> bool:
            offset = await harness.committed(billing.name, topic, message.partition)
            return offset == 2

        await eventually(committed, what="offset committed past the skipped event")

    async def test_rolled_back_transaction_publishes_nothing(
        self, services: ServiceFactory, registry: EventRegistry, harness: BusHarness
    ) -> None:
        orders = await services("orders")
        await orders.start_relay()
        async with orders.database.sessionmaker() as session:
            await publish(session, registry, "order.placed", order(), service=orders.name)
            await session.rollback()
        kept = await orders.publish("order.placed", order())
        [message] = await harness.read_topic(registry.get("order.placed").topic, expected=1)
        assert Event.from_bytes(message.value).id == kept.id
        async with orders.database.engine.connect() as connection:
            ids = (await connection.execute(select(outbox.c.event_id))).scalars().all()
        assert ids == [kept.id]
