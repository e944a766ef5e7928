"""The outbox relay's own rules: wake-up on commit, retries, order, one sender per database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.envelope import Event
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.outbox import (
    ADVISORY_LOCK_KEY,
    MAX_EVENT_BYTES,
    OutboxRelay,
    publish,
    purge_sent,
)
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.events.transport import BrokerUnavailable
from cloudretail.runtime.metrics import EventMetrics
from prometheus_client import CollectorRegistry
from sqlalchemy import event as sa_event
from sqlalchemy import func, select, update

from tests.events.conftest import DatabaseFactory
from tests.events.support import MemoryHarness, Service, eventually, make_registry, order


@pytest.fixture
def bus() -> MemoryBus:
    return MemoryBus()


@pytest.fixture
async def sqlite_service(
    sqlite_databases: DatabaseFactory, registry: EventRegistry
) -> AsyncIterator[Service]:
    service = Service("orders", sqlite_databases("orders"), registry, MemoryHarness())
    await service.create_tables()
    yield service
    await service.close()


async def _publish_many(service: Service, count: int, keys: list[str] | None = None) -> list[Event]:
    events = []
    for index in range(count):
        key = keys[index % len(keys)] if keys else None
        events.append(await service.publish("order.placed", order(), key=key))
    return events


async def test_a_commit_wakes_the_relay_without_waiting_for_the_poll(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(sqlite_service.database, bus.producer(), poll_interval=30)
    await relay.start()
    try:
        await asyncio.sleep(0.1)  # relay now idle, waiting up to 30 s
        started = time.monotonic()
        event = await sqlite_service.publish("order.placed", order())
        topic = sqlite_service.registry.get("order.placed").topic

        async def arrived() -> bool:
            return len(bus.messages(topic)) == 1

        await eventually(arrived, timeout=2, what="the event on the bus")
        assert time.monotonic() - started < 1
        assert Event.from_bytes(bus.messages(topic)[0].value).id == event.id
    finally:
        await relay.stop()


async def test_a_session_publishing_many_events_wakes_once_per_commit(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(sqlite_service.database, bus.producer(), poll_interval=30)
    wakes: list[float] = []
    original = relay.wake

    def counting_wake() -> None:
        wakes.append(time.monotonic())
        original()

    relay.wake = counting_wake  # type: ignore[method-assign]
    await relay.start()
    try:
        async with sqlite_service.database.session() as session:
            for _ in range(5):
                await publish(
                    session, sqlite_service.registry, "order.placed", order(), service="orders"
                )
            assert wakes == []  # nothing before the commit
        assert len(wakes) == 1
        async with sqlite_service.database.session() as session:
            await publish(session, sqlite_service.registry, "order.placed", order(), service="o")
            await session.rollback()
        assert len(wakes) == 1  # a rolled-back transaction wakes no one
    finally:
        await relay.stop()


async def test_broker_errors_keep_rows_count_attempts_and_recover(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(sqlite_service.database, bus.producer())
    await _publish_many(sqlite_service, 3)
    bus.available = False
    for attempt in (1, 2):
        with pytest.raises(BrokerUnavailable):
            await relay.relay_once()
        rows = await sqlite_service.outbox_rows()
        assert [row.attempts for row in rows] == [attempt] * 3
        assert all(row.sent_at is None for row in rows)
        assert all(row.last_error == "memory bus is unavailable" for row in rows)
        assert not relay.healthy
    bus.available = True
    assert await relay.relay_once() == 3
    assert relay.healthy
    assert all(row.sent_at is not None for row in await sqlite_service.outbox_rows())
    assert await relay.relay_once() == 0


async def test_purge_removes_only_rows_sent_long_enough_ago(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(sqlite_service.database, bus.producer())
    await _publish_many(sqlite_service, 3)
    await relay.relay_once()
    kept = await sqlite_service.publish("order.placed", order())  # not sent yet
    assert await purge_sent(sqlite_service.database, older_than=timedelta(hours=1)) == 0
    assert await purge_sent(sqlite_service.database, older_than=timedelta(0)) == 3
    assert [row.event_id for row in await sqlite_service.outbox_rows()] == [kept.id]


async def test_rows_go_out_in_seq_order_batch_by_batch(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(sqlite_service.database, bus.producer(), batch_size=3)
    events = await _publish_many(sqlite_service, 7, keys=["same"])
    assert [await relay.relay_once() for _ in range(4)] == [3, 3, 1, 0]
    topic = sqlite_service.registry.get("order.placed").topic
    sent = [Event.from_bytes(message.value).id for message in bus.messages(topic)]
    assert sent == [event.id for event in events]


async def test_the_relay_reports_an_unreachable_broker_even_when_idle(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    relay = OutboxRelay(
        sqlite_service.database, bus.producer(), poll_interval=0.02, ping_interval=0.05
    )
    await relay.start()
    try:
        bus.available = False

        async def unhealthy() -> bool:
            return not relay.healthy

        await eventually(unhealthy, timeout=2, what="relay unhealthy")
        bus.available = True

        async def healthy() -> bool:
            return relay.healthy

        await eventually(healthy, timeout=2, what="relay healthy again")
    finally:
        await relay.stop()
    assert not relay.running


@pytest.fixture
async def postgres_services(
    postgres_databases: DatabaseFactory,
) -> AsyncIterator[tuple[Service, Database]]:
    registry = make_registry(f"pg{uuid.uuid4().hex[:6]}")
    service = Service("orders", postgres_databases("relay"), registry, MemoryHarness())
    await service.create_tables()
    # A second process's view of the same database: its own engine and pool.
    other = Database(service.database.url)
    yield service, other
    await other.dispose()
    await service.close()


async def test_a_relay_stands_by_while_another_holds_the_database_lock(
    postgres_services: tuple[Service, Database], bus: MemoryBus
) -> None:
    service, _ = postgres_services
    await _publish_many(service, 2)
    relay = OutboxRelay(service.database, bus.producer())
    dsn = service.database.url.set(drivername="postgresql").render_as_string(hide_password=False)
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_KEY)
        assert await relay.relay_once() == 0
        assert relay.standby
        assert all(row.sent_at is None for row in await service.outbox_rows())
        await holder.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_KEY)
        assert await relay.relay_once() == 2
        assert not relay.standby
    finally:
        await holder.close()


async def test_two_relays_on_one_postgres_database_send_each_event_once_in_order(
    postgres_services: tuple[Service, Database], bus: MemoryBus
) -> None:
    service, other_engine = postgres_services
    keys = [f"k{index}" for index in range(4)]
    relays = [
        OutboxRelay(service.database, bus.producer(), batch_size=5, poll_interval=0.01),
        OutboxRelay(other_engine, bus.producer(), batch_size=5, poll_interval=0.01),
    ]
    for relay in relays:
        await relay.start()
    try:
        events = await _publish_many(service, 60, keys=keys)
        topic = service.registry.get("order.placed").topic

        async def all_sent() -> bool:
            return len(bus.messages(topic)) >= 60

        await eventually(all_sent, timeout=15, what="60 events sent")
        await asyncio.sleep(0.1)
    finally:
        for relay in relays:
            await relay.stop()
    messages = bus.messages(topic)
    sent_ids = [Event.from_bytes(message.value).id for message in messages]
    assert len(sent_ids) == len(set(sent_ids)) == 60
    for key in keys:
        expected = [e.id for e, k in zip(events, keys * 15, strict=True) if k == key]
        got = [Event.from_bytes(m.value).id for m in messages if m.key == key.encode()]
        assert got == expected, f"order of key {key}"
    assert sum(relay.sent_total for relay in relays) == 60


async def test_an_event_too_large_for_the_broker_is_refused_at_publish(
    sqlite_service: Service,
) -> None:
    huge = order() | {"customer": "x" * (MAX_EVENT_BYTES + 1)}
    with pytest.raises(EventValidationError, match="bytes; the limit is"):
        await sqlite_service.publish("order.placed", huge)
    assert await sqlite_service.outbox_rows() == []


def _sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


def _written_ago(seconds: int) -> Any:
    """The oldest outbox row, as if written `seconds` ago."""
    first = select(func.min(outbox.c.seq)).scalar_subquery()
    written = datetime.now(UTC) - timedelta(seconds=seconds)
    return update(outbox).where(outbox.c.seq == first).values(created_at=written)


async def test_the_relay_counts_what_it_sends_and_measures_the_backlog(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    registry = CollectorRegistry()
    relay = OutboxRelay(sqlite_service.database, bus.producer(), metrics=EventMetrics(registry))
    await _publish_many(sqlite_service, 3)
    async with sqlite_service.database.engine.begin() as connection:
        # The first event has waited a minute and a half.
        await connection.execute(_written_ago(90))

    await relay.measure_backlog()
    assert _sample(registry, "outbox_pending_events") == 3
    age = _sample(registry, "outbox_oldest_pending_age_seconds")
    assert age is not None and 89 <= age < 150
    assert _sample(registry, "outbox_sent_total") == 0

    bus.available = False
    with pytest.raises(BrokerUnavailable):
        await relay.relay_once()
    assert _sample(registry, "outbox_sent_total") == 0  # not acked, not sent
    bus.available = True
    assert await relay.relay_once() == 3
    assert _sample(registry, "outbox_sent_total") == 3
    assert _sample(registry, "outbox_pending_events") == 3  # a gauge moves on a refresh only

    await relay.measure_backlog()
    assert _sample(registry, "outbox_pending_events") == 0
    assert _sample(registry, "outbox_oldest_pending_age_seconds") == 0


async def test_the_backlog_is_measured_on_a_timer_while_the_relay_runs(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    registry = CollectorRegistry()
    relay = OutboxRelay(
        sqlite_service.database,
        bus.producer(),
        metrics=EventMetrics(registry),
        backlog_interval=0.05,
        backoff_max=0.05,
    )
    bus.available = False  # what is published stays in the outbox
    await relay.start()
    try:
        await _publish_many(sqlite_service, 2)

        async def two_pending() -> bool:
            return _sample(registry, "outbox_pending_events") == 2

        await eventually(two_pending, timeout=2, what="the pending gauge refreshed")
        bus.available = True

        async def drained() -> bool:
            return _sample(registry, "outbox_pending_events") == 0

        await eventually(drained, timeout=2, what="the pending gauge back to 0")
        assert _sample(registry, "outbox_sent_total") == 2
    finally:
        await relay.stop()


async def test_the_backlog_query_follows_the_timer_not_the_relay_passes(
    sqlite_service: Service, bus: MemoryBus
) -> None:
    """Every commit that publishes wakes the relay: the backlog's count must not ride along.
    And stopping the relay ends the timer at once, however long its interval."""
    queries: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if "count(*)" in statement and "outbox" in statement:
            queries.append(statement)

    sa_event.listen(sqlite_service.database.engine.sync_engine, "before_cursor_execute", seen)
    registry = CollectorRegistry()
    relay = OutboxRelay(
        sqlite_service.database,
        bus.producer(),
        metrics=EventMetrics(registry),
        poll_interval=30,
        backlog_interval=3600,
    )
    await relay.start()
    topic = sqlite_service.registry.get("order.placed").topic
    try:
        for count in range(1, 6):
            await sqlite_service.publish("order.placed", order())

            async def sent(count: int = count) -> bool:
                return len(bus.messages(topic)) == count

            await eventually(sent, timeout=2, what=f"event {count} relayed")
        assert _sample(registry, "outbox_sent_total") == 5
        assert len(queries) == 1  # the one measurement at start
    finally:
        started = time.monotonic()
        await relay.stop()
    assert time.monotonic() - started < 1
    assert not [task for task in asyncio.all_tasks() if task.get_name() == "outbox-backlog"]


async def test_the_backlog_age_on_postgres(postgres_services: tuple[Service, Database]) -> None:
    """PostgreSQL hands back aware times (SQLite naive ones); the age is the same."""
    service, _ = postgres_services
    registry = CollectorRegistry()
    relay = OutboxRelay(service.database, MemoryBus().producer(), metrics=EventMetrics(registry))
    await _publish_many(service, 2)
    async with service.database.engine.begin() as connection:
        await connection.execute(_written_ago(90))
    backlog = await relay.measure_backlog()
    assert backlog.pending == 2
    assert _sample(registry, "outbox_pending_events") == 2
    age = _sample(registry, "outbox_oldest_pending_age_seconds")
    assert age is not None and 89 <= age < 150
