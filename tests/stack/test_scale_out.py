"""`cloudretail up --scale order=2,inventory=2` on PostgreSQL and Redis: two processes of each
on their own ports behind the gateway, one database, one consumer group and one outbox per
service. Both instances serve; the outbox relays send each event once; each group splits
its partitions between the instances and rebalances when one is killed (SIGKILL, while
orders keep coming); every order reaches its final state once and the invariants hold.

Starts a whole stack on the spec's ports and the embedded broker on 9092: run it under
`flock /tmp/cloudretail-stack.lock`."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import (
    REDIS_TEST_URL,
    database_dsn,
    run_in_own_loop,
)
from tests.stack.conftest import (
    Stack,
    assert_invariants,
    new_product,
    order_body,
    require_postgres_and_redis,
    start,
    stop,
)

# The topics each scaled service's group consumes, and the ones their relays send to.
GROUPS = {
    "order": ("inventory-events", "payment-events", "product-events", "user-events"),
    "inventory": ("order-events",),
}
SENT_BY_SCALED = ("order-events", "inventory-events")
BATCH = 24  # orders per batch, placed 8 at a time


@pytest.fixture(scope="module")
def scaled_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_postgres_and_redis()
    stack = start(
        tmp_path_factory.mktemp("scaled"),
        "--database-url-template",
        database_dsn("cloudretail_scale_{database}"),
        "--redis-url",
        REDIS_TEST_URL,
        "--scale",
        "order=2,inventory=2",
    )
    try:
        yield stack
    finally:
        stop(stack)


# -- reading the stack -------------------------------------------------------------------------


def requests_served(port: int, route: str) -> float:
    """The requests to `route` one instance answered, from its own /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "http_requests"
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.labels.get("route") == route
    )


