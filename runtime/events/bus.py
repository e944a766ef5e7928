"""Transport: the producer and consumer interfaces, over Kafka (aiokafka) or in memory.

Both implementations behave alike: keyed messages land in a partition chosen by the key, a
consumer group reads each partition in order from its committed offset, and what a member read
but did not commit is read again by whoever owns the partition next. `MemoryBus` lets the unit
tests of one service run that behaviour without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, UnknownError
from aiokafka.protocol.metadata import MetadataRequest
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

Header = tuple[str, bytes]
TopicPartitionKey = tuple[str, int]


class BrokerUnavailable(ConnectionError):
    """The broker did not take a message: unreachable, timed out, or it refused the request."""


class CommitFailed(RuntimeError):
    """Offsets were not committed, typically because a rebalance moved the partition away.

    Harmless for correctness: the next owner reads the messages again and the consumer's
    `processed_events` table makes the repeat a no-op.
    """


@dataclass(frozen=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...] = ()


@dataclass(frozen=True)
class Message:
    """A message as read from a partition."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[Header, ...] = ()
    timestamp_ms: int | None = None


class Producer(Protocol):
    """Sends messages with acks from all in-sync replicas; every send waits for its ack."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()
    ) -> None:
        """Send one message and wait for its ack; raises `BrokerUnavailable` when not acked."""
        ...

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        """Send in order, wait for every ack; per message None (acked) or the failure."""
        ...

    async def ping(self) -> bool:
        """True when the broker answers now; never raises."""
        ...


class Source(Protocol):
    """One member of a consumer group, reading its assigned partitions."""

    @property
    def group_id(self) -> str: ...

    @property
    def topics(self) -> tuple[str, ...]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Leave the group without committing anything."""
        ...

    async def fetch(self, timeout: float, max_records: int) -> list[Message]:
        """Up to `max_records` messages, waiting at most `timeout` seconds for the first."""
        ...

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Commit, per partition, the offset of the next message to read."""
        ...


class KafkaSettings(BaseSettings):
    """The event bus settings a service reads from its environment."""

    model_config = SettingsConfigDict(
        case_sensitive=False, env_ignore_empty=True, extra="ignore", frozen=True
    )

    kafka_bootstrap_servers: str | None = None
    # Idempotent producers need InitProducerId, which the embedded tansu broker lacks:
    # deployments on real Kafka keep True, the local embedded broker sets KAFKA_IDEMPOTENT=false.
    kafka_idempotent: bool = True


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class KafkaProducer:
    """`Producer` over aiokafka, started lazily so a broker that is down at boot fails no one.

    `refresh_metadata` (default: when not idempotent, i.e. the embedded broker) re-reads the
    cluster metadata before each batch. A restarted embedded broker has forgotten its topics yet
    acknowledges writes to partitions it no longer has, and those writes vanish; fresh metadata
    makes the producer notice (and the broker recreate the topic) first.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        idempotent: bool,
        request_timeout_ms: int = 10_000,
        linger_ms: int = 0,
        client_id: str | None = None,
        refresh_metadata: bool | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.idempotent = idempotent
        self.request_timeout_ms = request_timeout_ms
        self.linger_ms = linger_ms
        self.client_id = client_id
        self.refresh_metadata = (not idempotent) if refresh_metadata is None else refresh_metadata
        self._producer: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: KafkaSettings, **options: Any) -> KafkaProducer:
        if not settings.kafka_bootstrap_servers:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is not set")
        return cls(
            settings.kafka_bootstrap_servers, idempotent=settings.kafka_idempotent, **options
        )

    async def start(self) -> None:
        await self._started()

    async def _started(self) -> Any:
        async with self._lock:
            if self._producer is not None:
                return self._producer
            options: dict[str, Any] = {
                "bootstrap_servers": self.bootstrap_servers,
                "acks": "all",
                "enable_idempotence": self.idempotent,
                "request_timeout_ms": self.request_timeout_ms,
                "linger_ms": self.linger_ms,
            }
            if self.client_id:
                options["client_id"] = self.client_id
            producer = AIOKafkaProducer(**options)
            try:
                await producer.start()
            except Exception as error:
                # A half-started client holds sockets and tasks; a failed start must not leak.
                await _stop_quietly(producer)
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {self.bootstrap_servers}: {_describe(error)}"
                    + self._hint(error)
                ) from error
            self._producer = producer
            return producer

    async def stop(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()
    ) -> None:
        [outcome] = await self.send_batch([OutgoingMessage(topic, key, value, tuple(headers))])
        if outcome is not None:
            raise outcome

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        if not messages:
            return []
        try:
            producer = await self._started()
            if self.refresh_metadata:
                await self._refresh_metadata(producer, {message.topic for message in messages})
        except BrokerUnavailable as error:
            return [error] * len(messages)

        outcomes: list[BrokerUnavailable | None] = [None] * len(messages)
        pending: list[tuple[int, asyncio.Future[Any]]] = []
        for index, message in enumerate(messages):
            try:
                # Awaiting each enqueue in turn keeps the batch's order within each partition.
                future = await producer.send(
                    message.topic, message.value, key=message.key, headers=list(message.headers)
                )
            except Exception as error:
                # Enqueueing later messages after a failure could overtake the failed one.
                failure = self._unavailable(error)
                for rest in range(index, len(messages)):
                    outcomes[rest] = failure
                break
            pending.append((index, future))
        results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
        for (index, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                outcomes[index] = self._unavailable(result)
        return outcomes

    async def _refresh_metadata(self, producer: Any, topics: set[str]) -> None:
        client = producer.client
        for topic in topics:
            await client.add_topic(topic)
        if not await client.force_metadata_update():
            raise BrokerUnavailable(f"Kafka at {self.bootstrap_servers} did not answer metadata")

    def _unavailable(self, error: BaseException) -> BrokerUnavailable:
        unavailable = BrokerUnavailable(
            f"Kafka at {self.bootstrap_servers} did not ack: {_describe(error)}" + self._hint(error)
        )
        unavailable.__cause__ = error
        return unavailable

    def _hint(self, error: BaseException) -> str:
        # tansu answers InitProducerId with an unknown error; say what to do about it.
        if self.idempotent and isinstance(error, UnknownError):
            return (
                " (if this is the embedded tansu broker, set KAFKA_IDEMPOTENT=false: it does"
                " not implement InitProducerId, which idempotent producers need)"
            )
        return ""

    async def ping(self) -> bool:
        try:
            producer = await self._started()
            timeout = self.request_timeout_ms / 1000
            return bool(await asyncio.wait_for(producer.client.force_metadata_update(), timeout))
        except Exception:
            return False


class KafkaSource:
    """`Source` over an aiokafka consumer group, offsets committed only when told to.

    The embedded tansu broker numbers a group's first generation 0, which aiokafka reads as
    "never joined" and so skips LeaveGroup on stop: the group's next member then waits out the
    old member's session timeout before it gets partitions. Tests use short session timeouts.

    `check_cluster_id` (for the embedded broker, which gets a new cluster id on every start):
    after each non-empty fetch the cluster id is read again, and if it changed the batch is
    dropped and the consumer starts over from the new broker's committed offsets. Without it,
    positions held from the old broker would skip the restarted broker's first messages, and
    tansu would even accept the resulting commits from the stale member.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        topics: Iterable[str],
        *,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        fetch_max_wait_ms: int = 100,
        metadata_max_age_ms: int = 30_000,
        check_cluster_id: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._group_id = group_id
        self._topics = tuple(sorted(set(topics)))
        if not self._topics:
            raise ValueError("a KafkaSource needs at least one topic")
        self._options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
            # A new group starts at the beginning: a service deployed after events were
            # published still sees them (within retention).
            "auto_offset_reset": "earliest",
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            # tansu holds a fetch spanning several partitions for the whole wait even when
            # data arrives (measured: p50 latency ~wait/2), so the wait bounds latency there;
            # Kafka answers as soon as data arrives, and a short wait only adds idle polls.
            "fetch_max_wait_ms": fetch_max_wait_ms,
            # Partitions added to a topic (or a topic recreated by a restarted embedded broker
            # with another count) are only noticed on a metadata refresh: aiokafka's default
            # of 5 minutes would leave the new partitions unread that long.
            "metadata_max_age_ms": metadata_max_age_ms,
        }
        if client_id:
            self._options["client_id"] = client_id
        self.check_cluster_id = check_cluster_id
        self.restarts = 0
        self._consumer: Any = None
        self._probe: Any = None
        self._cluster_id: str | None = None

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    async def start(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(*self._topics, **self._options)
        try:
            await consumer.start()
            if self.check_cluster_id:
                self._probe = AIOKafkaClient(bootstrap_servers=self.bootstrap_servers)
                await self._probe.bootstrap()
                self._cluster_id = await self._read_cluster_id()
        except Exception as error:
            await _stop_quietly(consumer)
            await self._close_probe()
            raise BrokerUnavailable(
                f"cannot reach Kafka at {self.bootstrap_servers}: {_describe(error)}"
            ) from error
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await _stop_quietly(consumer)
        await self._close_probe()

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                await probe.close()
            except Exception as error:
                logger.warning("kafka client did not close cleanly", extra={"error": repr(error)})

    async def _read_cluster_id(self) -> str | None:
        response = await self._probe.send(self._probe.get_random_node(), MetadataRequest([]))
        cluster_id = getattr(response, "cluster_id", None)
        return cluster_id if isinstance(cluster_id, str) else None

    async def fetch(self, timeout: float, max_records: int) -> list[Message]:
        if self._consumer is None:
            raise RuntimeError("KafkaSource.fetch before start()")
        batches = await self._consumer.getmany(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        if batches and self.check_cluster_id and not await self._same_broker(batches):
            return []
        return [
            Message(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=tuple(record.headers or ()),
                timestamp_ms=record.timestamp,
            )
            for records in batches.values()
            for record in records
        ]

    async def _same_broker(self, batches: Mapping[Any, Sequence[Any]]) -> bool:
        """False (and the consumer restarted or rewound) when the batch cannot be trusted."""
        try:
            current = await self._read_cluster_id()
        except Exception as error:
            # Cannot tell now: hand back nothing and read these records again next time.
            logger.warning("cannot read the cluster id", extra={"error": _describe(error)})
            for partition, records in batches.items():
                if records:
                    self._consumer.seek(partition, records[0].offset)
            return False
        if current == self._cluster_id:
            return True
        logger.warning(
            "kafka cluster id changed: a new (restarted, empty) broker; rejoining the group",
            extra={"group_id": self._group_id, "was": self._cluster_id, "now": current},
        )
        self.restarts += 1
        await self.stop()
        await self.start()
        return False

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        if self._consumer is None or not offsets:
            return
        try:
            await self._consumer.commit(
                {TopicPartition(topic, part): offset for (topic, part), offset in offsets.items()}
            )
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            raise CommitFailed(f"offsets not committed: {_describe(error)}") from error


async def _stop_quietly(client: Any) -> None:
    try:
        await client.stop()
    except Exception as error:
        logger.warning("kafka client did not stop cleanly", extra={"error": _describe(error)})


def partition_for(key: bytes | None, partitions: int, counter: int) -> int:
    """Stable across processes (unlike hash()); keyless messages spread round-robin."""
    if key is None:
        return counter % partitions
    return zlib.crc32(key) % partitions


@dataclass
class _Group:
    members: list[MemorySource] = field(default_factory=list)
    committed: dict[TopicPartitionKey, int] = field(default_factory=dict)
    generation: int = 0


class MemoryBus:
    """Topics, partitions and consumer groups in one process, for unit tests.

    Set `available = False` to simulate a broker outage: sends raise `BrokerUnavailable`,
    fetches return nothing and commits fail, as with an unreachable Kafka.
    """

    def __init__(self, *, partitions: int = 3) -> None:
        self.default_partitions = partitions
        self.available = True
        self._logs: dict[str, list[list[Message]]] = {}
        self._groups: dict[str, _Group] = {}
        self._keyless = 0
        # Replaced on every append: waiters hold the current one, so none misses a wake-up.
        self._arrived = asyncio.Event()

    def create_topic(self, name: str, partitions: int | None = None) -> None:
        if name not in self._logs:
            count = partitions or self.default_partitions
            self._logs[name] = [[] for _ in range(count)]
            self._rebalance_subscribers(name)

    def topics(self) -> dict[str, int]:
        return {name: len(parts) for name, parts in self._logs.items()}

    def messages(self, topic: str) -> list[Message]:
        """Every message of a topic, partition by partition, for assertions."""
        return [message for part in self._logs.get(topic, []) for message in part]

    def committed(self, group_id: str, topic: str, partition: int) -> int | None:
        group = self._groups.get(group_id)
        return None if group is None else group.committed.get((topic, partition))

    def producer(self) -> MemoryProducer:
        return MemoryProducer(self)

    def source(self, group_id: str, topics: Iterable[str]) -> MemorySource:
        return MemorySource(self, group_id, topics)

    def _append(self, outgoing: OutgoingMessage) -> Message:
        self.create_topic(outgoing.topic)
        parts = self._logs[outgoing.topic]
        self._keyless += outgoing.key is None
        index = partition_for(outgoing.key, len(parts), self._keyless)
        message = Message(
            topic=outgoing.topic,
            partition=index,
            offset=len(parts[index]),
            key=outgoing.key,
            value=outgoing.value,
            headers=outgoing.headers,
            timestamp_ms=int(time.time() * 1000),
        )
        parts[index].append(message)
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()
        return message

    def _join(self, member: MemorySource) -> None:
        group = self._groups.setdefault(member.group_id, _Group())
        if member not in group.members:
            group.members.append(member)
            group.generation += 1

    def _leave(self, member: MemorySource) -> None:
        group = self._groups.get(member.group_id)
        if group is not None and member in group.members:
            group.members.remove(member)
            group.generation += 1

    def _rebalance_subscribers(self, topic: str) -> None:
        # A new topic changes the assignment of every group reading it, as in Kafka.
        for group in self._groups.values():
            if any(topic in member.topics for member in group.members):
                group.generation += 1

    def _assignment(self, member: MemorySource) -> list[TopicPartitionKey]:
        group = self._groups[member.group_id]
        assigned: list[TopicPartitionKey] = []
        for topic in member.topics:
            readers = [other for other in group.members if topic in other.topics]
            for part in range(len(self._logs.get(topic, []))):
                if readers[part % len(readers)] is member:
                    assigned.append((topic, part))
        return assigned


class MemoryProducer:
    """`Producer` on a `MemoryBus`."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()
    ) -> None:
        [outcome] = await self.send_batch([OutgoingMessage(topic, key, value, tuple(headers))])
        if outcome is not None:
            raise outcome

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        # Yield once, as a network send would: code that forgets to await shows up here too.
        await asyncio.sleep(0)
        if not self.bus.available:
            return [BrokerUnavailable("memory bus is unavailable")] * len(messages)
        for message in messages:
            self.bus._append(message)
        return [None] * len(messages)

    async def ping(self) -> bool:
        return self.bus.available


