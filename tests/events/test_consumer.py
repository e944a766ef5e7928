"""EventConsumer rules that need no real broker: wiring checks, retries, infrastructure errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from runtime.correlation import get_correlation_id
from runtime.events.consumer import EventConsumer, EventContext, Outcome
from runtime.events.envelope import Event, EventMetadata
from runtime.events.memory import MemoryBus
from runtime.events.registry import EventRegistry, EventValidationError
from runtime.events.topics import dlq_topic
from tests.events.conftest import DatabaseFactory
from tests.events.support import MemoryHarness, Service, applied, eventually, order, record


@pytest.fixture
async def service(
    sqlite_databases: DatabaseFactory, registry: EventRegistry
) -> AsyncIterator[Service]:
    made = Service("billing", sqlite_databases("billing"), registry, MemoryHarness())
    await made.create_tables()
    yield made
    await made.close()


def _event(registry: EventRegistry, correlation: str = "c-9") -> Event:
    return Event(
        type="order.placed",
        data=registry.validate("order.placed", order()),
        metadata=EventMetadata(correlation_id=correlation, service="orders"),
    )


async def _deliver(service: Service, event: Event) -> None:
    harness = service.harness
    assert isinstance(harness, MemoryHarness)
    await harness.bus.producer().send(
        service.registry.get(event.type).topic, b"k", event.to_bytes()
    )


def test_wiring_mistakes_fail_at_construction(service: Service) -> None:
    bus = MemoryBus()
    registry = service.registry
    topic = registry.get("order.placed").topic
    producer = bus.producer()
    with pytest.raises(EventValidationError, match=r"unknown event type 'order\.lost'"):
        EventConsumer(
            service.database,
            registry,
            bus.source("billing", [topic]),
            producer,
            service="billing",
            handlers={"order.lost": record},
        )
    with pytest.raises(ValueError, match="each service is one consumer group"):
        EventConsumer(
            service.database,
            registry,
            bus.source("someone-else", [topic]),
            producer,
            service="billing",
            handlers={"order.placed": record},
        )
    with pytest.raises(ValueError, match="not subscribed to"):
        EventConsumer(
            service.database,
            registry,
            bus.source("billing", ["elsewhere"]),
            producer,
            service="billing",
            handlers={"order.placed": record},
        )


async def test_a_failed_attempt_leaves_no_trace_and_the_retry_applies_once(
    service: Service,
) -> None:
    calls: list[str | None] = []

    async def flaky(ctx: EventContext) -> None:
        calls.append(get_correlation_id())
        await record(ctx)  # written, then rolled back with the failing attempt
        if len(calls) < 3:
            raise RuntimeError("downstream hiccup")

    consumer = service.consumer({"order.placed": flaky}, max_attempts=5)
    event = _event(service.registry, correlation="req-77")
    await _deliver(service, event)
    [message] = await service.harness.read_topic(service.registry.get("order.placed").topic, 1)
    assert await consumer.process(message) == Outcome.APPLIED
    assert calls == ["req-77"] * 3  # handlers see the event's correlation id
    assert [row.event_id for row in await service.applied_rows()] == [event.id]
    assert consumer.stats.retries == 2
    assert get_correlation_id() is None  # and it does not leak out of the handler
    assert await consumer.process(message) == Outcome.DUPLICATE


async def test_database_outages_are_waited_out_not_dead_lettered(service: Service) -> None:
    failures = 0

    async def database_down_for_a_while(ctx: EventContext) -> None:
        nonlocal failures
        if failures < 6:  # more than max_attempts
            failures += 1
            raise OperationalError("INSERT ...", {}, ConnectionRefusedError("db restarting"))
        await ctx.session.execute(
            insert(applied).values(event_id=ctx.event.id, event_type=ctx.event.type, order_id="x")
        )

    consumer = service.consumer({"order.placed": database_down_for_a_while}, max_attempts=2)
    event = _event(service.registry)
    await _deliver(service, event)
    topic = service.registry.get("order.placed").topic
    [message] = await service.harness.read_topic(topic, 1)
    assert await consumer.process(message) == Outcome.APPLIED
    assert consumer.stats.dead_lettered == 0
    harness = service.harness
    assert isinstance(harness, MemoryHarness)
    assert harness.bus.messages(dlq_topic(topic)) == []


async def test_a_consumer_keeps_trying_to_start_while_the_broker_is_down(
    service: Service,
) -> None:
    harness = service.harness
    assert isinstance(harness, MemoryHarness)
    consumer = service.consumer({"order.placed": record})
    harness.bus.available = False
    await consumer.start()

    async def unhealthy() -> bool:
        return not consumer.healthy

    await eventually(unhealthy, what="consumer reporting the broker down")
    harness.bus.available = True
    await _deliver(service, _event(service.registry))

    async def applied_once() -> bool:
        return consumer.stats.applied == 1

    await eventually(applied_once, what="event applied after the broker came back")
    assert consumer.healthy
    await consumer.stop()
    assert not consumer.healthy and not consumer.running


async def test_an_idle_consumer_notices_the_broker_going_away(service: Service) -> None:
    harness = service.harness
    assert isinstance(harness, MemoryHarness)
    consumer = service.consumer({"order.placed": record}, ping_interval=0.05)
    await consumer.start()

    async def healthy() -> bool:
        return consumer.healthy

    async def unhealthy() -> bool:
        return not consumer.healthy

    await eventually(healthy, what="consumer healthy")
    harness.bus.available = False
    await eventually(unhealthy, what="consumer reporting the broker down")
    harness.bus.available = True
    await eventually(healthy, what="consumer healthy again")


async def test_a_fetched_batch_is_applied_in_one_transaction(service: Service) -> None:
    """Five waiting events, one fetch: one claim and one commit for all (each used to cost
    its own)."""
    events = [_event(service.registry, correlation=f"batch-{i}") for i in range(5)]
    for event in events:
        await _deliver(service, event)
    commits: list[int] = []
    claims: list[str] = []
    engine = service.database.engine.sync_engine
    sa_event.listen(engine, "commit", lambda *_: commits.append(1))

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if statement.startswith("INSERT INTO processed_events"):
            claims.append(statement)

    sa_event.listen(engine, "before_cursor_execute", seen)
    consumer = service.consumer({"order.placed": record})
    await consumer.start()

    async def all_applied() -> bool:
        return len(await service.applied_rows()) == 5

    await eventually(all_applied, what="the batch applied")
    await consumer.stop()
    assert [row.event_id for row in await service.applied_rows()] == [e.id for e in events]
    assert len(commits) == 1
    assert len(claims) == 1  # the five claimed in one statement
    assert (consumer.stats.applied, consumer.stats.duplicates) == (5, 0)


async def test_a_failing_handler_in_a_batch_costs_the_others_nothing(service: Service) -> None:
    """The batch is undone and taken one by one: the good events are applied once each, the
    bad one is tried exactly max_attempts times (its try in the batch counts) and
    dead-lettered."""
    events = [_event(service.registry, correlation=f"mixed-{i}") for i in range(4)]
    bad = events[1].id
    calls: list[object] = []

    async def fragile(ctx: EventContext) -> None:
        calls.append(ctx.event.id)
        await record(ctx)
        if ctx.event.id == bad:
            raise RuntimeError("cannot handle this one")

    for event in events:
        await _deliver(service, event)
    consumer = service.consumer({"order.placed": fragile}, max_attempts=2)
    await consumer.start()
    topic = service.registry.get("order.placed").topic
    harness = service.harness
    assert isinstance(harness, MemoryHarness)

    async def settled() -> bool:
        dead = len(harness.bus.messages(dlq_topic(topic)))
        return dead == 1 and len(await service.applied_rows()) == 3

    await eventually(settled, what="the bad event dead-lettered, the others applied")
    await consumer.stop()
    assert [row.event_id for row in await service.applied_rows()] == [
        e.id for e in events if e.id != bad
    ]
    assert calls.count(bad) == 2
    assert consumer.stats.dead_lettered == 1 and consumer.stats.applied == 3