def log_lines(path: Path, start: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines of an instance from byte `start` on."""
    with path.open("rb") as log:
        log.seek(start)
        raw = log.read().decode(errors="replace")
    lines = []
    for line in raw.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            lines.append(record)
    return lines


def assignments(path: Path, start: int = 0) -> list[set[tuple[str, int]]]:
    """Each assignment the instance's consumer got, oldest first."""
    return [
        {(topic, p) for topic, parts in line["partitions"].items() for p in parts}
        for line in log_lines(path, start)
        if line.get("message") == "partitions assigned"
    ]


def applied(paths: list[Path]) -> Counter[str]:
    """How many times the instances applied each event (by id)."""
    return Counter(
        line["event_id"]
        for path in paths
        for line in log_lines(path)
        if line.get("message") == "event applied"
    )


async def _partitions(consumer: Any, topics: tuple[str, ...]) -> list[Any]:
    from aiokafka import TopicPartition

    await consumer.start()
    return [
        TopicPartition(topic, p)
        for topic in topics
        for p in sorted(consumer.partitions_for_topic(topic) or ())
    ]


def lagging(bootstrap: str, group: str) -> dict[str, int]:
    """The group's partitions with messages it has not committed yet: how many."""

    async def measure() -> dict[str, int]:
        from aiokafka import AIOKafkaConsumer

        # Reads the group's committed offsets (OffsetFetch) without joining the group.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        try:
            partitions = await _partitions(consumer, GROUPS[group])
            ends = await consumer.end_offsets(partitions)
            behind = {}
            for partition in partitions:
                committed = await consumer.committed(partition)
                if ends[partition] > (committed or 0):
                    key = f"{partition.topic}[{partition.partition}]"
                    behind[key] = ends[partition] - (committed or 0)
            return behind
        finally:
            await consumer.stop()

    return run_in_own_loop(measure)  # type: ignore[no-any-return]


def caught_up(bootstrap: str, group: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while behind := lagging(bootstrap, group):
        assert time.monotonic() < deadline, f"the {group} group is behind on {behind}"
        time.sleep(0.5)


def sent_events(bootstrap: str, topics: tuple[str, ...]) -> Counter[str]:
    """How many times each event id is on the topics (every message, from the start)."""

    async def read() -> Counter[str]:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        try:
            partitions = await _partitions(consumer, topics)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            seen: Counter[str] = Counter()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                positions = [await consumer.position(p) for p in partitions]
                if all(at >= ends[p] for at, p in zip(positions, partitions, strict=True)):
                    return seen
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        headers = dict(record.headers or ())
                        seen[headers["event-id"].decode()] += 1
            raise AssertionError("the topics were not read to their end in 20 s")
        finally:
            await consumer.stop()

    return run_in_own_loop(read)  # type: ignore[no-any-return]


def unsent_rows(database_url: str) -> int:
    async def count() -> int:
        import asyncpg

        url = database_url.replace("postgresql+asyncpg://", "postgresql://")
        connection = await asyncpg.connect(url, timeout=5)
        try:
            return int(
                await connection.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            )
        finally:
            await connection.close()

    return int(run_in_own_loop(count))


def eventually(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.3)


# -- placing orders ----------------------------------------------------------------------------


def place_orders(
    stack: Stack, product_id: str, customers: list[dict[str, str]], prefix: str
) -> dict[str, dict[str, Any]]:
    """BATCH orders of one unit, concurrently through the gateway, each under its own
    Idempotency-Key; a request that met a stopping or dead instance (5xx) is sent again
    with the same key, as a client would. The answers by key."""

    def place(index: int) -> tuple[str, dict[str, Any]]:
        key = f"{prefix}-{index}"
        headers = {**customers[index % len(customers)], "Idempotency-Key": key}
        with httpx.Client(base_url=stack.gateway, timeout=60.0) as client:
            for _ in range(20):
                response = client.post("/api/orders", json=order_body(product_id), headers=headers)
                if response.status_code == 201:
                    return key, response.json()
                assert response.status_code in (409, 502, 503, 504), response.text
                time.sleep(0.5)  # 409: the first attempt is still in flight
        raise AssertionError(f"order {key} not placed: {response.status_code} {response.text}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(place, range(BATCH)))


def test_scaled_services_share_the_work_and_lose_nothing(scaled_stack: Stack) -> None:
    stack = scaled_stack
    logs = stack.data_dir / "logs"
    state = stack.state()["processes"]
    instances = {name: info["deployable"] for name, info in state.items()}
    assert {name: of for name, of in instances.items() if name != of} == {
        "order-2": "order",
        "inventory-2": "inventory",
    }
    plan = json.loads((stack.data_dir / "stack.json").read_text())["plan"]
    bootstrap = plan["bootstrap"]
    # One database per service, migrated once, whatever the instances.
    assert sorted(d["name"] for d in plan["databases"]).count("order") == 1
    order_db = next(d["url"] for d in plan["databases"] if d["name"] == "order")

    admin = stack.admin()
    product_id = new_product(stack, admin, stock=200)
    customers = [stack.customer()[1] for _ in range(4)]

    # Both instances of each group hold partitions, disjoint and together all of them.
    def split(group: str) -> bool:
        first = assignments(logs / f"{group}.log")
        second = assignments(logs / f"{group}-2.log")
        return bool(first and second and first[-1] and second[-1]) and not (first[-1] & second[-1])

    partitions = {topic["name"]: topic["partitions"] for topic in plan["topics"]}
    for group, topics in GROUPS.items():
        eventually(lambda group=group: split(group), f"the {group} group split its partitions")
        first = assignments(logs / f"{group}.log")[-1]
        second = assignments(logs / f"{group}-2.log")[-1]
        assert first | second == {(t, p) for t in topics for p in range(partitions[t])}

    placed = place_orders(stack, product_id, customers, "before")
    assert {answer["status"] for answer in placed.values()} == {"confirmed"}

    # Both instances answered: orders (placed through the gateway), stock reads.
    with stack.client() as client:
        for _ in range(12):
            assert client.get(f"/api/inventory/{product_id}").status_code == 200
    assert requests_served(3003, "/api/orders") > 0
    assert requests_served(3103, "/api/orders") > 0
    assert requests_served(3004, "/api/inventory/{product_id}") > 0
    assert requests_served(3104, "/api/inventory/{product_id}") > 0

    # Kill one order instance once its relay sent everything (a kill between the broker's
    # ack and the stamp would legitimately send a row twice: delivery is at least once).
    eventually(lambda: unsent_rows(order_db) == 0, "the order outbox drained")
    survivor_log = logs / "order.log"
    mark = survivor_log.stat().st_size
    os.kill(state["order-2"]["pid"], signal.SIGKILL)
    more = place_orders(stack, product_id, customers, "after")
    assert {answer["status"] for answer in more.values()} == {"confirmed"}

    # The group rebalanced: the survivor got a new assignment after the kill, and the group
    # (the survivor and the instance the supervisor started again) consumed everything.
    eventually(lambda: bool(assignments(survivor_log, mark)), "the survivor's new assignment")
    caught_up(bootstrap, "order")
    caught_up(bootstrap, "inventory")
    eventually(
        lambda: stack.state()["processes"]["order-2"]["pid"] != state["order-2"]["pid"],
        "the supervisor restarted order-2",
    )

    # Every order once, in its final state.
    orders = {**placed, **more}
    assert len({answer["id"] for answer in orders.values()}) == 2 * BATCH
    with stack.client() as client:
        for answer in orders.values():
            got = client.get(f"/api/orders/{answer['id']}", headers=admin)
            assert got.status_code == 200 and got.json()["status"] == "confirmed", got.text
        listed = client.get("/api/orders", params={"limit": 100}, headers=admin).json()["items"]
    mine = [o for o in listed if o["items"][0]["product_id"] == product_id]
    assert len(mine) == 2 * BATCH

    # Each event sent once by the relays of all instances, applied once by each group.
    sent = sent_events(bootstrap, SENT_BY_SCALED)
    assert sent and max(sent.values()) == 1, [e for e, n in sent.items() if n > 1]
    for group in GROUPS:
        twice = [e for e, n in applied(sorted(logs.glob(f"{group}*.log"))).items() if n > 1]
        assert not twice, f"{group} applied events twice: {twice}"

    assert_invariants(stack, {product_id: 200})
