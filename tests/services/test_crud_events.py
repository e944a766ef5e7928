"""Each CRUD change of the generated product service is an event on its topic, in the seed's
envelope, read back by a plain Kafka consumer that knows nothing of the runtime."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.broker import EmbeddedBroker, EmbeddedBrokerError
from cloudretail.runtime.events.topics import TopicSpec, apply_topics

from tests.servers import run_in_own_loop, unreachable
from tests.services.conftest import service_client


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(port=0)
    try:
        run_in_own_loop(embedded.start)
    except EmbeddedBrokerError as error:
        unreachable("the embedded broker did not start", error)
    topics = [TopicSpec("product-events", 3, 1, {"retention.ms": "604800000"})]
    run_in_own_loop(lambda: apply_topics(embedded.bootstrap_servers, topics))
    yield embedded
    run_in_own_loop(embedded.stop)


async def _read(bootstrap: str, wanted: int, timeout: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        "product-events",
        bootstrap_servers=bootstrap,
        group_id=f"checker-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < wanted and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def test_crud_changes_are_events_on_the_topic(
    broker: EmbeddedBroker, tmp_path: Path, issuer: TokenIssuer, admin
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/product.db"
    settings = {"kafka_bootstrap_servers": broker.bootstrap_servers, "kafka_idempotent": False}
    async with service_client("product", url, issuer, **settings) as client:
        headers = {**admin, "X-Correlation-ID": "crud-corr-1"}
        body = {"name": "Lamp", "price": "19.99", "sku": "LAMP-1", "category": "home"}
        made = (await client.post("/api/products", json=body, headers=headers)).json()
        await client.patch(f"/api/products/{made['id']}", json={"price": "24.50"}, headers=headers)
        await client.delete(f"/api/products/{made['id']}", headers=headers)
        records = await _read(broker.bootstrap_servers, 4)
    events = [json.loads(record.value) for record in records]
    assert sorted(e["type"] for e in events) == sorted(
        ["product.created", "product.updated", "product.price_changed", "product.deleted"]
    )
    for record, event in zip(records, events, strict=True):
        # The seed's envelope, camelCase on the wire; the key keeps one product in order.
        assert set(event) == {"id", "type", "timestamp", "version", "data", "metadata"}
        assert set(event["metadata"]) == {
            "correlationId",
            "causationId",
            "service",
            "userId",
            "traceparent",
        }
        assert event["metadata"]["correlationId"] == "crud-corr-1"
        assert event["metadata"]["service"] == "product"
        assert event["metadata"]["userId"] == "00000000-0000-4000-8000-000000000001"
        assert event["timestamp"].endswith("Z")
        assert record.key == made["id"].encode()
        assert event["data"]["product_id"] == made["id"]
    by_type = {e["type"]: e["data"] for e in events}
    assert by_type["product.created"]["price"] == "19.99"
    assert by_type["product.price_changed"] == {
        "product_id": made["id"],
        "old_price": "19.99",
        "new_price": "24.50",
    }
    assert by_type["product.updated"]["fields"] == {"price": "24.50"}
    # One aggregate, one partition: its events arrive in the order they happened.
    assert len({record.partition for record in records}) == 1
    ordered = [e["type"] for e in events]
    assert ordered.index("product.created") < ordered.index("product.deleted")
