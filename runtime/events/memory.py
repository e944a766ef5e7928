"""The in-memory transport: topics, partitions and consumer groups in one process.

`MemoryBus` follows Kafka's rules (see `.transport`) so that the unit tests of one
service run the consumer and the outbox relay without a broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cloudretail.runtime.events.transport import (
    BatchSender,
    BrokerUnavailable,
    CommitFailed,
    Message,
    OutgoingMessage,
    TopicPartitionKey,
)


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


class MemoryProducer(BatchSender):
    """`Producer` on a `MemoryBus`."""

    def __init__(self, bus: MemoryBus) -> None:
        self.bus = bus

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

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
        self._lag: dict[TopicPartitionKey, int] = {}
        self._generation = -1
        self._joined = False

    @property
    def group_id(self) -> str:
        return self._group_id

    @property
    def topics(self) -> tuple[str, ...]:
        return self._topics

    @property
    def lag(self) -> Mapping[TopicPartitionKey, int]:
        return dict(self._lag)

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
        self._lag = {}

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
        assignment = self.bus._assignment(self)
        for topic, part in assignment:
            position = self._positions.get((topic, part))
            if position is None:
                position = group.committed.get((topic, part), 0)
            log = self.bus._logs[topic][part]
            chunk = log[position : position + (max_records - len(taken))]
            taken.extend(chunk)
            self._positions[(topic, part)] = position + len(chunk)
            if len(taken) >= max_records:
                break
        # As Kafka's high watermark: the log's end, here known for every partition held.
        self._lag = {
            (topic, part): len(self.bus._logs[topic][part])
            - self._positions.get((topic, part), group.committed.get((topic, part), 0))
            for topic, part in assignment
        }
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
