"""Consuming events: each applied at most once, offsets committed only after the database.

Per message, in ONE transaction: claim the event id in `processed_events` (a redelivery finds
it and is skipped) and run the handler, whose own events go to the outbox in that same
transaction. Only after that commit is the Kafka offset committed, so a crash in between
means a redelivery, which the claim turns into a no-op: effectively exactly once.

A fetched batch is first tried in one transaction (each event claimed and handled in
order, as above, one commit for all); if anything in it fails, nothing of it is kept and
its messages are handled one at a time, each in its own transaction, as follows.
A handler that keeps failing is retried with exponential backoff, then its message goes to
`<topic>.dlq` and the partition moves on. Messages are handled in order.

Each event's handling is a consumer span continuing the trace the message carries (its
`traceparent` header, else the one its envelope kept), so the handler's statements and the
events it publishes join the trace of the request that caused them; an applied event is
logged once ("event applied") in that span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from cloudretail.runtime.correlation import correlation_id_var
from cloudretail.runtime.db import Database, insert_skipping_duplicates
from cloudretail.runtime.events.envelope import EnvelopeError, Event
from cloudretail.runtime.events.outbox import publish
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.tables import processed_events
from cloudretail.runtime.events.topics import dlq_topic
from cloudretail.runtime.events.transport import (
    BrokerUnavailable,
    CommitFailed,
    Message,
    Producer,
    Source,
)
from cloudretail.runtime.tracing import get_tracer, message_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer
from pydantic import BaseModel
from sqlalchemy import exists, insert, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from cloudretail.runtime.metrics import ConsumerOutcome, EventMetrics

logger = logging.getLogger(__name__)

_MAX_HEADER_ERROR = 1000


class EventContext:
    """What a handler gets: the event, its typed payload, and the transaction to work in."""

    def __init__(
        self,
        event: Event,
        payload: BaseModel,
        session: AsyncSession,
        *,
        registry: EventRegistry,
        service: str,
    ) -> None:
        self.event = event
        self.payload = payload
        self.session = session
        self._registry = registry
        self._service = service

    async def publish(
        self,
        event_type: str,
        data: Mapping[str, Any] | BaseModel,
        key: str | None = None,
    ) -> Event:
        """Publish in the handler's transaction, as a consequence of the consumed event."""
        return await publish(
            self.session,
            self._registry,
            event_type,
            data,
            service=self._service,
            key=key,
            correlation_id=self.event.metadata.correlation_id,
            causation_id=str(self.event.id),
            user_id=self.event.metadata.user_id,
        )


Handler = Callable[[EventContext], Awaitable[None]]


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead-lettered"


@dataclass
class ConsumerStats:
    applied: int = 0
    duplicates: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    retries: int = 0
    commit_failures: int = 0


@dataclass(frozen=True)
class _Failure:
    """Why a batch was not applied: the event whose handler failed (None: no handler's
    fault) and the error."""

    event_id: uuid.UUID | None
    error: str


class _Interrupted(Exception):
    """stop() was called while a message waited to be retried; it stays uncommitted."""


def process_span(tracer: Tracer, message: Message, event: Event, *, group: str) -> Span:
    """The span of one event's handling by consumer group `group`, in the trace the message
    continues (started, not current: the caller makes it current where it works)."""
    return tracer.start_span(
        f"process {event.type}",
        context=message_context(message.headers, event.metadata.traceparent),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.consumer.group.name": group,
            "messaging.message.id": str(event.id),
        },
    )


def log_event(text: str, message: Message, event: Event, span: Span) -> None:
    """One INFO line about a consumed event, in its span and with its request's
    correlation id, so the line joins that request's trace and logs."""
    token = correlation_id_var.set(event.metadata.correlation_id)
    try:
        with trace.use_span(span):
            logger.info(
                text,
                extra={
                    "event_type": event.type,
                    "event_id": str(event.id),
                    "topic": message.topic,
                    # Which instance of a consumer group holds which partitions shows here.
                    "partition": message.partition,
                },
            )
    finally:
        correlation_id_var.reset(token)


def consumer_topics(registry: EventRegistry, handlers: Iterable[str]) -> list[str]:
    """The topics a service must subscribe to for the event types it handles."""
    return sorted({registry.get(name).topic for name in handlers})


