"""The event bus service: every topic consumed into the audit log and the event store,
served with filters, by id and as a live stream; trusted publishers can post events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from cloudretail.runtime.auth import TokenIssuer, TokenVerifier, static_jwks
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.events.broker import EmbeddedBroker, EmbeddedBrokerError, free_port
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.kafka import KafkaProducer
from cloudretail.runtime.events.topics import TopicSpec, apply_topics
from cloudretail.runtime.migrate import upgrade
from redis import Redis
from redis.exceptions import RedisError

import generated.eventbus.app as bus_app
from tests.servers import REDIS_TEST_URL, run_in_own_loop, unreachable
from tests.services.conftest import ROOT, SERVICE_TOKEN

ORDER_ID = "6b1f8f0e-5d8a-4c11-9a1e-2f3c4d5e6f70"


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(port=0)
    try:
        run_in_own_loop(embedded.start)
    except EmbeddedBrokerError as error:
        unreachable("the embedded broker did not start", error)
    topics = [TopicSpec(name, 3, 1, {}) for name in bus_app.TOPICS]
    run_in_own_loop(lambda: apply_topics(embedded.bootstrap_servers, topics))
    yield embedded
    run_in_own_loop(embedded.stop)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    try:
        Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).flushdb()
    except RedisError as error:
        unreachable(f"Redis not reachable at {REDIS_TEST_URL}", error)
    return REDIS_TEST_URL


def _event(kind: str, correlation: str, service: str, **data: Any) -> Event:
    return Event(
        type=kind,
        data=data,
        metadata=EventMetadata(correlation_id=correlation, service=service),
    )


@asynccontextmanager
async def running_bus(
    broker: EmbeddedBroker, tmp_path: Path, redis_url: str | None, issuer: TokenIssuer
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    url = f"sqlite+aiosqlite:///{tmp_path}/events.db"
    await asyncio.to_thread(upgrade, ROOT / "generated" / "eventbus" / "alembic.ini", url)
    settings = ServiceSettings(
        service_name=f"eventbus-{tmp_path.name}",  # its own consumer group per test
        port=4000,
        database_url=url,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        kafka_idempotent=False,
        redis_url=redis_url,
        service_token=SERVICE_TOKEN,
    )
    app = bus_app.create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.token_verifier = TokenVerifier(
            static_jwks(issuer.jwks()), issuer=issuer.issuer, audience=issuer.audience
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bus") as client:
            yield client, app


async def _wait(check: Any, timeout: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.2)


async def test_every_event_is_stored_audited_and_served(
    broker: EmbeddedBroker, tmp_path: Path, store: str | None, issuer: TokenIssuer, admin
) -> None:
    # The broker is shared by the module's tests: this test's events carry its own ids.
    a, b = f"corr-{uuid.uuid4().hex[:8]}", f"corr-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(broker.bootstrap_servers, idempotent=False)
    created = _event("order.created", a, "order", order_id=ORDER_ID)
    reserved = _event("inventory.reserved", a, "inventory", order_id=ORDER_ID, items=[])
    other = _event("user.login", b, "user", user_id=ORDER_ID, two_factor=False)
    async with running_bus(broker, tmp_path, store, issuer) as (client, app):
        for event, topic in (
            (created, "order-events"),
            (reserved, "inventory-events"),
            (other, "user-events"),
        ):
            await producer.send(topic, ORDER_ID.encode(), event.to_bytes(), ())
        # Delivered twice: stored and audited once.
        await producer.send("order-events", ORDER_ID.encode(), created.to_bytes(), ())
        await producer.stop()

        async def query(**params: Any) -> dict[str, Any]:
            response = await client.get("/api/events", params=params, headers=admin)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        async def both_arrived() -> bool:
            first = await query(correlationId=a)
            second = await query(correlationId=b)
            return first["total"] == 2 and second["total"] == 1

        assert await _wait(both_arrived)
        by_correlation = await query(correlationId=a)
        assert {e["type"] for e in by_correlation["items"]} == {
            "order.created",
            "inventory.reserved",
        }
        logins = await query(type="user.login")
        assert b in [e["metadata"]["correlationId"] for e in logins["items"]]
        inventory = await query(service="inventory")
        assert all(e["topic"] == "inventory-events" for e in inventory["items"])
        assert str(reserved.id) in [e["id"] for e in inventory["items"]]
        paged = await query(correlationId=a, limit=1)
        assert (len(paged["items"]), paged["total"]) == (1, 2)
        future = await query(since="2999-01-01T00:00:00Z")
        assert future["total"] == 0
        one = await client.get(f"/api/events/{created.id}", headers=admin)
        assert one.status_code == 200 and one.json()["type"] == "order.created"
        assert (await client.get("/api/events/nope", headers=admin)).status_code == 404
        async with app.state.database.session() as session:
            audited = await session.execute(
                sa.text("SELECT event_type FROM audit_log WHERE correlation_id IN (:a, :b)"),
                {"a": a, "b": b},
            )
            assert sorted(row[0] for row in audited) == [
                "inventory.reserved",
                "order.created",
                "user.login",
            ]


async def test_reading_events_is_for_admins(
    broker: EmbeddedBroker, tmp_path: Path, issuer: TokenIssuer, customer
) -> None:
    async with running_bus(broker, tmp_path, None, issuer) as (client, _):
        assert (await client.get("/api/events")).status_code == 401
        assert (await client.get("/api/events", headers=customer)).status_code == 403


async def test_trusted_publishers_post_checked_events(
    broker: EmbeddedBroker, tmp_path: Path, issuer: TokenIssuer, admin
) -> None:
    good = _event("order.shipped", "corr-P", "order", order_id=ORDER_ID, user_id=ORDER_ID)
    bad = _event("order.shipped", "corr-P", "order", order_id="not-a-uuid")
    async with running_bus(broker, tmp_path, None, issuer) as (client, _):
        token = {"X-Service-Token": SERVICE_TOKEN}
        refused = await client.post("/api/events", json=bad.to_wire(), headers=token)
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        anonymous = await client.post("/api/events", json=good.to_wire())
        assert anonymous.status_code == 401
        accepted = await client.post("/api/events", json=good.to_wire(), headers=token)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["topic"] == "order-events"

        async def arrived() -> bool:
            response = await client.get(f"/api/events/{good.id}", headers=admin)
            return response.status_code == 200

        assert await _wait(arrived)


async def test_live_stream_sends_events_as_they_arrive(
    broker: EmbeddedBroker, tmp_path: Path, issuer: TokenIssuer, admin
) -> None:
    event = _event("order.delivered", "corr-S", "order", order_id=ORDER_ID, user_id=ORDER_ID)
    async with running_bus(broker, tmp_path, None, issuer) as (_, app):
        # A real server: the in-process transport buffers whole responses, streams included.
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, port=port, log_config=None, lifespan="off"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        received: list[dict[str, Any]] = []

        async def listen() -> None:
            async with (
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
                client.stream(
                    "GET",
                    "/api/events/stream",
                    params={"type": "order.delivered"},
                    headers=admin,
                    timeout=30,
                ) as response,
            ):
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        received.append(json.loads(line.removeprefix("data: ")))
                        return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.5)
        producer = KafkaProducer(broker.bootstrap_servers, idempotent=False)
        await producer.send("order-events", ORDER_ID.encode(), event.to_bytes(), ())
        await producer.stop()
        try:
            await asyncio.wait_for(listener, timeout=20)
        finally:
            server.should_exit = True
            await serving
    assert received[0]["id"] == str(event.id)
    assert received[0]["metadata"]["correlationId"] == "corr-S"
