"""The event bus service (port 4000): every event of every topic, kept and served.

It consumes all topics as its own consumer group and, per event, writes the audit log
(its database; the event id is the key, so a redelivery changes nothing) and the event
store (Redis sorted sets by time, per type, correlation id and service; in process without
Redis), then commits the offset. It serves the store (`GET /api/events` with filters, one
event by id, a server-sent-events stream of live events) and accepts events from trusted
publishers (`POST /api/events`, service token), checked against the spec's payload types.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.auth import require, require_service
from cloudretail.runtime.cache import redis_client
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database, insert_skipping_duplicates
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import log_event, process_span
from cloudretail.runtime.events.envelope import EnvelopeError, Event
from cloudretail.runtime.events.kafka import KafkaProducer, KafkaSource, tls_context
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.transport import Message
from cloudretail.runtime.metrics import EventMetrics
from cloudretail.runtime.openapi import problems, request_body
from cloudretail.runtime.service_events import kafka_source
from cloudretail.runtime.tracing import fail, get_tracer
from cloudretail.runtime.types import UTCDateTime
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import StreamingResponse
from opentelemetry.trace import Span
from redis.asyncio import Redis

logger = logging.getLogger(__name__)

_metadata = sa.MetaData()
audit_log = sa.Table(
    "audit_log",
    _metadata,
    sa.Column("event_id", sa.Uuid, primary_key=True),
    sa.Column("event_type", sa.String(255), nullable=False),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("service", sa.String(100), nullable=False),
    sa.Column("correlation_id", sa.String(255), nullable=False),
    sa.Column("causation_id", sa.String(255)),
    sa.Column("user_id", sa.String(255)),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.Column("envelope", sa.Text, nullable=False),
)


@dataclass(frozen=True)
class EventQuery:
    type: str | None = None
    correlation_id: str | None = None
    service: str | None = None
    since: datetime | None = None
    limit: int = 50
    offset: int = 0

    def matches(self, event: dict[str, Any]) -> bool:
        meta = event["metadata"]
        return (
            (self.type is None or event["type"] == self.type)
            and (self.correlation_id is None or meta.get("correlationId") == self.correlation_id)
            and (self.service is None or meta.get("service") == self.service)
        )


class EventStore(Protocol):
    async def add(self, events: Sequence[tuple[Event, str]]) -> None:
        """Keep each (event, topic); an event already kept is kept once."""

    async def get(self, event_id: str) -> dict[str, Any] | None: ...

    async def query(self, query: EventQuery) -> tuple[list[dict[str, Any]], int]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _wire(event: Event, topic: str) -> dict[str, Any]:
    return {**event.to_wire(), "topic": topic}


class MemoryEventStore:
    """One process's store: enough for a single event bus and for tests."""

    def __init__(self, retention: float, max_events: int = 100_000) -> None:
        self.retention = retention
        self.max_events = max_events
        self._events: dict[str, tuple[int, dict[str, Any]]] = {}

    async def add(self, events: Sequence[tuple[Event, str]]) -> None:
        for event, topic in events:
            self._events[str(event.id)] = (_millis(event.timestamp), _wire(event, topic))
        if len(self._events) > self.max_events:
            oldest = sorted(self._events, key=lambda key: self._events[key][0])
            for key in oldest[: len(self._events) - self.max_events]:
                del self._events[key]

    async def get(self, event_id: str) -> dict[str, Any] | None:
        found = self._events.get(event_id)
        return found[1] if found else None

    async def query(self, query: EventQuery) -> tuple[list[dict[str, Any]], int]:
        floor = _millis(query.since) if query.since else 0
        cutoff = int(time.time() * 1000 - self.retention * 1000)
        hits = sorted(
            (
                (at, event)
                for at, event in self._events.values()
                if at >= max(floor, cutoff) and query.matches(event)
            ),
            key=lambda item: item[0],
            reverse=True,
        )
        return [event for _, event in hits[query.offset : query.offset + query.limit]], len(hits)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None


