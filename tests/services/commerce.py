"""The product, inventory, payment and order services as real uvicorn servers on free
127.0.0.1 ports, calling each other over HTTP with the service token, each on its own
database (SQLite files, or fresh PostgreSQL databases dropped afterwards).

No broker: events stay in each service's outbox, where tests can read them.
"""

from __future__ import annotations

import asyncio
import importlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer, TokenVerifier, static_jwks
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.consumer import Handler
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.service_events import ServiceEvents
from fastapi import FastAPI

from generated.services.order.models import Order
from generated.services.payment.models import Payment
from tests.gateway.conftest import Server, free_port
from tests.servers import drop_database, fresh_database
from tests.services.conftest import ADMIN_ID, CUSTOMER_ID, SERVICE_TOKEN, migrate

SERVICES = ("product", "inventory", "payment", "order")
# Who calls whom (the spec's `calls`; the user service's export calls every service holding
# personal data, when a test runs it too).
CALLS = {
    "order": ("inventory", "payment", "product"),
    "payment": ("order",),
    "user": ("order", "payment", "notification", "analytics"),
}
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


def order_body(product_id: str, quantity: Any = 1, token: str = "tok_visa") -> dict[str, Any]:
    return {
        "items": [{"product_id": product_id, "quantity": quantity}],
        "shipping_address": ADDRESS,
        "payment_method": {"type": "card", "token": token},
    }


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """The first truthy result of `check`, polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class Shop:
    """The running services, and what tests need to drive and inspect them."""

    def __init__(self, backend: str, issuer: TokenIssuer, servers: dict[str, Server]) -> None:
        self.backend = backend
        self.issuer = issuer
        self.servers = servers

    def app(self, service: str) -> FastAPI:
        app: FastAPI = self.servers[service].app
        return app

    def database(self, service: str) -> Database:
        database: Database = self.app(service).state.database
        return database

    def client(self, service: str, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.servers[service].url, timeout=timeout)

    def bearer(self, subject: str = CUSTOMER_ID, role: str = "customer") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issuer.issue(subject, role)}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.bearer(ADMIN_ID, "admin")

    async def new_product(self, stock: int, price: str = "10.00") -> str:
        async with self.client("product") as client:
            made = await client.post(
                "/api/products",
                json={"name": "Test item", "price": price, "sku": f"T-{uuid.uuid4().hex[:12]}"},
                headers=self.admin,
            )
        assert made.status_code == 201, made.text
        product_id: str = made.json()["id"]
        async with self.client("inventory") as client:
            stocked = await client.put(
                f"/api/inventory/{product_id}", json={"quantity": stock}, headers=self.admin
            )
        assert stocked.status_code == 200, stocked.text
        return product_id

    async def stock(self, product_id: str) -> tuple[int, int]:
        async with self.client("inventory") as client:
            level = (await client.get(f"/api/inventory/{product_id}")).json()
        return level["quantity"], level["reserved"]

    async def rows(self, service: str, table: sa.Table, *where: Any) -> list[dict[str, Any]]:
        """Rows of a service's table, read straight from its database."""
        async with self.database(service).engine.connect() as connection:
            result = await connection.execute(sa.select(table).where(*where))
            return [dict(row) for row in result.mappings()]

    async def payment(self, order_id: str) -> dict[str, Any] | None:
        table = Payment.__table__
        rows = await self.rows("payment", table, table.c.order_id == uuid.UUID(order_id))
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    async def order(self, order_id: str) -> dict[str, Any]:
        table = Order.__table__
        [row] = await self.rows("order", table, table.c.id == uuid.UUID(order_id))
        return row

    async def outbox_types(self, service: str) -> list[str]:
        """Event types in the service's outbox, oldest first."""
        rows = await self.rows(service, outbox)
        return [row["event_type"] for row in sorted(rows, key=lambda row: row["seq"])]


def capture_event_handlers(monkeypatch: pytest.MonkeyPatch, service: str) -> dict[str, Handler]:
    """The event handlers the service's generated app wires into its consumer, filled in
    when the app is created (call this before)."""
    captured: dict[str, Handler] = {}
    module = importlib.import_module(f"generated.services.{service}.app")

    class Capturing(ServiceEvents):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            captured.update(self.handlers)

    monkeypatch.setattr(module, "ServiceEvents", Capturing)
    return captured


def service_settings(service: str, port: int, database_url: str, **extra: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": service,
        "port": port,
        "database_url": database_url,
        "service_token": SERVICE_TOKEN,
        **extra,
    }
    return ServiceSettings(**values)


@asynccontextmanager
async def running_shop(
    backend: str,
    tmp_path: Path,
    issuer: TokenIssuer,
    services: tuple[str, ...] = SERVICES,
    **settings: Any,
) -> AsyncIterator[Shop]:
    """Migrate, start and (at the end) stop the four services (or `services`) on `backend`."""
    ports = {service: free_port() for service in services}
    urls: dict[str, str] = {}
    made: list[str] = []
    try:
        for service in services:
            if backend == "sqlite":
                urls[service] = f"sqlite+aiosqlite:///{tmp_path}/{service}.db"
            else:
                urls[service] = fresh_database(f"cloudretail_test_{service}")
                made.append(urls[service])
        for service, url in urls.items():
            # One at a time: Alembic's environment is module state, not thread-safe.
            await asyncio.to_thread(migrate, service, url)
        servers: dict[str, Server] = {}
        for service in services:
            module = importlib.import_module(f"generated.services.{service}.app")
            peers = {peer: f"http://127.0.0.1:{ports[peer]}" for peer in CALLS.get(service, ())}
            app = module.create_app(
                service_settings(
                    service, ports[service], urls[service], service_urls=peers, **settings
                )
            )
            app.state.token_verifier = TokenVerifier(
                static_jwks(issuer.jwks()), issuer=issuer.issuer, audience=issuer.audience
            )
            servers[service] = Server(app, ports[service])
        started: list[Server] = []
        try:
            for server in servers.values():
                started.append(await server.start())
            yield Shop(backend, issuer, servers)
        finally:
            await asyncio.gather(*(server.stop() for server in started))
    finally:
        for url in made:
            drop_database(url)
