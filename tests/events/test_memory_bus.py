"""MemoryBus keeps Kafka's rules: key -> partition, groups share partitions, offsets decide."""

from __future__ import annotations

import pytest
from cloudretail.runtime.events.memory import MemoryBus, partition_for
from cloudretail.runtime.events.transport import BrokerUnavailable, CommitFailed


async def test_one_key_always_lands_in_one_partition() -> None:
    bus = MemoryBus(partitions=4)
    producer = bus.producer()
    for index in range(12):
        await producer.send("t", f"k{index % 3}".encode(), str(index).encode())
    by_key: dict[bytes | None, set[int]] = {}
    for message in bus.messages("t"):
        by_key.setdefault(message.key, set()).add(message.partition)
    assert all(len(parts) == 1 for parts in by_key.values())
    assert partition_for(b"k1", 4, 0) == partition_for(b"k1", 4, 99)


async def test_members_of_a_group_split_the_partitions_and_each_message_goes_to_one() -> None:
    bus = MemoryBus(partitions=4)
    bus.create_topic("t")
    first, second = bus.source("g", ["t"]), bus.source("g", ["t"])
    await first.start()
    await second.start()
    producer = bus.producer()
    for index in range(20):
        await producer.send("t", f"k{index}".encode(), str(index).encode())
    got_first = await first.fetch(0.1, 100)
    got_second = await second.fetch(0.1, 100)
    assert {m.partition for m in got_first}.isdisjoint({m.partition for m in got_second})
    assert sorted(int(m.value) for m in got_first + got_second) == list(range(20))
    # Another group reads everything on its own.
    other = bus.source("h", ["t"])
    await other.start()
    assert len(await other.fetch(0.1, 100)) == 20


async def test_uncommitted_messages_are_redelivered_to_the_next_owner() -> None:
    bus = MemoryBus(partitions=1)
    producer = bus.producer()
    for index in range(5):
        await producer.send("t", b"k", str(index).encode())
    member = bus.source("g", ["t"])
    await member.start()
    batch = await member.fetch(0.1, 100)
    assert [m.offset for m in batch] == [0, 1, 2, 3, 4]
    await member.commit({("t", 0): 2})  # applied 0 and 1 only
    await member.stop()
    assert bus.committed("g", "t", 0) == 2

    successor = bus.source("g", ["t"])
    await successor.start()
    assert [m.offset for m in await successor.fetch(0.1, 100)] == [2, 3, 4]


async def test_a_commit_after_a_rebalance_fails() -> None:
    bus = MemoryBus(partitions=2)
    bus.create_topic("t")
    member = bus.source("g", ["t"])
    await member.start()
    await member.fetch(0.01, 10)
    await bus.source("g", ["t"]).start()  # a second member joins: rebalance
    with pytest.raises(CommitFailed, match="rebalanced"):
        await member.commit({("t", 0): 1})


async def test_fetch_waits_for_a_message() -> None:
    bus = MemoryBus(partitions=1)
    bus.create_topic("t")
    member = bus.source("g", ["t"])
    await member.start()
    assert await member.fetch(0.05, 10) == []
    await bus.producer().send("t", b"k", b"v")
    assert [m.value for m in await member.fetch(1, 10)] == [b"v"]


async def test_an_unavailable_bus_refuses_sends_and_delivers_nothing() -> None:
    bus = MemoryBus(partitions=1)
    producer = bus.producer()
    await producer.send("t", b"k", b"before")
    member = bus.source("g", ["t"])
    await member.start()
    bus.available = False
    assert not await producer.ping()
    with pytest.raises(BrokerUnavailable):
        await producer.send("t", b"k", b"during")
    assert await member.fetch(0.05, 10) == []
    bus.available = True
    assert [m.value for m in await member.fetch(0.5, 10)] == [b"before"]
