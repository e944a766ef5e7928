"""The user service's identity flows, driven over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyotp
import pytest
import sqlalchemy as sa
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.servers import (
    REDIS_TEST_URL,
    drop_database,
    fresh_database,
    run_in_own_loop,
    unreachable,
)
from tests.services.conftest import service_client

PASSWORD = "correct horse battery"
# Nothing listens on port 1: every Redis command fails at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def unique_email(stem: str = "ada") -> str:
    """Login counters and replay guards live in a shared Redis: each test its own account."""
    return f"{stem}-{uuid.uuid4().hex[:10]}@example.com"


async def _redis_answers() -> None:
    client = Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


def require_redis() -> str:
    try:
        run_in_own_loop(_redis_answers)
    except (RedisError, OSError) as error:
        unreachable(f"Redis not reachable at {REDIS_TEST_URL}", error)
    return REDIS_TEST_URL


# (database, cache) pairs the identity tests run on: both caches, both databases, two runs.
BACKENDS = [("sqlite", "memory"), ("postgres", "redis")]
BACKEND_IDS = ["sqlite-memory", "postgres-redis"]


def backend_urls(param: tuple[str, str], tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """(database URL, Redis URL or None): SQLite with the in-process cache, PostgreSQL with Redis."""
    database, cache = param
    redis_url = require_redis() if cache == "redis" else None
    if database == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/service.db", redis_url
        return
    url = fresh_database("cloudretail_test_svc")
    try:
        yield url, redis_url
    finally:
        drop_database(url)


@asynccontextmanager
async def from_address(client: httpx.AsyncClient, host: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another caller of the same running service, seen by it at address `host`."""
    app = client.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as other:
        other.app = app  # type: ignore[attr-defined]
        yield other


def person(email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {
        "email": email,
        "password": PASSWORD,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "gdpr_consent": True,
        **extra,
    }


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: Any):
    return await client.post(
        "/api/users/login", json={"email": email, "password": password, **extra}
    )


async def bearer(client: httpx.AsyncClient, email: str, **extra: Any) -> dict[str, str]:
    response = await login(client, email, **extra)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def outbox(client: httpx.AsyncClient) -> list[str]:
    app = client.app  # type: ignore[attr-defined]
    async with app.state.database.session() as session:
        rows = await session.execute(sa.text("SELECT event_type FROM outbox ORDER BY seq"))
        return [row[0] for row in rows]


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