class RedisEventStore:
    """Events as JSON with a TTL, indexed by time in sorted sets (all, per type, per
    correlation id, per service); queries read the narrowest index and filter the rest."""

    def __init__(self, client: Redis, retention: float, prefix: str = "eventbus") -> None:
        self.client = client
        self.retention = retention
        self.prefix = prefix

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _indexes(self, event: dict[str, Any]) -> list[str]:
        meta = event["metadata"]
        return [
            self._key("index", "all"),
            self._key("index", "type", event["type"]),
            self._key("index", "correlation", str(meta.get("correlationId"))),
            self._key("index", "service", str(meta.get("service"))),
        ]

    async def add(self, events: Sequence[tuple[Event, str]]) -> None:
        """One round trip for the lot: each event's JSON with a TTL, its id in each index."""
        ttl = max(1, int(self.retention))
        indexes: dict[str, dict[str, int]] = {}
        async with self.client.pipeline(transaction=True) as pipe:
            for event, topic in events:
                wire = _wire(event, topic)
                pipe.set(self._key("event", str(event.id)), json.dumps(wire), ex=ttl)
                for index in self._indexes(wire):
                    indexes.setdefault(index, {})[str(event.id)] = _millis(event.timestamp)
            for index, members in indexes.items():
                pipe.zadd(index, members)
                pipe.expire(index, ttl)
            await pipe.execute()

    async def get(self, event_id: str) -> dict[str, Any] | None:
        raw = await self.client.get(self._key("event", event_id))
        return json.loads(raw) if raw else None

    async def query(self, query: EventQuery) -> tuple[list[dict[str, Any]], int]:
        if query.correlation_id:
            index = self._key("index", "correlation", query.correlation_id)
        elif query.type:
            index = self._key("index", "type", query.type)
        elif query.service:
            index = self._key("index", "service", query.service)
        else:
            index = self._key("index", "all")
        cutoff = int(time.time() * 1000 - self.retention * 1000)
        floor = max(cutoff, _millis(query.since) if query.since else 0)
        # Entries past retention are dropped from the index as we go.
        await self.client.zremrangebyscore(index, "-inf", f"({cutoff}")
        ids = await self.client.zrevrangebyscore(index, "+inf", floor)
        events = []
        if ids:
            names = [i.decode() if isinstance(i, bytes) else str(i) for i in ids]
            raws = await self.client.mget([self._key("event", name) for name in names])
            events = [json.loads(raw) for raw in raws if raw]
        hits = [event for event in events if query.matches(event)]
        return hits[query.offset : query.offset + query.limit], len(hits)

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.client.aclose()