def _is_infrastructure(error: BaseException) -> bool:
    """A database that is down or busy, not a handler that is wrong.

    Such errors are retried without limit (the partition waits) instead of dead-lettering
    every event that arrives during a database outage.
    """
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError | InterfaceError | PoolTimeoutError | OSError)


class EventConsumer:
    """Runs one service's handlers over its consumer group (group id = service name).

    With `metrics` it counts each event's outcome as `stats` does, and reports the group's
    lag (from the source, no extra request) after every fetch. `tracer` makes the spans
    (default: the process's).
    """

    def __init__(
        self,
        database: Database,
        registry: EventRegistry,
        source: Source,
        producer: Producer,
        *,
        service: str,
        handlers: Mapping[str, Handler],
        max_attempts: int = 5,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        batch_size: int = 100,
        poll_timeout: float = 0.5,
        ping_interval: float = 10.0,
        metrics: EventMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in handlers:
            registry.get(name)  # an unknown event type fails here, at wiring time
        if source.group_id != service:
            raise ValueError(
                f"source group {source.group_id!r} is not the service name {service!r}: "
                "each service is one consumer group"
            )
        self.topics = consumer_topics(registry, handlers)
        missing = set(self.topics) - set(source.topics)
        if missing:
            raise ValueError(f"source is not subscribed to {sorted(missing)}")
        self.database = database
        self.registry = registry
        self.source = source
        self.producer = producer
        self.service = service
        self.handlers = dict(handlers)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.ping_interval = ping_interval
        self.metrics = metrics
        self.tracer = tracer or get_tracer()
        if metrics is not None:
            metrics.declare_consumer(service, source.topics)
        self.stats = ConsumerStats()
        self._healthy = True
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False while the broker or the database is failing us; True once work flows again."""
        return self._healthy and self.running

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"event-consumer-{self.service}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish the message in hand, commit what was applied, leave the group."""
        task, self._task = self._task, None
        self._stopping = True
        self._stop_requested.set()
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                logger.warning("event consumer did not stop in time; cancelling it")
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.source.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        last_contact = loop.time()
        while not self._stopping:
            try:
                # Idempotent: joins the group the first time and again after a failure.
                await self.source.start()
                messages = await self.source.fetch(self.poll_timeout, self.batch_size)
            except Exception as error:
                self._healthy = False
                delay = min(max(delay * 2, self.backoff_base), self.backoff_max)
                logger.warning(
                    "event consumer cannot read from the broker",
                    extra={"service": self.service, "error": repr(error), "retry_in": delay},
                )
                await self._pause(delay)
                continue
            delay = 0.0
            if self.metrics is not None:
                self.metrics.record_lag(self.service, self.source.lag)
            if not messages:
                if loop.time() - last_contact >= self.ping_interval:
                    # An idle fetch says nothing about the broker (aiokafka keeps retrying
                    # quietly), so ask it from time to time for `healthy`.
                    last_contact = loop.time()
                    self._healthy = await self.producer.ping()
                continue
            last_contact = loop.time()
            done: dict[tuple[str, int], int] = {}
            failure: _Failure | None = None
            if len(messages) > 1:
                failure = await self._apply_batch(messages)
                if failure is None:
                    await self._commit({(m.topic, m.partition): m.offset + 1 for m in messages})
                    continue
            for message in messages:
                if self._stopping:
                    break
                try:
                    await self.process(message, failed_once=failure)
                except _Interrupted:
                    break
                done[(message.topic, message.partition)] = message.offset + 1
            if done:
                await self._commit(done)

    async def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        try:
            await self.source.commit(offsets)
        except (CommitFailed, BrokerUnavailable) as error:
            # The database already has the effects; whoever reads these messages again
            # finds them in processed_events and skips them.
            self.stats.commit_failures += 1
            logger.warning(
                "offsets not committed; messages will be redelivered and skipped",
                extra={"service": self.service, "error": str(error)},
            )

    async def process(self, message: Message, *, failed_once: _Failure | None = None) -> Outcome:
        """Handle one message completely (apply, skip or dead-letter); offsets are the caller's.
        `failed_once`: a handler failure in a batch, which counts as this event's first attempt
        if it is this event's."""
        try:
            event = Event.from_bytes(message.value)
        except EnvelopeError as error:
            await self._dead_letter(message, str(error), attempts=1)
            return Outcome.DEAD_LETTERED
        handler = self.handlers.get(event.type)
        if handler is None:
            # Another service's event on a shared topic: not ours to handle.
            self.stats.skipped += 1
            self._count(message.topic, "skipped")
            return Outcome.SKIPPED
        try:
            payload = self.registry.parse(event.type, event.data)
        except EventValidationError as error:
            await self._dead_letter(message, str(error), attempts=1, event=event)
            return Outcome.DEAD_LETTERED

        attempt = 0
        if failed_once is not None and failed_once.event_id == event.id:
            attempt = 1
            if attempt >= self.max_attempts:
                await self._dead_letter(message, failed_once.error, attempt, event=event)
                return Outcome.DEAD_LETTERED
            self.stats.retries += 1
            self._count(message.topic, "retried")
            await self._pause(min(self.backoff_base, self.backoff_max), interruptible=True)
        infrastructure_delay = 0.0
        while True:
            attempt += 1
            try:
                applied = await self._apply(message, event, payload, handler)
            except Exception as error:
                if _is_infrastructure(error):
                    self._healthy = False
                    attempt -= 1  # not the handler's fault: does not count toward the DLQ
                    infrastructure_delay = min(
                        max(infrastructure_delay * 2, self.backoff_base), self.backoff_max
                    )
                    logger.warning(
                        "database unavailable while applying an event; retrying",
                        extra={"event_id": str(event.id), "error": repr(error)},
                    )
                    await self._pause(infrastructure_delay, interruptible=True)
                    continue
                if attempt >= self.max_attempts:
                    await self._dead_letter(
                        message, f"{type(error).__name__}: {error}", attempt, event=event
                    )
                    return Outcome.DEAD_LETTERED
                self.stats.retries += 1
                self._count(message.topic, "retried")
                delay = min(self.backoff_base * 2 ** (attempt - 1), self.backoff_max)
                logger.warning(
                    "event handler failed; retrying",
                    extra={
                        "event_id": str(event.id),
                        "event_type": event.type,
                        "attempt": attempt,
                        "retry_in": delay,
                        "error": f"{type(error).__name__}: {error}",
                    },
                )
                await self._pause(delay, interruptible=True)
                continue
            self._healthy = True
            if applied:
                self.stats.applied += 1
                self._count(message.topic, "applied")
                return Outcome.APPLIED
            self.stats.duplicates += 1
            self._count(message.topic, "duplicate")
            return Outcome.DUPLICATE

    async def _apply_batch(self, messages: list[Message]) -> _Failure | None:
        """Apply the batch in one transaction. On any failure nothing of it is kept and the
        caller takes its messages one by one; the answer then names the event whose handler
        failed, if one did (None: the batch was applied)."""
        work: list[tuple[Message, Event, BaseModel, Handler]] = []
        skipped: Counter[str] = Counter()
        for message in messages:
            try:
                event = Event.from_bytes(message.value)
                handler = self.handlers.get(event.type)
                if handler is None:
                    skipped[message.topic] += 1
                    continue
                payload = self.registry.parse(event.type, event.data)
                work.append((message, event, payload, handler))
            except (EnvelopeError, EventValidationError):
                return _Failure(None, "a message in the batch is not a valid event")
        applied: Counter[str] = Counter()
        handled: list[tuple[Message, Event, Span]] = []
        current: Event | None = None
        try:
            async with self.database.sessionmaker() as session, session.begin():
                # One statement claims the lot; only events not seen before are handled.
                fresh = await _claim_all(session, [event for _, event, _, _ in work])
                for message, current, payload, handler in work:
                    if current.id in fresh:
                        fresh.discard(current.id)  # the same event twice in a batch: once
                        span = self._span(message, current)
                        with trace.use_span(span, end_on_exit=True):
                            await self._run_handler(session, current, payload, handler)
                        handled.append((message, current, span))
                        applied[message.topic] += 1
                current = None  # a failing commit is no handler's fault
        except Exception as error:
            blamed = None if current is None or _is_infrastructure(error) else current.id
            logger.info(
                "a batch of events failed as a whole; applying them one by one",
                extra={"service": self.service, "error": f"{type(error).__name__}: {error}"},
            )
            return _Failure(blamed, f"{type(error).__name__}: {error}")
        self._healthy = True
        for message, event, span in handled:
            self._log_applied(message, event, span)
        duplicates = Counter(message.topic for message, _, _, _ in work) - applied
        self.stats.applied += applied.total()
        self.stats.duplicates += duplicates.total()
        self.stats.skipped += skipped.total()
        counted: tuple[tuple[ConsumerOutcome, Counter[str]], ...] = (
            ("applied", applied),
            ("duplicate", duplicates),
            ("skipped", skipped),
        )
        for outcome, by_topic in counted:
            for topic, count in by_topic.items():
                self._count(topic, outcome, count)
        return None

    def _count(self, topic: str, outcome: ConsumerOutcome, count: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.record_consumed(self.service, topic, outcome, count)

    async def _handle(
        self, session: AsyncSession, event: Event, payload: BaseModel, handler: Handler
    ) -> bool:
        """Claim and handle one event in the caller's transaction; False: seen before."""
        if not await _claim(session, event):
            return False
        await self._run_handler(session, event, payload, handler)
        return True

    async def _run_handler(
        self, session: AsyncSession, event: Event, payload: BaseModel, handler: Handler
    ) -> None:
        # Logs and calls made by the handler carry the originating request's id.
        token = correlation_id_var.set(event.metadata.correlation_id)
        try:
            await handler(
                EventContext(event, payload, session, registry=self.registry, service=self.service)
            )
        finally:
            correlation_id_var.reset(token)

    async def _apply(
        self, message: Message, event: Event, payload: BaseModel, handler: Handler
    ) -> bool:
        span = self._span(message, event)
        with trace.use_span(span, end_on_exit=True):
            async with self.database.sessionmaker() as session, session.begin():
                applied = await self._handle(session, event, payload, handler)
            if applied:
                self._log_applied(message, event, span)
            return applied

    def _span(self, message: Message, event: Event) -> Span:
        return process_span(self.tracer, message, event, group=self.service)

    def _log_applied(self, message: Message, event: Event, span: Span) -> None:
        log_event("event applied", message, event, span)

    async def _dead_letter(
        self, message: Message, error: str, attempts: int, *, event: Event | None = None
    ) -> None:
        ours = {"error", "attempts", "original-topic", "original-partition", "original-offset"}
        kept = tuple(header for header in message.headers if header[0] not in ours)
        headers = (
            *kept,
            ("error", error[:_MAX_HEADER_ERROR].encode()),
            ("attempts", str(attempts).encode()),
            ("original-topic", message.topic.encode()),
            ("original-partition", str(message.partition).encode()),
            ("original-offset", str(message.offset).encode()),
            ("dead-lettered-by", self.service.encode()),
        )
        delay = 0.0
        while True:
            try:
                await self.producer.send(
                    dlq_topic(message.topic), message.key, message.value, headers
                )
                break
            except BrokerUnavailable as send_error:
                # Committing the offset without the DLQ copy would lose the message: wait.
                self._healthy = False
                delay = min(max(delay * 2, self.backoff_base), self.backoff_max)
                logger.warning(
                    "cannot dead-letter a message yet",
                    extra={"topic": message.topic, "error": str(send_error), "retry_in": delay},
                )
                await self._pause(delay, interruptible=True)
        self.stats.dead_lettered += 1
        self._count(message.topic, "dead_lettered")
        logger.error(
            "event dead-lettered",
            extra={
                "service": self.service,
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "event_id": str(event.id) if event else None,
                "event_type": event.type if event else None,
                "attempts": attempts,
                "error": error[:_MAX_HEADER_ERROR],
            },
        )

    async def _pause(self, seconds: float, *, interruptible: bool = False) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        if interruptible and self._stopping:
            raise _Interrupted


async def _claim_all(session: AsyncSession, events: list[Event]) -> set[uuid.UUID]:
    """Record the events as processed, in one statement; the ids not processed before (a
    redelivered one is not among them)."""
    if not events:
        return set()
    rows = {event.id: {"event_id": event.id, "event_type": event.type} for event in events}
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        fresh = set()
        for event_id, row in rows.items():
            query = select(exists().where(processed_events.c.event_id == event_id))
            if not await session.scalar(query):
                await session.execute(insert(processed_events).values(**row))
                fresh.add(event_id)
        return fresh
    # Two members racing on a redelivery: the second insert waits for the first to commit
    # (PostgreSQL) and then skips the row, so the event is applied once.
    statement = (
        insert_skipping_duplicates(processed_events, dialect, "event_id")
        .values(list(rows.values()))
        .returning(processed_events.c.event_id)
    )
    return set((await session.scalars(statement)).all())


async def _claim(session: AsyncSession, event: Event) -> bool:
    """Record the event as processed; False when it already was (a redelivery)."""
    return event.id in await _claim_all(session, [event])
