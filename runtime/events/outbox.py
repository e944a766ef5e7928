"""Transactional outbox: events are rows written with the state change, then relayed to Kafka.

`publish` adds the row to the caller's transaction, so an event exists exactly when the change
it describes was committed. `OutboxRelay` sends unsent rows in `seq` order and stamps them;
while the broker is down rows simply wait, so an outage never fails a business request and
never loses an event. Delivery is at least once (a crash between ack and stamp resends);
consumers drop repeats by event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudretail.runtime.correlation import get_correlation_id, new_correlation_id
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.envelope import Event, EventMetadata, kept_traceparent
from cloudretail.runtime.events.registry import EventRegistry, EventValidationError
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.events.transport import BrokerUnavailable, OutgoingMessage, Producer
from cloudretail.runtime.tracing import (
    TRACEPARENT,
    current_traceparent,
    extract_context,
    fail,
    get_tracer,
    message_headers,
)
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Tracer
from pydantic import BaseModel
from sqlalchemy import Engine, delete, event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from cloudretail.runtime.metrics import EventMetrics

logger = logging.getLogger(__name__)

# One constant key for every database: the lock is per database anyway, and a fixed number
# lets an operator spot the relay in pg_locks. ("CROUTBOX" as bytes.)
ADVISORY_LOCK_KEY = 0x43524F5554424F58 - (1 << 63)

_PENDING_WAKE = "cloudretail.events.pending_wake"
_HOOKED = "cloudretail.events.wake_hooked"
_MAX_ERROR_TEXT = 2000
_MAX_KEY_LENGTH = 255  # outbox.message_key is String(255)
# Kafka's default message.max.bytes is 1 MiB including overhead; stay clearly below it.
MAX_EVENT_BYTES = 900_000

# Relays by the engine they read, so a commit on that engine can wake them. Weak: a relay
# that is garbage collected stops being woken without having to unregister.
_relays: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[OutboxRelay]] = (
    weakref.WeakKeyDictionary()
)
_relays_lock = threading.Lock()


async def publish(
    session: AsyncSession,
    registry: EventRegistry,
    event_type: str,
    data: Mapping[str, Any] | BaseModel,
    *,
    service: str,
    key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    user_id: str | None = None,
) -> Event:
    """Validate an event and add it to the session's transaction; the caller commits.

    Raises `EventValidationError` for an unknown type or a payload that does not fit it. The
    correlation id defaults to the current request's, so events join that request's logs; the
    envelope keeps the current span's trace context, which the relay and the consumers
    continue.
    """
    spec = registry.get(event_type)
    payload = registry.validate(event_type, data)
    message_key = key if key is not None else registry.key_of(event_type, payload)
    envelope = Event(
        type=event_type,
        version=spec.version,
        data=payload,
        metadata=EventMetadata(
            correlation_id=correlation_id or get_correlation_id() or new_correlation_id(),
            causation_id=causation_id,
            service=service,
            user_id=user_id,
            traceparent=current_traceparent(),
        ),
    )
    body = envelope.to_bytes()
    if len(body) > MAX_EVENT_BYTES:
        # Refused here, in the request that made it: once in the outbox, a message the broker
        # will never take would block every event queued behind it.
        raise EventValidationError(
            f"event {event_type!r} is {len(body)} bytes; the limit is {MAX_EVENT_BYTES} "
            "(put large data in a table or object store and reference it)"
        )
    if len(message_key) > _MAX_KEY_LENGTH:
        raise EventValidationError(
            f"event {event_type!r}: message key longer than {_MAX_KEY_LENGTH} characters"
        )
    await session.execute(
        insert(outbox).values(
            event_id=envelope.id,
            topic=spec.topic,
            message_key=message_key,
            event_type=event_type,
            payload=body.decode(),
        )
    )
    _wake_relay_after_commit(session.sync_session)
    return envelope


def _wake_relay_after_commit(session: Session) -> None:
    """Wake this engine's relays right after the session's transaction commits.

    Listeners are installed once per session and act only for transactions that published,
    so a session publishing many events wakes the relay once per commit, and a rollback
    wakes no one.
    """
    try:
        bind = session.get_bind()
    except Exception:
        # No single engine to name (a session with per-table binds): the relay's poll
        # picks the rows up instead.
        return
    session.info[_PENDING_WAKE] = bind
    if not session.info.get(_HOOKED):
        session.info[_HOOKED] = True
        event.listen(session, "after_commit", _on_commit)
        event.listen(session, "after_rollback", _on_rollback)


def _on_commit(session: Session) -> None:
    bind = session.info.pop(_PENDING_WAKE, None)
    if isinstance(bind, Engine):
        wake_relays(bind)


def _on_rollback(session: Session) -> None:
    session.info.pop(_PENDING_WAKE, None)


def wake_relays(engine: Engine) -> None:
    """Wake every relay of this engine in this process (callable from any thread)."""
    with _relays_lock:
        relays = list(_relays.get(engine, ()))
    for relay in relays:
        relay.wake()


def _register(relay: OutboxRelay, engine: Engine) -> None:
    with _relays_lock:
        _relays.setdefault(engine, weakref.WeakSet()).add(relay)


def _unregister(relay: OutboxRelay, engine: Engine) -> None:
    with _relays_lock:
        relays = _relays.get(engine)
        if relays is not None:
            relays.discard(relay)


class OutboxRelay:
    """Moves outbox rows to the broker, oldest first, one relay per database at a time.

    Woken by commits that published (in this process) and otherwise polls every
    `poll_interval` seconds, which also covers rows written by other processes. On broker
    errors the rows stay unsent with `attempts`/`last_error` updated, and the relay backs off
    from `backoff_base` doubling up to `backoff_max` seconds.

    With `metrics` it counts what it sends and, every `backlog_interval` seconds while
    started, measures the backlog (unsent rows, the oldest one's age) in a task of its own:
    one query on a timer, never one per pass, as passes follow every commit that published.

    Each send is a producer span continuing the trace the event's envelope kept (the span
    that wrote it), and the message carries that span's context in its headers
    (`traceparent`), for the consumers to continue.
    """

    def __init__(
        self,
        database: Database,
        producer: Producer,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        ping_interval: float = 10.0,
        metrics: EventMetrics | None = None,
        backlog_interval: float = 5.0,
        tracer: Tracer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.database = database
        self.producer = producer
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.ping_interval = ping_interval
        self.metrics = metrics
        self.backlog_interval = backlog_interval
        self.tracer = tracer or get_tracer()
        self.sent_total = 0
        self.last_error: str | None = None
        self._healthy = True
        self._standby = False
        self._task: asyncio.Task[None] | None = None
        self._backlog_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._postgres = database.dialect_name == "postgresql"

    @property
    def healthy(self) -> bool:
        """False after the broker failed to ack, until it acks again (or answers a ping)."""
        return self._healthy

    @property
    def standby(self) -> bool:
        """True while another relay holds this database's lock (PostgreSQL only)."""
        return self._standby

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._stop_requested = asyncio.Event()
        _register(self, self.database.engine.sync_engine)
        self._task = asyncio.create_task(self._run(), name="outbox-relay")
        if self.metrics is not None:
            self._backlog_task = asyncio.create_task(self._watch_backlog(), name="outbox-backlog")

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batch in flight finish (acked rows get stamped), then end the loop."""
        _unregister(self, self.database.engine.sync_engine)
        tasks = [task for task in (self._task, self._backlog_task) if task is not None]
        self._task = self._backlog_task = None
        if not tasks:
            return
        self._stopping = True
        self._wakeup.set()
        self._stop_requested.set()
        # Like wait_for(shield(...)): a timeout (or a cancelled stop) leaves the tasks running.
        done, late = await asyncio.wait(tasks, timeout=timeout)
        if late:
            logger.warning("outbox relay did not stop in time; cancelling it")
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for task in done:
            task.result()  # an error that ended a task surfaces here, as it always did

    def wake(self) -> None:
        """Ask for a pass now. Ignored while backing off from a broker error."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wakeup.set()
        else:
            loop.call_soon_threadsafe(self._wakeup.set)

    async def relay_once(self) -> int:
        """Send one batch of unsent rows; return how many the broker acked.

        Raises `BrokerUnavailable` (after recording the failure on the rows) when the broker
        did not ack some of them.
        """
        if self._postgres:
            async with self.database.engine.connect() as connection, connection.begin():
                # Held until this transaction ends, i.e. across the send: a second relay on
                # the same database skips its turn instead of sending the same rows out of
                # order. Released automatically if this process dies.
                locked = await connection.scalar(
                    select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY))
                )
                self._standby = not locked
                if not locked:
                    return 0
                rows = await _unsent(connection, self.batch_size)
                if not rows:
                    return 0
                outcomes = await self._send(rows)
                await self._record(connection, rows, outcomes)
        else:
            # SQLite: one process per file, so no lock; and the read and the stamp are separate
            # transactions, because a WAL reader that later writes fails with SQLITE_BUSY as
            # soon as anyone else committed in between.
            async with self.database.engine.connect() as connection:
                rows = await _unsent(connection, self.batch_size)
                await connection.rollback()
            if not rows:
                return 0
            outcomes = await self._send(rows)
            async with self.database.engine.begin() as connection:
                await self._record(connection, rows, outcomes)
        return self._conclude(outcomes)

    async def _send(self, rows: Sequence[_Unsent]) -> list[BrokerUnavailable | None]:
        """Send the rows' messages, each in a span of the trace its event was written in."""
        spans = []
        messages = []
        for row in rows:
            message = row.message
            headers = dict(message.headers)
            kept = kept_traceparent(message.value)
            span = self.tracer.start_span(
                f"publish {headers['event-type'].decode()}",
                # No kept context (written outside any span): the send starts the trace.
                context=extract_context({TRACEPARENT: kept}) if kept else Context(),
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": message.topic,
                    "messaging.message.id": headers["event-id"].decode(),
                },
            )
            spans.append(span)
            messages.append(replace(message, headers=message.headers + message_headers(span)))
        try:
            outcomes = await self.producer.send_batch(messages)
        except BaseException as error:
            for span in spans:
                fail(span, type(error).__name__)
                span.end()
            raise
        for span, outcome in zip(spans, outcomes, strict=True):
            if outcome is not None:
                fail(span, str(outcome))
            span.end()
        return outcomes

    async def _record(
        self,
        connection: AsyncConnection,
        rows: Sequence[_Unsent],
        outcomes: Sequence[BrokerUnavailable | None],
    ) -> None:
        acked = [row.seq for row, outcome in zip(rows, outcomes, strict=True) if outcome is None]
        failed = [row.seq for row, outcome in zip(rows, outcomes, strict=True) if outcome]
        if acked:
            await connection.execute(
                update(outbox).where(outbox.c.seq.in_(acked)).values(sent_at=datetime.now(UTC))
            )
        if failed:
            error = next(outcome for outcome in outcomes if outcome is not None)
            await connection.execute(
                update(outbox)
                .where(outbox.c.seq.in_(failed))
                .values(attempts=outbox.c.attempts + 1, last_error=str(error)[:_MAX_ERROR_TEXT])
            )

    def _conclude(self, outcomes: Sequence[BrokerUnavailable | None]) -> int:
        acked = sum(outcome is None for outcome in outcomes)
        self.sent_total += acked
        if self.metrics is not None and acked:
            self.metrics.record_sent(acked)
        failure = next((outcome for outcome in outcomes if outcome is not None), None)
        if failure is not None:
            self._healthy = False
            self.last_error = str(failure)
            raise failure
        self._healthy = True
        return acked

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        last_contact = loop.time()
        while not self._stopping:
            self._wakeup.clear()
            try:
                sent = await self.relay_once()
            except BrokerUnavailable as error:
                delay = min(max(delay * 2, self.backoff_base), self.backoff_max)
                logger.warning(
                    "outbox relay: broker unavailable; events stay queued",
                    extra={"error": str(error), "retry_in": delay},
                )
                await self._sleep(delay)
                continue
            except Exception as error:
                # The database, most likely: nothing was stamped, so nothing is lost.
                delay = min(max(delay * 2, self.backoff_base), self.backoff_max)
                self.last_error = f"{type(error).__name__}: {error}"
                logger.exception("outbox relay pass failed", extra={"retry_in": delay})
                await self._sleep(delay)
                continue
            delay = 0.0
            if sent:
                last_contact = loop.time()
            if sent >= self.batch_size:
                continue
            woken = await self._wait_for_wake(self.poll_interval)
            if not woken and loop.time() - last_contact >= self.ping_interval:
                # Idle for a while: ask the broker, so `healthy` does not go stale.
                last_contact = loop.time()
                self._healthy = await self.producer.ping()

    async def measure_backlog(self) -> OutboxBacklog:
        """Read the backlog now and, with `metrics`, set the outbox gauges from it."""
        backlog = await outbox_backlog(self.database)
        if self.metrics is not None:
            self.metrics.record_backlog(backlog.pending, backlog.oldest_age)
        return backlog

    async def _watch_backlog(self) -> None:
        while not self._stop_requested.is_set():
            try:
                await self.measure_backlog()
            except Exception as error:
                # The database, most likely; the gauges keep their last value meanwhile.
                logger.warning("outbox backlog not measured", extra={"error": repr(error)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), self.backlog_interval)

    async def _wait_for_wake(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        # Commits keep waking the relay during an outage; only stop() may cut a backoff short.
        deadline = asyncio.get_running_loop().time() + seconds
        while not self._stopping:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self._wait_for_wake(remaining)
            self._wakeup.clear()


async def purge_sent(database: Database, *, older_than: timedelta) -> int:
    """Delete rows sent more than `older_than` ago; return how many. Unsent rows are kept.

    The outbox is a queue, not an archive: run this periodically (after the longest time a
    replay from it could be wanted) so the table stays small.
    """
    cutoff = datetime.now(UTC) - older_than
    async with database.engine.begin() as connection:
        result = await connection.execute(
            delete(outbox).where(outbox.c.sent_at.is_not(None), outbox.c.sent_at < cutoff)
        )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class OutboxBacklog:
    pending: int  # rows not sent yet
    oldest_age: float  # seconds since the oldest of them was written; 0 when none


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; what it stores is UTC (CURRENT_TIMESTAMP).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def outbox_backlog(database: Database) -> OutboxBacklog:
    """The unsent rows and the oldest one's age, in one query. The age is measured on the
    database's clock, the one that stamped `created_at`."""
    async with database.engine.connect() as connection:
        pending, oldest, now = (
            await connection.execute(
                select(func.count(), func.min(outbox.c.created_at), func.current_timestamp())
                .select_from(outbox)
                .where(outbox.c.sent_at.is_(None))
            )
        ).one()
    if not pending or oldest is None:
        return OutboxBacklog(0, 0.0)
    age = (_utc(now) - _utc(oldest)).total_seconds()
    return OutboxBacklog(int(pending), max(0.0, age))


@dataclass(frozen=True)
class _Unsent:
    seq: int
    message: OutgoingMessage


async def _unsent(connection: AsyncConnection, limit: int) -> list[_Unsent]:
    result = await connection.execute(
        select(
            outbox.c.seq,
            outbox.c.topic,
            outbox.c.message_key,
            outbox.c.event_type,
            outbox.c.event_id,
            outbox.c.payload,
        )
        .where(outbox.c.sent_at.is_(None))
        .order_by(outbox.c.seq)
        .limit(limit)
    )
    return [
        _Unsent(
            seq=row.seq,
            message=OutgoingMessage(
                topic=row.topic,
                key=row.message_key.encode(),
                value=row.payload.encode(),
                # Lets consumers route or drop without parsing the body.
                headers=(
                    ("event-type", row.event_type.encode()),
                    ("event-id", str(row.event_id).encode()),
                ),
            ),
        )
        for row in result
    ]