class Subscribers:
    """Live listeners of the SSE stream; a slow one loses events rather than slowing all."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def add(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._queues.add(queue)
        return queue

    def remove(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._queues.discard(queue)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)


class EventBus:
    """Consumes every topic into the audit log and the store."""

    def __init__(
        self,
        settings: ServiceSettings,
        registry: EventRegistry,
        topics: Sequence[str],
        store: EventStore,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = tuple(topics)
        self.store = store
        self.subscribers = Subscribers()
        self.producer: KafkaProducer | None = None
        self.database: Database | None = None
        self.consumed = 0
        self.metrics: EventMetrics | None = None  # set with the app's registry at start
        self.tracer = get_tracer()  # the app's, at start
        self._task: asyncio.Task[None] | None = None
        self._healthy = settings.kafka_bootstrap_servers is None

    async def healthy(self) -> bool:
        return self._healthy and await self.store.ping()

    async def record(self, messages: Sequence[Message]) -> None:
        """Keep a fetched batch: the audit log in one statement and one transaction (an
        event it has already is left as it is), then the store, then live subscribers.
        Each event gets a span in the trace it continues, and a line once kept."""
        kept: list[tuple[Event, str]] = []
        traced: list[tuple[Message, Event, Span]] = []
        for message in messages:
            try:
                event = Event.from_bytes(message.value)
            except EnvelopeError as error:
                logger.warning(
                    "not an event; skipped",
                    extra={"topic": message.topic, "offset": message.offset, "error": str(error)},
                )
                continue
            kept.append((event, message.topic))
            span = process_span(self.tracer, message, event, group=self.settings.service_name)
            traced.append((message, event, span))
        if not kept:
            return
        try:
            await self._keep(kept)
        except BaseException as error:
            for _, _, span in traced:
                fail(span, type(error).__name__)
                span.end()
            raise
        for message, event, span in traced:
            log_event("event recorded", message, event, span)
            span.end()

    async def _keep(self, kept: Sequence[tuple[Event, str]]) -> None:
        assert self.database is not None
        recorded_at = datetime.now(UTC)
        rows = [
            {
                "event_id": event.id,
                "event_type": event.type,
                "topic": topic,
                "service": event.metadata.service,
                "correlation_id": event.metadata.correlation_id,
                "causation_id": event.metadata.causation_id,
                "user_id": event.metadata.user_id,
                "occurred_at": event.timestamp,
                "recorded_at": recorded_at,
                "envelope": event.to_bytes().decode(),
            }
            for event, topic in kept
        ]
        async with self.database.session() as session:
            # A redelivered event is in the log already: ON CONFLICT leaves it as it is.
            dialect = session.get_bind().dialect.name
            await session.execute(insert_skipping_duplicates(audit_log, dialect, "event_id"), rows)
        await self.store.add(kept)
        for event, topic in kept:
            self.subscribers.publish(_wire(event, topic))
        self.consumed += len(kept)
        if self.metrics is not None:
            for topic, count in Counter(topic for _, topic in kept).items():
                self.metrics.record_consumed(self.settings.service_name, topic, "applied", count)

    async def _consume(self, source: KafkaSource) -> None:
        # Joining the consumer group takes seconds; the service is ready before it finishes.
        while True:
            try:
                await source.start()
                break
            except Exception:
                self._healthy = False
                logger.exception("event bus cannot reach the broker; retrying")
                await asyncio.sleep(1.0)
        self._healthy = True
        while True:
            try:
                messages = await source.fetch(timeout=0.5, max_records=200)
                if self.metrics is not None:
                    self.metrics.record_lag(self.settings.service_name, source.lag)
                if messages:
                    await self.record(messages)
                    offsets = {(m.topic, m.partition): m.offset + 1 for m in messages}
                    await source.commit(offsets)
                self._healthy = True
            except asyncio.CancelledError:
                raise
            except Exception:
                self._healthy = False
                logger.exception("event bus consumer failed; retrying")
                await asyncio.sleep(1.0)

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.database = app.state.database
        self.tracer = app.state.tracer
        bootstrap = self.settings.kafka_bootstrap_servers
        source = None
        if bootstrap:
            self.producer = KafkaProducer(
                bootstrap,
                idempotent=self.settings.kafka_idempotent,
                client_id=self.settings.service_name,
                tls=tls_context(self.settings.kafka_ca_file),
            )
            group = self.settings.service_name  # the event bus's own consumer group
            source = kafka_source(self.settings, group, list(self.topics))
            self.metrics = app.state.metrics.event_metrics()
            self.metrics.declare_consumer(group, self.topics)
            self._healthy = await self.producer.ping()
            self._task = asyncio.create_task(self._consume(source), name="event-bus-consumer")
        try:
            yield
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            if source is not None:
                await source.stop()
            if self.producer is not None:
                await self.producer.stop()
            await self.store.close()


async def _bus(request: Request) -> EventBus:
    bus: EventBus = request.app.state.event_bus
    return bus


BusDep = Annotated[EventBus, Depends(_bus)]


def router(prefix: str) -> APIRouter:
    api = APIRouter(prefix=prefix, tags=["events"])

    @api.get("", responses=problems(401, 403, 422, 503), dependencies=[Depends(require("admin"))])
    async def list_events(
        bus: BusDep,
        type: str | None = None,
        correlation_id: Annotated[str | None, Query(alias="correlationId")] = None,
        service: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Stored events, newest first, filtered by type, correlation id, service, time."""
        query = EventQuery(type, correlation_id, service, since, limit, offset)
        items, total = await bus.store.query(query)
        return {"items": items, "total": total, "limit": limit, "offset": offset}

    @api.get(
        "/stream", responses=problems(401, 403, 422, 503), dependencies=[Depends(require("admin"))]
    )
    async def stream(
        request: Request,
        bus: BusDep,
        type: str | None = None,
        service: str | None = None,
    ) -> StreamingResponse:
        """Live events as server-sent events (`event: <type>`, `data: <envelope>`)."""
        wanted = EventQuery(type=type, service=service)
        queue = bus.subscribers.add()

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), timeout=15.0)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    if wanted.matches(event):
                        head = f"id: {event['id']}\nevent: {event['type']}\n"
                        yield f"{head}data: {json.dumps(event)}\n\n".encode()
            finally:
                bus.subscribers.remove(queue)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @api.get(
        "/{event_id}",
        responses=problems(401, 403, 404, 422, 503),
        dependencies=[Depends(require("admin"))],
    )
    async def get_event(event_id: str, bus: BusDep) -> dict[str, Any]:
        found = await bus.store.get(event_id)
        if found is None:
            raise Problem(404, detail=f"no event {event_id} in the store")
        return found

    @api.post(
        "",
        status_code=202,
        responses=problems(400, 401, 403, 413, 415, 422, 503),
        openapi_extra=request_body(Event),
        dependencies=[Depends(require_service)],
    )
    async def publish_event(request: Request, bus: BusDep) -> dict[str, Any]:
        """Publish for a trusted publisher: the envelope's payload must fit its type."""
        try:
            event = Event.model_validate(await request.json())
            data = bus.registry.validate(event.type, event.data)
        except (ValueError, EventValidationError) as error:
            raise Problem(422, detail=str(error)) from None
        spec = bus.registry.get(event.type)
        event = event.model_copy(update={"data": data})
        if bus.producer is None:
            raise Problem(503, detail="no broker is configured (KAFKA_BOOTSTRAP_SERVERS)")
        key = bus.registry.key_of(event.type, data)
        try:
            await bus.producer.send(spec.topic, key.encode(), event.to_bytes(), ())
        except Exception as error:
            raise Problem(503, detail=f"the broker did not take the event: {error}") from None
        return {"accepted": True, "event": event.to_wire(), "topic": spec.topic}

    return api


def make_store(settings: ServiceSettings, retention: float) -> EventStore:
    if settings.redis_url:
        return RedisEventStore(redis_client(settings.redis_url, settings.redis_ca_file), retention)
    return MemoryEventStore(retention)


def create_event_bus_app(
    settings: ServiceSettings,
    registry: EventRegistry,
    *,
    topics: Iterable[str],
    prefix: str,
    retention: float,
) -> FastAPI:
    bus = EventBus(settings, registry, sorted(topics), make_store(settings, retention))
    app = create_service_app(
        settings,
        routers=[router(prefix)],
        title="Event Bus",
        description="Every event of the platform: stored, searchable, streamed, audited.",
        lifespan=bus.lifespan,
        event_bus_check=bus.healthy,
    )
    app.state.event_bus = bus
    return app
