"""Replaying topics (`cloudretail.runtime.events.replay`) on the real Kafka-protocol broker (tansu):
every retained event up to the ends found when the replay opened goes through a consumer
into a database; what is published later is left alone, what is already there is skipped,
and what cannot be applied is reported, not sent anywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from cloudretail.runtime.events.broker import EmbeddedBroker
from cloudretail.runtime.events.consumer import EventContext, Handler
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.registry import EventRegistry
from cloudretail.runtime.events.replay import EventReplay
from cloudretail.runtime.events.tables import processed_events
from cloudretail.runtime.events.transport import BrokerUnavailable, OutgoingMessage, Producer
from sqlalchemy import func, select

from tests.events.conftest import DatabaseFactory
from tests.events.support import ServiceFactory, TansuHarness, make_registry, order, record

HANDLERS: dict[str, Handler] = {"order.placed": record, "payment.completed": record}


@pytest.fixture
async def harness(embedded_broker: EmbeddedBroker) -> AsyncIterator[TansuHarness]:
    harness = TansuHarness(embedded_broker)
    yield harness
    await harness.close()


@pytest.fixture
def databases(sqlite_databases: DatabaseFactory) -> DatabaseFactory:
    return sqlite_databases


async def send(producer: Producer, registry: EventRegistry, kind: str, data: Any) -> Event:
    item = Event(
        type=kind,
        data=registry.validate(kind, data),
        metadata=EventMetadata(correlation_id="replay-test", service="test"),
    )
    key = registry.key_of(kind, item.data).encode()
    await producer.send(registry.get(kind).topic, key, item.to_bytes())
    return item


def payment(order_id: uuid.UUID) -> dict[str, Any]:
    return {"payment_id": uuid.uuid4(), "order_id": order_id, "amount": Decimal("12.50")}


def replay_of(
    harness: TansuHarness,
    registry: EventRegistry,
    service: str,
    handlers: dict[str, Handler] = HANDLERS,
) -> EventReplay:
    return EventReplay(
        registry,
        handlers,
        service=service,
        bootstrap_servers=harness.bootstrap,
        stall_timeout=30,
    )


async def test_a_replay_reads_up_to_where_the_topics_ended_when_it_opened(
    services: ServiceFactory, harness: TansuHarness, registry: EventRegistry
) -> None:
    service = await services("rebuilt")
    producer = harness.producer()
    # One key: one partition, which the late event joins after the last of these.
    key = uuid.uuid4()
    placed = [await send(producer, registry, "order.placed", order(key)) for _ in range(7)]
    paid = [
        await send(producer, registry, "payment.completed", payment(uuid.uuid4())) for _ in range(2)
    ]
    replay = replay_of(harness, registry, service.name)
    await replay.open()
    late = await send(producer, registry, "order.placed", order(key))  # after the start

    seen: list[dict[str, tuple[int, int]]] = []
    report = await replay.run(
        service.database,
        lambda topics: seen.append({t.topic: (t.handled, t.total) for t in topics}),
    )

    rows = await service.applied_rows()
    assert sorted(row.event_id for row in rows) == sorted(e.id for e in [*placed, *paid])
    assert late.id not in {row.event_id for row in rows}
    assert (report.applied, report.duplicates, report.dead_letters) == (9, 0, ())
    orders, payments = registry.get("order.placed").topic, registry.get("payment.completed").topic
    assert {t.topic: (t.handled, t.total) for t in report.topics} == {
        orders: (7, 7),
        payments: (2, 2),
    }
    assert seen[-1] == {orders: (7, 7), payments: (2, 2)}
    assert report.missing_topics == ()

    # Run again (a replay stopped half way, say): what is there is skipped, the event
    # published since is now within the ends and applied; nothing twice.
    again = await replay_of(harness, registry, service.name).run(service.database)
    assert (again.applied, again.duplicates) == (1, 9)
    rows = await service.applied_rows()
    assert len(rows) == 10 and len({row.event_id for row in rows}) == 10
    assert await service.count(processed_events) == 10


async def test_a_partition_ending_in_a_batch_of_several_is_read_to_its_last(
    services: ServiceFactory, harness: TansuHarness, registry: EventRegistry
) -> None:
    """The outbox relay sends a transaction's events as one batch; when such a batch is the
    last thing on a partition, tansu's ListOffsets answers one past the batch's first record
    instead of its last. The replay must still read all of them."""
    service = await services("rebuilt")
    key = uuid.uuid4()
    events = [
        Event(
            type="order.placed",
            data=registry.validate("order.placed", order(key, total)),
            metadata=EventMetadata(correlation_id="replay-test", service="test"),
        )
        for total in ("1.00", "2.00", "3.00")
    ]
    topic = registry.get("order.placed").topic
    outcomes = await harness.producer().send_batch(
        [OutgoingMessage(topic, str(key).encode(), item.to_bytes()) for item in events]
    )
    assert outcomes == [None, None, None]
    report = await replay_of(harness, registry, service.name).run(service.database)
    assert report.applied == 3
    rows = await service.applied_rows()
    assert sorted(row.event_id for row in rows) == sorted(item.id for item in events)


async def test_an_event_that_cannot_be_applied_is_reported_and_the_rest_applied(
    services: ServiceFactory, harness: TansuHarness, registry: EventRegistry
) -> None:
    service = await services("rebuilt")
    producer = harness.producer()

    async def refuse_66(ctx: EventContext) -> None:
        if getattr(ctx.payload, "total", None) == Decimal("66.00"):
            raise ValueError("a total of 66.00 is refused")
        await record(ctx)

    good = [await send(producer, registry, "order.placed", order()) for _ in range(3)]
    bad = await send(producer, registry, "order.placed", order(total="66.00"))
    replay = EventReplay(
        registry,
        {"order.placed": refuse_66},
        service=service.name,
        bootstrap_servers=harness.bootstrap,
        stall_timeout=30,
    )
    report = await replay.run(service.database)

    assert report.applied == 3
    [failed] = report.dead_letters
    assert failed.topic == registry.get("order.placed").topic
    assert failed.error == "ValueError: a total of 66.00 is refused"
    assert failed.offset >= 0
    rows = await service.applied_rows()
    assert sorted(row.event_id for row in rows) == sorted(e.id for e in good)
    assert bad.id not in {row.event_id for row in rows}


async def test_topics_the_broker_lacks_are_reported_not_waited_for(
    services: ServiceFactory, harness: TansuHarness
) -> None:
    service = await services("rebuilt")
    absent = make_registry(f"absent{uuid.uuid4().hex[:8]}")  # topics never created
    report = await replay_of(harness, absent, service.name).run(service.database)
    assert sorted(report.missing_topics) == sorted(absent.topics())
    assert (report.applied, report.topics) == (0, ())
    async with service.database.engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(processed_events)) == 0


async def test_an_unreachable_broker_is_told_at_open() -> None:
    replay = EventReplay(
        make_registry("nowhere"),
        HANDLERS,
        service="rebuilt",
        bootstrap_servers="127.0.0.1:1",
    )
    with pytest.raises(BrokerUnavailable, match=r"cannot reach Kafka at 127\.0\.0\.1:1"):
        await replay.open()
