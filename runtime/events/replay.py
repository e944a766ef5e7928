"""Replaying topics: the retained events of a service's topics, read again from the start and
handled by the service's own consumer into another database.

`ReplaySource` is a `Source` over every partition of its topics, from the earliest retained
message up to the end offsets it found when it started; it joins no consumer group and
commits nothing to Kafka (the consumer's commits only mark progress), so the service's own
group never notices. `EventReplay` runs an `EventConsumer` over it (the same handlers, the
same claim in `processed_events`, so an event already in the database is skipped) until
every partition is done. A replay writes nothing to the broker: what the consumer would
dead-letter is kept in the report instead.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.kafka import _describe, _stop_quietly, message_of, tls_options
from cloudretail.runtime.events.registry import EventRegistry
from cloudretail.runtime.events.transport import (
    BatchSender,
    BrokerUnavailable,
    Message,
    OutgoingMessage,
    TopicPartitionKey,
)


class ReplayStalled(RuntimeError):
    """No event was handled for too long: the broker or the database stopped answering, or a
    handler keeps failing on something that is not the event's fault."""


@dataclass(frozen=True)
class TopicProgress:
    topic: str
    partitions: int
    handled: int  # messages the consumer is done with (applied, skipped or dead-lettered)
    total: int  # messages between the earliest retained one and the end found at start


@dataclass(frozen=True)
class DeadLetter:
    """An event the consumer could not apply; a live consumer would have dead-lettered it."""

    topic: str
    partition: int
    offset: int
    error: str


@dataclass(frozen=True)
class ReplayReport:
    topics: tuple[TopicProgress, ...]
    missing_topics: tuple[str, ...]  # consumed, but not on the broker
    applied: int
    duplicates: int  # already in the database (a replay run again, or resumed)
    skipped: int  # other services' events on the same topics
    dead_letters: tuple[DeadLetter, ...]
    seconds: float


class ReplaySource:
    """Every partition of `topics`, from the earliest retained message to the end offsets of
    `start()`; messages published later are left alone. `group_id` names whose consumer
    reads it (EventConsumer checks it); no group is joined."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        *,
        group_id: str,
        tls: ssl.SSLContext | None = None,
        request_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._topics = tuple(sorted(set(topics)))
        if not self._topics:
            raise ValueError("a ReplaySource needs at least one topic")
        self._group_id = group_id
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": None,
            "enable_auto_commit": False,
            "client_id": f"{group_id}-replay",
            "request_timeout_ms": request_timeout_ms,
            **tls_options(tls),
        }
        self._timeout = request_timeout_ms / 1000
        self.missing_topics: tuple[str, ...] = ()
        self._consumer: Any = None
        self._started = False
        self._partitions: list[TopicPartition] = []
        self._begin: dict[TopicPartitionKey, int] = {}
        self._end: dict[TopicPartitionKey, int] = {}
        self._handed: dict[TopicPartitionKey, int] = {}  # next offset after those handed out
        self._done: dict[TopicPartitionKey, int] = {}  # next offset after those handled
        self._reached: set[TopicPartitionKey] = set()  # read up to the end
        self._progress = asyncio.Event()

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    @property
    def lag(self) -> Mapping[TopicPartitionKey, int]:
        return {key: max(0, end - self._done[key]) for key, end in self._end.items()}

    @property
    def complete(self) -> bool:
        """Every message up to the end offsets handed out and handled."""
        return self._started and all(
            key in self._reached and self._done[key] >= self._handed[key] for key in self._end
        )

    def progress(self) -> tuple[TopicProgress, ...]:
        return tuple(
            TopicProgress(
                topic,
                sum(1 for key in self._end if key[0] == topic),
                sum(self._done[key] - self._begin[key] for key in self._end if key[0] == topic),
                sum(self._end[key] - self._begin[key] for key in self._end if key[0] == topic),
            )
            for topic in self._topics
            if topic not in self.missing_topics
        )

    async def start(self) -> None:
        """Assign every partition and note where each begins and ends (once; the consumer
        calls this again before each fetch)."""
        if self._started:
            return
        consumer = AIOKafkaConsumer(**self._options)
        try:
            await consumer.start()
            partitions, missing = [], []
            for topic in self._topics:
                numbers = consumer.partitions_for_topic(topic)
                if not numbers:
                    missing.append(topic)
                partitions += [TopicPartition(topic, number) for number in sorted(numbers or ())]
            # Paused at once: nothing is fetched ahead until the consumer asks (the first
            # fetch resumes them), so what is read is read after the ends were taken.
            consumer.assign(partitions)
            consumer.pause(*partitions)
            begin = await consumer.beginning_offsets(partitions) if partitions else {}
            listed = await consumer.end_offsets(partitions) if partitions else {}
            end = await _ends(self._options, listed, self._timeout)
            for partition in partitions:
                consumer.seek(partition, begin[partition])
        except Exception as error:
            await _stop_quietly(consumer)
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers}: {_describe(error)}"
            ) from error
        self._consumer = consumer
        self._started = True
        self.missing_topics = tuple(missing)
        self._partitions = partitions
        for partition in partitions:
            key = (partition.topic, partition.partition)
            self._begin[key] = self._handed[key] = self._done[key] = begin[partition]
            self._end[key] = end[partition]
            if end[partition] <= begin[partition]:
                self._reached.add(key)

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _close(consumer)

    async def fetch(self, timeout: float, max_records: int) -> list[Message]:
        if self._consumer is None:
            raise RuntimeError("ReplaySource.fetch before start()")
        reading = [p for p in self._partitions if (p.topic, p.partition) not in self._reached]
        if not reading:
            await asyncio.sleep(timeout)
            return []
        self._consumer.resume(*reading)
        batches = await self._consumer.getmany(
            *reading, timeout_ms=int(timeout * 1000), max_records=max_records
        )
        messages = []
        for partition, records in batches.items():
            key = (partition.topic, partition.partition)
            kept = [record for record in records if record.offset < self._end[key]]
            if kept:
                self._handed[key] = kept[-1].offset + 1
            messages += [message_of(record) for record in kept]
        for partition in reading:
            # The position, not the last record: offsets at the end may hold no message (a
            # transaction marker), and those past it were published after the start.
            if await self._consumer.position(partition) >= self._end[key_of(partition)]:
                self._reached.add(key_of(partition))
                self._consumer.pause(partition)
        return messages

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Kafka is not told: these offsets only mark what the consumer has handled."""
        for key, offset in offsets.items():
            if key in self._done:
                self._done[key] = max(self._done[key], offset)
        self._progress.set()

    async def progressed(self, timeout: float) -> bool:
        """Wait until the consumer handles more (True) or `timeout` seconds pass (False)."""
        try:
            await asyncio.wait_for(self._progress.wait(), timeout)
        except TimeoutError:
            return False
        self._progress.clear()
        return True


