"""The catalog service as generated, served in-process on a SQLite file: its health routes,
and an item created and read back through its CRUD routes. Tokens are signed by a key the
test makes, standing in for the identity provider of the spec's `auth.jwks`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

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

from generated.services.catalog import app as catalog

ROOT = Path(__file__).resolve().parents[1]
ADMIN_ID = "00000000-0000-4000-8000-000000000001"
CUSTOMER_ID = "00000000-0000-4000-8000-000000000002"


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    # The spec's platform name is both the tokens' issuer and their audience.
    name = catalog.TOKEN_ISSUER
    return TokenIssuer(generate_private_key_pem(), issuer=name, audience=name)


@pytest.fixture
async def client(tmp_path: Path, issuer: TokenIssuer) -> AsyncIterator[httpx.AsyncClient]:
    """The service as its process runs it: migrated, then started (its lifespan)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'catalog.db'}"
    ini = ROOT / "generated" / "services" / "catalog" / "alembic.ini"
    await asyncio.to_thread(upgrade, ini, url)
    app = catalog.create_app(
        ServiceSettings(service_name=catalog.SERVICE, port=catalog.PORT, database_url=url)
    )
    app.state.token_verifier = TokenVerifier(
        static_jwks(issuer.jwks()), issuer=issuer.issuer, audience=issuer.audience
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://catalog") as client:
            yield client


def bearer(issuer: TokenIssuer, subject: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.issue(subject, role)}"}


async def test_health(client: httpx.AsyncClient) -> None:
    live = await client.get("/health/live")
    assert live.status_code == 200, live.text
    ready = await client.get("/health/ready")
    assert ready.status_code == 200, ready.text


async def test_an_item_is_created_and_read_back(
    client: httpx.AsyncClient, issuer: TokenIssuer
) -> None:
    item = {"name": "Desk lamp", "price": "24.50", "note": "brass"}
    # POST /api/items is for admins (spec: `auth: admin`).
    assert (await client.post("/api/items", json=item)).status_code == 401
    customer = bearer(issuer, CUSTOMER_ID, "customer")
    assert (await client.post("/api/items", json=item, headers=customer)).status_code == 403
    made = await client.post("/api/items", json=item, headers=bearer(issuer, ADMIN_ID, "admin"))
    assert made.status_code == 201, made.text
    created = made.json()
    assert (created["name"], created["price"], created["note"]) == ("Desk lamp", "24.50", "brass")

    read = await client.get(f"/api/items/{created['id']}")  # public
    assert read.status_code == 200, read.text
    assert read.json() == created
    listed = await client.get("/api/items")
    assert listed.status_code == 200, listed.text
    assert [each["id"] for each in listed.json()["items"]] == [created["id"]]


async def test_a_bad_item_is_refused(client: httpx.AsyncClient, issuer: TokenIssuer) -> None:
    admin = bearer(issuer, ADMIN_ID, "admin")
    refused = await client.post("/api/items", json={"name": "Free", "price": "-1"}, headers=admin)
    assert refused.status_code == 422, refused.text  # the spec's check: price >= 0
