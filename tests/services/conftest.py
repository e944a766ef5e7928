"""Drive generated services over HTTP, against SQLite and a real PostgreSQL, same test bodies."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudretail.runtime.auth import (
    TokenIssuer,
    TokenVerifier,
    generate_private_key_pem,
    static_jwks,
)
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.migrate import upgrade

from tests.servers import drop_database, fresh_database

ROOT = Path(__file__).resolve().parents[2]
ADMIN_ID = "00000000-0000-4000-8000-000000000001"
CUSTOMER_ID = "00000000-0000-4000-8000-000000000002"
SERVICE_TOKEN = "test-service-token"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL database dropped after."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/service.db"
        return
    url = fresh_database("cloudretail_test_svc")
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def issuer() -> TokenIssuer:
    return TokenIssuer(generate_private_key_pem(), issuer="cloudretail", audience="cloudretail")


@pytest.fixture
def admin(issuer: TokenIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(ADMIN_ID, 'admin')}"}


@pytest.fixture
def customer(issuer: TokenIssuer) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(CUSTOMER_ID, 'customer')}"}


def migrate(service: str, database_url: str) -> None:
    """`alembic upgrade head` with the service's generated environment."""
    upgrade(ROOT / "generated" / "services" / service / "alembic.ini", database_url)


@asynccontextmanager
async def service_client(
    service: str, database_url: str, issuer: TokenIssuer | None, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """The generated service, migrated and started as a server would start it."""
    await asyncio.to_thread(migrate, service, database_url)
    module = importlib.import_module(f"generated.services.{service}.app")
    values: dict[str, Any] = {
        "service_name": service,
        "port": module.PORT,
        "database_url": database_url,
        "service_token": SERVICE_TOKEN,
        **settings,
    }
    app = module.create_app(ServiceSettings(**values))
    if issuer is not None:
        # Tokens from the test's issuer; without one the service keeps its own verifier
        # (the user service trusts the tokens it signs).
        app.state.token_verifier = TokenVerifier(
            static_jwks(issuer.jwks()), issuer=issuer.issuer, audience=issuer.audience
        )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client