async def test_register_then_profile(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        made = await client.post("/api/users/register", json=person())
        assert made.status_code == 201, made.text
        body = made.json()
        assert body["role"] == "customer" and "password" not in body
        headers = await bearer(client, "ada@example.com")
        profile = (await client.get("/api/users/profile", headers=headers)).json()
        assert profile["email"] == "ada@example.com"
        assert "password" not in profile and "two_factor_secret" not in profile
        assert await outbox(client) == ["user.created", "user.login"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (person(role="admin"), 422),  # self-registration makes customers only
        (person(gdpr_consent=False), 422),
        (person(password="short"), 422),
        (person(email="not-an-email"), 422),
        ({"email": "x@example.com"}, 422),
    ],
)
async def test_registration_rules(database_url: str, body: dict[str, Any], status: int) -> None:
    async with service_client("user", database_url, None) as client:
        response = await client.post("/api/users/register", json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_duplicate_email_is_409(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        again = await client.post("/api/users/register", json=person("ADA@example.com"))
    assert again.status_code == 409


async def test_login_failures_look_alike_and_are_limited(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        unknown = await login(client, "nobody@example.com")
        wrong = await login(client, "ada@example.com", "wrong password")
        assert unknown.status_code == wrong.status_code == 401
        assert unknown.json()["detail"] == wrong.json()["detail"]
        for _ in range(4):
            await login(client, "ada@example.com", "wrong password")
        locked = await login(client, "ada@example.com")  # even the right password, for now
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0


async def test_tokens_verify_with_the_published_jwks(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        token = (await login(client, "ada@example.com")).json()["access_token"]
        keys = (await client.get("/api/users/.well-known/jwks.json")).json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    (key,) = [k for k in keys if k["kid"] == kid]
    claims = jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience="cloudretail",
        issuer="cloudretail",
    )
    assert claims["role"] == "customer"


async def test_two_factor_setup_enable_and_login(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        headers = await bearer(client, "ada@example.com")
        setup = (await client.post("/api/users/2fa/setup", headers=headers)).json()
        assert setup["otpauth_uri"].startswith("otpauth://totp/")
        totp = pyotp.TOTP(setup["secret"])
        wrong = await client.post("/api/users/2fa/enable", json={"code": "000000"}, headers=headers)
        assert wrong.status_code == 422
        enabled = await client.post(
            "/api/users/2fa/enable", json={"code": totp.now()}, headers=headers
        )
        assert enabled.status_code == 200
        without = await login(client, "ada@example.com")
        assert without.status_code == 401
        assert without.json()["title"] == "Two-factor code required"
        # The enable code is spent; the next time step's code is a fresh one.
        next_code = totp.at(time.time() + totp.interval)
        with_code = await login(client, "ada@example.com", totp_code=next_code)
        assert with_code.status_code == 200


async def test_profile_change_export_and_erasure(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        headers = await bearer(client, "ada@example.com")
        renamed = await client.patch(
            "/api/users/profile", json={"first_name": "Augusta"}, headers=headers
        )
        assert renamed.json()["first_name"] == "Augusta"
        no_current = await client.patch(
            "/api/users/profile", json={"password": "a new password"}, headers=headers
        )
        assert no_current.status_code == 403
        # The export gathers the person's rows from every service holding them
        # (tests/services/test_personal_data.py); with none of them reachable it is refused,
        # never given with parts missing.
        export = await client.get("/api/users/profile/export", headers=headers)
        assert export.status_code == 503, export.text
        assert export.json()["service"] == "order"
        erased = await client.delete("/api/users/profile", headers=headers)
        assert erased.status_code == 200
        gone = await client.get("/api/users/profile", headers=headers)
        assert gone.status_code == 404
        assert (await login(client, "ada@example.com")).status_code == 401
        events = await outbox(client)
    assert events[-2:] == ["user.updated", "user.deleted"]


async def test_changing_the_email_needs_the_current_password(database_url: str) -> None:
    async with service_client("user", database_url, None) as client:
        await client.post("/api/users/register", json=person())
        headers = await bearer(client, "ada@example.com")
        for extra in ({}, {"current_password": "not the password"}):
            refused = await client.patch(
                "/api/users/profile", json={"email": "eve@example.com", **extra}, headers=headers
            )
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"] == "application/problem+json"
        profile = (await client.get("/api/users/profile", headers=headers)).json()
        assert profile["email"] == "ada@example.com"
        # Sending the current email again is no change and needs nothing.
        same = await client.patch(
            "/api/users/profile", json={"email": "ADA@example.com"}, headers=headers
        )
        assert same.status_code == 200, same.text
        moved = await client.patch(
            "/api/users/profile",
            json={"email": "ada.l@example.com", "current_password": PASSWORD},
            headers=headers,
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["email"] == "ada.l@example.com"
        assert (await login(client, "ada.l@example.com")).status_code == 200


async def test_admin_bootstrap_and_admin_created_users(database_url: str, monkeypatch) -> None:
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_EMAIL", "boss@example.com")
    monkeypatch.setenv("CLOUDRETAIL_ADMIN_PASSWORD", "admin password 1")
    async with service_client("user", database_url, None) as client:
        admin = await bearer(client, "boss@example.com", password="admin password 1")
        made = await client.post(
            "/api/users", json=person("vendor@example.com", role="vendor"), headers=admin
        )
        assert made.status_code == 201 and made.json()["role"] == "vendor"
        vendor = await bearer(client, "vendor@example.com")
        refused = await client.post(
            "/api/users", json=person("x@example.com", role="admin"), headers=vendor
        )
        assert refused.status_code == 403
    # A second start finds the admin and does not make another.
    async with service_client("user", database_url, None) as client:
        admin = await bearer(client, "boss@example.com", password="admin password 1")
        listed = (await client.get("/api/users", headers=admin)).json()
    assert [u["email"] for u in listed["items"]].count("boss@example.com") == 1
