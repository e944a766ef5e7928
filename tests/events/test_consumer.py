"""EventConsumer rules that need no real broker: wiring checks, retries, infrastructure errors;
and its metrics, the lag on the embedded broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.correlation import get_correlation_id
from cloudretail.runtime.events.broker import EmbeddedBroker
from cloudretail.runtime.events.consumer import EventConsumer, EventContext, Outcome
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.outbox import publish
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.tables import create_event_tables
from cloudretail.runtime.events.topics import dlq_topic
from cloudretail.runtime.events.transport import Message
from cloudretail.runtime.metrics import EventMetrics
from cloudretail.runtime.service_events import ServiceEvents
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.exc import OperationalError

from tests.events.conftest import DatabaseFactory
from tests.events.support import (
    MemoryHarness,
    Service,
    TansuHarness,
    applied,
    domain,
    eventually,
    order,
    record,
)


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


async def _deliver(service: Service, event: Event, topic: str | None = None) -> None:
    harness = service.harness
    assert isinstance(harness, MemoryHarness)
    await harness.bus.producer().send(
        topic or service.registry.get(event.type).topic, b"k", event.to_bytes()
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
    registry = CollectorRegistry()
    consumer = service.consumer(
        {"order.placed": fragile}, max_attempts=2, metrics=EventMetrics(registry)
    )
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
    # The try in the batch was the bad event's first: the one after it is a retry.
    counts = _samples(registry, "consumer_events_total")
    group = service.name
    assert counts[(group, "retried", topic)] == consumer.stats.retries == 1
    assert counts[(group, "dead_lettered", topic)] == 1
    assert counts[(group, "applied", topic)] == 3


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    """A family's samples from the rendered text, by their label values (sorted by name)."""
    text = generate_latest(registry).decode()
    return {
        tuple(value for _, value in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


async def test_each_outcome_is_counted_for_the_group_and_topic(service: Service) -> None:
    """applied, retried, duplicate, skipped and dead_lettered, one message at a time."""
    registry = CollectorRegistry()
    failures: list[int] = []

    async def fails_once(ctx: EventContext) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("downstream hiccup")
        await record(ctx)

    consumer = service.consumer(
        {"order.placed": fails_once}, max_attempts=3, metrics=EventMetrics(registry)
    )
    topic = service.registry.get("order.placed").topic
    group = service.name
    # Every outcome of the group's topic is there from the start, at 0.
    assert _samples(registry, "consumer_events_total") == {
        (group, outcome, topic): 0.0
        for outcome in ("applied", "duplicate", "skipped", "dead_lettered", "retried")
    }
    good = _event(service.registry)
    other = Event(
        type="order.archived",
        data={"order_id": str(uuid.uuid4())},
        metadata=EventMetadata(correlation_id="c", service="orders"),
    )
    invalid = Event(
        type="order.placed",
        data={"order_id": "not-a-uuid"},
        metadata=EventMetadata(correlation_id="c", service="rogue"),
    )
    for event in (good, good, other, invalid):
        await _deliver(service, event, topic)
    messages = await service.harness.read_topic(topic, 4)
    assert [await consumer.process(message) for message in messages] == [
        Outcome.APPLIED,
        Outcome.DUPLICATE,
        Outcome.SKIPPED,
        Outcome.DEAD_LETTERED,
    ]
    counts = _samples(registry, "consumer_events_total")
    assert counts == {
        (group, "applied", topic): 1.0,
        (group, "duplicate", topic): 1.0,
        (group, "skipped", topic): 1.0,
        (group, "dead_lettered", topic): 1.0,
        (group, "retried", topic): 1.0,
    }
    stats = consumer.stats
    assert (stats.applied, stats.duplicates, stats.skipped, stats.dead_lettered) == (1, 1, 1, 1)
    assert stats.retries == 1


async def test_a_batch_counts_its_outcomes_per_topic_and_reports_the_lag(
    service: Service,
) -> None:
    """One fetch, one transaction across two topics: each topic's outcomes counted apart."""
    registry = CollectorRegistry()
    payment = Event(
        type="payment.completed",
        data=service.registry.validate(
            "payment.completed",
            {"payment_id": uuid.uuid4(), "order_id": uuid.uuid4(), "amount": "3.00"},
        ),
        metadata=EventMetadata(correlation_id="c", service="payments"),
    )
    unhandled = Event(
        type="order.archived",
        data={"order_id": str(uuid.uuid4())},
        metadata=EventMetadata(correlation_id="c", service="orders"),
    )
    for event in (_event(service.registry), _event(service.registry), payment, payment):
        await _deliver(service, event)
    await _deliver(service, unhandled, service.registry.get("order.placed").topic)
    consumer = service.consumer(
        {"order.placed": record, "payment.completed": record}, metrics=EventMetrics(registry)
    )
    await consumer.start()

    async def all_seen() -> bool:
        return len(await service.applied_rows()) == 3 and consumer.stats.skipped == 1

    await eventually(all_seen, what="the batch applied")
    await consumer.stop()
    assert consumer.stats.retries == 0  # the batch went through whole
    orders = service.registry.get("order.placed").topic
    payments = service.registry.get("payment.completed").topic
    counts = _samples(registry, "consumer_events_total")
    group = service.name
    assert counts[(group, "applied", orders)] == 2
    assert counts[(group, "skipped", orders)] == 1
    assert counts[(group, "duplicate", orders)] == 0
    assert counts[(group, "applied", payments)] == 1
    assert counts[(group, "duplicate", payments)] == 1
    # The memory bus reports lag as Kafka would; everything was read, so 0 where data was.
    lag = _samples(registry, "consumer_lag_messages")
    assert lag, "no lag reported"
    assert set(lag.values()) == {0.0}
    assert {(topic, group_label) for group_label, _, topic in lag} >= {
        (orders, group),
        (payments, group),
    }


async def test_the_lag_comes_from_the_fetch_on_the_embedded_broker(
    embedded_broker: EmbeddedBroker, sqlite_databases: DatabaseFactory, registry: EventRegistry
) -> None:
    """Five records on one partition, fetched two at a time: after the first fetch the
    group is three behind the high watermark; once all are handled, none."""
    harness = TansuHarness(embedded_broker)
    await harness.prepare_topics(registry)
    service = Service(f"lag-{uuid.uuid4().hex[:6]}", sqlite_databases("lag"), registry, harness)
    await service.create_tables()
    metrics_registry = CollectorRegistry()
    gate = asyncio.Event()
    fetched: list[list[Message]] = []

    async def held(ctx: EventContext) -> None:
        await gate.wait()  # the consumer stays on its first batch until the test has looked
        await record(ctx)

    consumer = service.consumer(
        {"order.placed": held}, batch_size=2, metrics=EventMetrics(metrics_registry)
    )
    fetch = consumer.source.fetch

    async def recording_fetch(timeout: float, max_records: int) -> list[Message]:
        messages = await fetch(timeout, max_records)
        if messages:
            fetched.append(messages)
        return messages

    consumer.source.fetch = recording_fetch  # type: ignore[method-assign]
    topic = registry.get("order.placed").topic
    producer = harness.producer()
    for _ in range(5):
        await producer.send(topic, b"one-key", _event(registry).to_bytes())
    try:
        await consumer.start()

        async def first_fetch() -> bool:
            return bool(fetched)

        await eventually(first_fetch, timeout=20, what="the first fetch")
        [first] = fetched
        partition = first[0].partition
        assert [message.offset for message in first] == list(range(len(first)))
        key = (service.name, str(partition), topic)

        async def lag_reported() -> bool:
            return key in _samples(metrics_registry, "consumer_lag_messages")

        await eventually(lag_reported, what="the lag after the first fetch")
        assert _samples(metrics_registry, "consumer_lag_messages")[key] == 5 - len(first) > 0
        gate.set()

        async def caught_up() -> bool:
            done = len(await service.applied_rows()) == 5
            return done and _samples(metrics_registry, "consumer_lag_messages").get(key) == 0

        await eventually(caught_up, timeout=20, what="the lag back to 0")
    finally:
        gate.set()
        await service.close()
        await harness.close()


async def test_a_service_app_reports_its_events_into_its_own_metrics(
    embedded_broker: EmbeddedBroker, registry: EventRegistry, tmp_path: Any
) -> None:
    """ServiceEvents wires the relay and the consumer to the app's registry (/metrics)."""
    harness = TansuHarness(embedded_broker)
    await harness.prepare_topics(registry)
    name = f"metered-{uuid.uuid4().hex[:6]}"
    settings = ServiceSettings(
        service_name=name,
        port=1,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/metered.db",
        service_token="t" * 32,
        kafka_bootstrap_servers=embedded_broker.bootstrap_servers,
        kafka_idempotent=False,
    )
    events = ServiceEvents(settings, registry, handlers={"order.placed": record})
    app = create_service_app(settings, lifespan=events.lifespan)
    database = app.state.database
    async with database.engine.begin() as connection:
        await create_event_tables(connection)
        await connection.run_sync(domain.create_all)
    topic = registry.get("order.placed").topic
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        async with database.session() as session:
            await publish(session, registry, "order.placed", order(), service=name)

        async def counted() -> bool:
            text = (await client.get("/metrics")).text
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            consumed = (("group", name), ("outcome", "applied"), ("topic", topic))
            return (
                samples.get(("outbox_sent_total", ())) == 1
                and samples.get(("consumer_events_total", consumed)) == 1
            )

        await eventually(counted, timeout=30, what="the event sent and applied, in /metrics")
    await harness.close()


async def test_a_service_that_only_consumes_runs_no_outbox_relay(
    embedded_broker: EmbeddedBroker,
    registry: EventRegistry,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A consumer-only service has no outbox table (its migrations make none): it consumes,
    is healthy, and no relay polls a table that is not there."""
    from cloudretail.runtime.events.tables import processed_events

    harness = TansuHarness(embedded_broker)
    await harness.prepare_topics(registry)
    name = f"reader-{uuid.uuid4().hex[:6]}"
    settings = ServiceSettings(
        service_name=name,
        port=1,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/reader.db",
        service_token="t" * 32,
        kafka_bootstrap_servers=embedded_broker.bootstrap_servers,
        kafka_idempotent=False,
    )
    events = ServiceEvents(settings, registry, handlers={"order.placed": record}, publishes=False)
    app = create_service_app(settings, lifespan=events.lifespan)
    database = app.state.database
    async with database.engine.begin() as connection:
        await connection.run_sync(processed_events.create, checkfirst=True)
        await connection.run_sync(domain.create_all)
    async with app.router.lifespan_context(app):
        assert events.relay is None and events.consumer is not None
        assert await events.healthy()
        await asyncio.sleep(6)  # past the relay's 5 s backlog poll, were there one
    await harness.close()
    assert not [r for r in caplog.records if r.levelno >= 40], [
        r.getMessage() for r in caplog.records if r.levelno >= 40
    ]