def key_of(partition: TopicPartition) -> TopicPartitionKey:
    return (partition.topic, partition.partition)


async def _ends(
    options: Mapping[str, Any], listed: Mapping[TopicPartition, int], timeout: float
) -> dict[TopicPartition, int]:
    """Where each partition ends now: the larger of ListOffsets' answer (`listed`) and the
    high watermark a fetch reports. tansu answers ListOffsets with one past the first record
    of the partition's last batch, not its last record (measured with tansu 0.6: three
    events the relay sent in one batch gave an end one past the first); its fetches carry
    the right mark. A consumer of its own fetches, from `listed`, so little is read."""
    if not listed:
        return {}
    probe = AIOKafkaConsumer(**options)
    await probe.start()
    try:
        probe.assign(list(listed))
        for partition, offset in listed.items():
            probe.seek(partition, offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(probe.highwater(partition) is None for partition in listed):
            if loop.time() > deadline:
                raise TimeoutError(f"no fetch answered within {timeout:g} s")
            await probe.getmany(timeout_ms=100, max_records=1)
        return {p: max(offset, probe.highwater(p)) for p, offset in listed.items()}
    finally:
        await _close(probe)


async def _close(consumer: Any) -> None:
    try:
        await _stop_quietly(consumer)
    except asyncio.CancelledError:
        # aiokafka's group-less consumer, stopped before its background task first ran,
        # raises that task's cancellation here; only our own cancellation goes on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


class KeptDeadLetters(BatchSender):
    """The replay's `Producer`: keeps what the consumer would send to a dead-letter topic
    instead of sending it. Nothing else is sent by a consumer."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        self.messages.extend(messages)
        return [None] * len(messages)

    async def ping(self) -> bool:
        return True


def _dead_letter(message: OutgoingMessage) -> DeadLetter:
    headers = {name: value.decode(errors="replace") for name, value in message.headers}
    return DeadLetter(
        topic=headers.get("original-topic", message.topic),
        partition=int(headers.get("original-partition", "-1")),
        offset=int(headers.get("original-offset", "-1")),
        error=headers.get("error", ""),
    )


class EventReplay:
    """One replay of `service`'s topics: `open()` finds where each partition ends (and so
    whether the broker answers), `run()` handles everything up to there into a database."""

    def __init__(
        self,
        registry: EventRegistry,
        handlers: Mapping[str, Handler],
        *,
        service: str,
        bootstrap_servers: str,
        tls: ssl.SSLContext | None = None,
        batch_size: int = 100,
        stall_timeout: float = 60.0,
    ) -> None:
        self.registry = registry
        self.handlers = dict(handlers)
        self.service = service
        self.batch_size = batch_size
        self.stall_timeout = stall_timeout
        self.source = ReplaySource(
            bootstrap_servers,
            consumer_topics(registry, handlers),
            group_id=service,
            tls=tls,
        )

    async def open(self) -> None:
        await self.source.start()

    async def close(self) -> None:
        await self.source.stop()

    async def run(
        self,
        database: Database,
        progress: Callable[[tuple[TopicProgress, ...]], None] | None = None,
        *,
        progress_interval: float = 1.0,
    ) -> ReplayReport:
        """Handle every retained event up to the ends `open()` found; `progress` hears how
        far each topic is, at most every `progress_interval` seconds and at the end."""
        await self.open()
        started = time.monotonic()
        kept = KeptDeadLetters()
        consumer = EventConsumer(
            database,
            self.registry,
            self.source,
            kept,
            service=self.service,
            handlers=self.handlers,
            batch_size=self.batch_size,
            backoff_base=0.05,
            backoff_max=1.0,
            poll_timeout=0.2,
        )
        told = started
        try:
            if not self.source.complete:
                await consumer.start()
            while not self.source.complete:
                if not await self.source.progressed(self.stall_timeout):
                    left = sum(self.source.lag.values())
                    raise ReplayStalled(
                        f"no event handled for {self.stall_timeout:g} s with {left} still to "
                        "go: is the broker or the database down? (the log says more)"
                    )
                if progress is not None and time.monotonic() - told >= progress_interval:
                    told = time.monotonic()
                    progress(self.source.progress())
        finally:
            await consumer.stop()
        topics = self.source.progress()
        if progress is not None:
            progress(topics)
        stats = consumer.stats
        return ReplayReport(
            topics=topics,
            missing_topics=self.source.missing_topics,
            applied=stats.applied,
            duplicates=stats.duplicates,
            skipped=stats.skipped,
            dead_letters=tuple(_dead_letter(message) for message in kept.messages),
            seconds=time.monotonic() - started,
        )
