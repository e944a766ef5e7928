"""Shared pieces of the event tests: a small registry, a service under test, bus harnesses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.broker import EmbeddedBroker
from cloudretail.runtime.events.consumer import (
    EventConsumer,
    EventContext,
    Handler,
    consumer_topics,
)
from cloudretail.runtime.events.envelope import Event
from cloudretail.runtime.events.kafka import KafkaProducer, KafkaSource, message_of
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.outbox import OutboxRelay, publish
from cloudretail.runtime.events.registry import EventRegistry, EventType
from cloudretail.runtime.events.tables import create_event_tables, outbox, processed_events
from cloudretail.runtime.events.topics import TopicSpec, apply_topics, dlq_topic
from cloudretail.runtime.events.transport import Message, Producer, Source
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, Uuid, func, insert, select

PARTITIONS = 3


class OrderPlaced(BaseModel):
    order_id: uuid.UUID
    customer: str
    total: Decimal


class PaymentCompleted(BaseModel):
    payment_id: uuid.UUID
    order_id: uuid.UUID
    amount: Decimal


def make_registry(prefix: str) -> EventRegistry:
    """Two event types on two topics; the prefix keeps tests on a shared broker apart."""
    return EventRegistry(
        [
            EventType("order.placed", f"{prefix}.orders", "order_id", "1", OrderPlaced),
            EventType("payment.completed", f"{prefix}.payments", "order_id", "1", PaymentCompleted),
        ]
    )


def order(order_id: uuid.UUID | None = None, total: str = "12.50") -> dict[str, Any]:
    return {"order_id": order_id or uuid.uuid4(), "customer": "ada", "total": Decimal(total)}


# What handlers did, deliberately WITHOUT a unique constraint: an event applied twice shows up
# as two rows instead of being hidden by a constraint error.
domain = MetaData()
applied = Table(
    "applied",
    domain,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Uuid, nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("order_id", String(64), nullable=False),
)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class BusHarness(Protocol):
    """What the shared cases need from a transport; bound to MemoryBus and to tansu."""

    kind: str

    async def prepare_topics(self, registry: EventRegistry) -> None: ...

    def producer(self) -> Producer: ...

    def source(self, group_id: str, topics: list[str]) -> Source: ...

    async def read_topic(self, topic: str, expected: int, timeout: float = 10.0) -> list[Message]:
        """Everything on `topic`, read independently of the code under test."""
        ...

    async def committed(self, group_id: str, topic: str, partition: int) -> int | None: ...

    def outage(self) -> Any:
        """Async context manager: the broker is unreachable inside, back (empty or not) after."""
        ...

    async def close(self) -> None: ...


class MemoryHarness:
    kind = "memory"

    def __init__(self) -> None:
        self.bus = MemoryBus(partitions=PARTITIONS)

    async def prepare_topics(self, registry: EventRegistry) -> None:
        for topic in registry.topics():
            self.bus.create_topic(topic, PARTITIONS)
            self.bus.create_topic(dlq_topic(topic), PARTITIONS)

    def producer(self) -> Producer:
        return self.bus.producer()

    def source(self, group_id: str, topics: list[str]) -> Source:
        return self.bus.source(group_id, topics)

    async def read_topic(self, topic: str, expected: int, timeout: float = 10.0) -> list[Message]:
        async def enough() -> bool:
            return len(self.bus.messages(topic)) >= expected

        await eventually(enough, timeout, f"{expected} messages on {topic}")
        return self.bus.messages(topic)

    async def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        return self.bus.committed(group_id, topic, partition)

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        self.bus.available = False
        try:
            yield
        finally:
            self.bus.available = True

    async def close(self) -> None:
        return None


class TansuHarness:
    kind = "tansu"

    def __init__(self, broker: EmbeddedBroker) -> None:
        self.broker = broker
        self.bootstrap = broker.bootstrap_servers
        self._registries: list[EventRegistry] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []

    async def prepare_topics(self, registry: EventRegistry) -> None:
        self._registries.append(registry)
        await self._create_topics(registry)

    async def _create_topics(self, registry: EventRegistry) -> None:
        await apply_topics(
            self.bootstrap, [TopicSpec(topic, PARTITIONS) for topic in registry.topics()]
        )

    def producer(self) -> Producer:
        producer = KafkaProducer(self.bootstrap, idempotent=False, request_timeout_ms=2000)
        self._closers.append(producer.stop)
        return producer

    def source(self, group_id: str, topics: list[str]) -> Source:
        # Short sessions: tansu's first generation is 0, so aiokafka skips LeaveGroup and the
        # next member of the group waits for the old member's session to expire.
        source = KafkaSource(
            self.bootstrap,
            group_id,
            topics,
            session_timeout_ms=1000,
            heartbeat_interval_ms=200,
            fetch_max_wait_ms=100,
            metadata_max_age_ms=1000,
            check_cluster_id=True,
        )
        self._closers.append(source.stop)
        return source

    async def read_topic(self, topic: str, expected: int, timeout: float = 10.0) -> list[Message]:
        # A plain aiokafka consumer, no group, no runtime code: what any other client sees.
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            deadline = time.monotonic() + timeout
            partitions: set[int] = set()
            while not partitions:
                reader._client.add_topic(topic)
                await reader._client.force_metadata_update()
                partitions = reader.partitions_for_topic(topic) or set()
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {topic} does not exist")
            assignment = [TopicPartition(topic, part) for part in sorted(partitions)]
            reader.assign(assignment)
            await reader.seek_to_beginning(*assignment)
            found: list[Message] = []
            while len(found) < expected:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"timed out: {len(found)} of {expected} messages on {topic}"
                    )
                batches = await reader.getmany(timeout_ms=200)
                for records in batches.values():
                    found.extend(message_of(record) for record in records)
            # A little longer, to catch messages beyond the expected count.
            batches = await reader.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(
                    Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                )
            return sorted(found, key=lambda m: (m.partition, m.offset))
        finally:
            await reader.stop()

    async def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        # A consumer that never joins the group, only asks for its offsets (OffsetFetch).
        # The admin client's list_consumer_group_offsets cannot parse tansu's reply.
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group_id, enable_auto_commit=False
        )
        await reader.start()
        try:
            offset = await reader.committed(TopicPartition(topic, partition))
        finally:
            await reader.stop()
        return None if offset is None else int(offset)

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        await self.broker.stop()
        try:
            yield
        finally:
            # Same port, and (memory storage) empty: the topics come back, the messages do not.
            await self.broker.start()
            for registry in self._registries:
                await self._create_topics(registry)

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


class Service:
    """One service under test: its own database, outbox relay and consumer."""

    def __init__(
        self, name: str, database: Database, registry: EventRegistry, harness: BusHarness
    ) -> None:
        self.name = name
        self.database = database
        self.registry = registry
        self.harness = harness
        self.relay: OutboxRelay | None = None
        self.consumers: list[EventConsumer] = []

    async def create_tables(self) -> None:
        async with self.database.engine.begin() as connection:
            await create_event_tables(connection)
            await connection.run_sync(domain.create_all)

    async def publish(self, event_type: str, data: Any, **options: Any) -> Event:
        async with self.database.session() as session:
            return await publish(
                session, self.registry, event_type, data, service=self.name, **options
            )

    async def start_relay(self, **options: Any) -> OutboxRelay:
        options.setdefault("poll_interval", 0.5)
        options.setdefault("backoff_max", 0.5)
        self.relay = OutboxRelay(self.database, self.harness.producer(), **options)
        await self.relay.start()
        return self.relay

    def consumer(self, handlers: Mapping[str, Handler], **options: Any) -> EventConsumer:
        options.setdefault("backoff_base", 0.01)
        options.setdefault("backoff_max", 0.05)
        options.setdefault("poll_timeout", 0.2)
        topics = consumer_topics(self.registry, handlers)
        consumer = EventConsumer(
            self.database,
            self.registry,
            self.harness.source(self.name, topics),
            self.harness.producer(),
            service=self.name,
            handlers=handlers,
            **options,
        )
        self.consumers.append(consumer)
        return consumer

    async def applied_rows(self) -> list[Any]:
        async with self.database.engine.connect() as connection:
            result = await connection.execute(select(applied).order_by(applied.c.id))
            return list(result.all())

    async def count(self, table: Table) -> int:
        async with self.database.engine.connect() as connection:
            return int(await connection.scalar(select(func.count()).select_from(table)) or 0)

    async def outbox_rows(self) -> list[Any]:
        async with self.database.engine.connect() as connection:
            result = await connection.execute(select(outbox).order_by(outbox.c.seq))
            return list(result.all())

    async def processed_count(self) -> int:
        return await self.count(processed_events)

    async def close(self) -> None:
        for consumer in self.consumers:
            await consumer.stop(timeout=2)
        if self.relay is not None:
            await self.relay.stop(timeout=2)
        await self.database.dispose()


ServiceFactory = Callable[[str], Awaitable[Service]]


async def record(ctx: EventContext) -> None:
    """The standard handler: write one domain row in the handler's transaction."""
    await ctx.session.execute(
        insert(applied).values(
            event_id=ctx.event.id,
            event_type=ctx.event.type,
            order_id=str(getattr(ctx.payload, "order_id", "")),
        )
    )
