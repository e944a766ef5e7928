"""A database that hangs, or does not exist: a quick 503 the caller may retry, never a 500."""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from cloudretail.runtime.config import ServiceSettings

from tests.servers import database_dsn, ensure_database
from tests.services.conftest import SERVICE_TOKEN


class HungDatabase:
    """A TCP listener standing in for PostgreSQL: it accepts connections and never answers."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> HungDatabase:
        async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections.append(writer)

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *_exc: object) -> None:
        for writer in self.connections:
            writer.close()
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"postgresql://postgres:hunter2@127.0.0.1:{self.port}/cloudretail_products"


@asynccontextmanager
async def unmigrated_service(
    service: str, database_url: str, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The generated service started against a database nobody can migrate."""
    module = importlib.import_module(f"generated.services.{service}.app")
    app = module.create_app(
        ServiceSettings(
            service_name=service,
            port=module.PORT,
            database_url=database_url,
            service_token=SERVICE_TOKEN,
            **settings,
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def assert_retryable_503(response: httpx.Response, port: int | None = None) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["status"] == 503
    for leak in ("127.0.0.1", "hunter2", "postgres", "Timeout", "Traceback", str(port)):
        assert leak not in response.text, leak


def test_database_timeouts_are_bounded_by_default() -> None:
    settings = ServiceSettings(service_name="s", port=3999, database_url="sqlite://")
    assert 0 < settings.database_connect_timeout <= 5
    assert 0 < settings.database_pool_timeout <= 10
    assert 0 < settings.database_statement_timeout <= 30


async def test_a_hung_database_gives_a_quick_503_with_the_defaults() -> None:
    async with HungDatabase() as database, unmigrated_service("product", database.url) as client:
        started = time.perf_counter()
        response = await client.get("/api/products")
        elapsed = time.perf_counter() - started
    assert_retryable_503(response, database.port)
    assert elapsed < ServiceSettings.model_fields["database_connect_timeout"].default + 2


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/products", None),
        ("GET", f"/api/products/{uuid.uuid4()}", None),
        ("POST", "/api/users/login", {"email": "a@b.c", "password": "x"}),
    ],
)
async def test_a_hung_database_gives_503_on_every_kind_of_route(
    method: str, path: str, body: dict[str, str] | None
) -> None:
    service = path.split("/")[2].removesuffix("s")
    async with (
        HungDatabase() as database,
        unmigrated_service(service, database.url, database_connect_timeout=0.5) as client,
    ):
        started = time.perf_counter()
        response = await client.request(method, path, json=body)
        elapsed = time.perf_counter() - started
        ready = await client.get("/health/ready")
    assert_retryable_503(response, database.port)
    assert elapsed < 3
    assert ready.status_code == 503
    assert ready.json()["details"]["database"] is False


async def test_a_missing_database_gives_503() -> None:
    ensure_database("postgres")  # skips (or fails in CI) when PostgreSQL is not there
    missing = database_dsn(f"cloudretail_missing_{uuid.uuid4().hex[:10]}")
    async with unmigrated_service("product", missing) as client:
        started = time.perf_counter()
        listed = await client.get("/api/products")
        one = await client.get(f"/api/products/{uuid.uuid4()}")
        elapsed = time.perf_counter() - started
        ready = await client.get("/health/ready")
    assert_retryable_503(listed)
    assert_retryable_503(one)
    assert "cloudretail_missing" not in listed.text
    assert elapsed < 3
    assert ready.status_code == 503
