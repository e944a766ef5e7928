"""Fixtures for the event tests: one embedded broker for the session, service databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.broker import EmbeddedBroker, EmbeddedBrokerError
from cloudretail.runtime.events.registry import EventRegistry

from tests.events.support import BusHarness, Service, ServiceFactory, make_registry
from tests.servers import (
    POSTGRES_ERRORS,
    drop_database,
    fresh_database,
    run_in_own_loop,
    unreachable,
)


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A tansu broker on a free port for the whole session (tests use their own topics)."""
    broker = EmbeddedBroker(port=0)
    try:
        run_in_own_loop(broker.start)
    except EmbeddedBrokerError as error:
        unreachable("embedded tansu broker did not start", error)
    yield broker
    run_in_own_loop(broker.stop)


@pytest.fixture
def registry() -> EventRegistry:
    return make_registry(f"t{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    """Probe once; every PostgreSQL test then skips (or fails in CI) with the reason."""
    try:
        drop_database(fresh_database("cloudretail_events_probe"))
    except POSTGRES_ERRORS as error:
        unreachable("PostgreSQL not reachable", error)
    return True


DatabaseFactory = Callable[[str], Database]


@pytest.fixture
def sqlite_databases(tmp_path: Path) -> DatabaseFactory:
    def make(name: str) -> Database:
        return Database(f"sqlite:///{tmp_path}/{name}.db")

    return make


@pytest.fixture(scope="session")
def postgres_pool(postgres_available: bool) -> Iterator[dict[str, str]]:
    """Scratch databases by role name, made once per session: creating and dropping a
    database per test costs more than the tests themselves."""
    urls: dict[str, str] = {}
    yield urls
    for url in urls.values():
        drop_database(url)


def _empty(url: str) -> None:
    async def drop_tables() -> None:
        connection = await asyncpg.connect(url, timeout=3)
        try:
            await connection.execute(
                "DROP TABLE IF EXISTS outbox, processed_events, applied CASCADE"
            )
        finally:
            await connection.close()

    run_in_own_loop(drop_tables)


@pytest.fixture
def postgres_databases(postgres_pool: dict[str, str]) -> DatabaseFactory:
    def make(name: str) -> Database:
        url = postgres_pool.get(name)
        if url is None:
            url = postgres_pool[name] = fresh_database(f"cloudretail_events_{name}")
        else:
            _empty(url)  # the previous test's tables; the service recreates them
        return Database(url, pool_size=3, max_overflow=2)

    return make


@pytest.fixture
async def services(
    harness: BusHarness, registry: EventRegistry, databases: DatabaseFactory
) -> AsyncIterator[ServiceFactory]:
    """Factory of services on the bound transport and database kind; all closed afterwards."""
    made: list[Service] = []
    await harness.prepare_topics(registry)

    async def make(name: str) -> Service:
        service = Service(f"{name}-{uuid.uuid4().hex[:6]}", databases(name), registry, harness)
        await service.create_tables()
        made.append(service)
        return service

    yield make
    for service in made:
        await service.close()
    await harness.close()