class MemorySource:
    """`Source` on a `MemoryBus`: a group member with Kafka's offset and rebalance rules."""

    def __init__(self, bus: MemoryBus, group_id: str, topics: Iterable[str]) -> None:
        self.bus = bus
        self._group_id = group_id
        self._topics = tuple(sorted(set(topics)))
        self._positions: dict[TopicPartitionKey, int] = {}
        self._generation = -1
        self._joined = False

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    async def start(self) -> None:
        if self._joined:
            return
        # As a Kafka consumer cannot join its group while the broker is unreachable.
        if not self.bus.available:
            raise BrokerUnavailable("memory bus is unavailable")
        self.bus._join(self)
        self._joined = True

    async def stop(self) -> None:
        self.bus._leave(self)
        self._joined = False

    async def fetch(self, timeout: float, max_records: int) -> list[Message]:
        if not self._joined:
            raise RuntimeError("MemorySource.fetch before start()")
        deadline = time.monotonic() + timeout
        while True:
            arrived = self.bus._arrived
            if self.bus.available:
                batch = self._take(max_records)
                if batch:
                    return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Also re-checked on a timer: a rebalance or the end of an outage sends no signal.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), min(remaining, 0.05))

    def _take(self, max_records: int) -> list[Message]:
        group = self.bus._groups[self._group_id]
        if self._generation != group.generation:
            # After a rebalance every member restarts from the committed offsets.
            self._positions.clear()
            self._generation = group.generation
        taken: list[Message] = []
        for topic, part in self.bus._assignment(self):
            position = self._positions.get((topic, part))
            if position is None:
                position = group.committed.get((topic, part), 0)
            log = self.bus._logs[topic][part]
            chunk = log[position : position + (max_records - len(taken))]
            taken.extend(chunk)
            self._positions[(topic, part)] = position + len(chunk)
            if len(taken) >= max_records:
                break
        return taken

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        await asyncio.sleep(0)
        if not self.bus.available:
            raise CommitFailed("memory bus is unavailable")
        group = self.bus._groups.get(self._group_id)
        if group is None or self not in group.members or self._generation != group.generation:
            raise CommitFailed(f"group {self._group_id!r} rebalanced; offsets not committed")
        assigned = set(self.bus._assignment(self))
        for key, offset in offsets.items():
            if key not in assigned:
                raise CommitFailed(f"partition {key} is not assigned to this member")
            group.committed[key] = offset
