"""Transport interfaces: the `Producer` and `Source` protocols, the message types, the errors.

Two implementations behave alike: keyed messages land in a partition chosen by the key, a
consumer group reads each partition in order from its committed offset, and what a member read
but did not commit is read again by whoever owns the partition next. `.kafka` implements
these protocols over Kafka (aiokafka), `.memory` in one process, so the unit tests of one
service need no broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

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


class BatchSender:
    """`send` for a producer that implements `send_batch`: a batch of one."""

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()
    ) -> None:
        [outcome] = await self.send_batch([OutgoingMessage(topic, key, value, tuple(headers))])
        if outcome is not None:
            raise outcome

    async def send_batch(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[BrokerUnavailable | None]:
        raise NotImplementedError


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

    @property
    def lag(self) -> Mapping[TopicPartitionKey, int]:
        """Per partition held now, the records after the last one fetched up to the
        partition's high watermark as last known (no I/O). A partition nothing was fetched
        from yet may be missing."""
        ...

    async def commit(self, offsets: Mapping[TopicPartitionKey, int]) -> None:
        """Commit, per partition, the offset of the next message to read."""
        ...
