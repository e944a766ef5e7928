"""Fixtures for runtime tests: real SQLite, PostgreSQL and Redis, never mocks of them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudretail.runtime.config import ServiceSettings
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.servers import REDIS_TEST_URL, ensure_database, run_in_own_loop, unreachable

POSTGRES_TEST_DATABASE = "cloudretail_test_runtime"
# Nothing listens on port 1, so connections are refused at once instead of timing out.
DEAD_POSTGRES_URL = "postgresql://postgres@127.0.0.1:1/cloudretail_nowhere"
TEST_TOKEN = "test-service-token"

# Variables the settings read; cleared so a developer's shell cannot change test outcomes.
_SETTINGS_VARIABLES = (
    "PORT",
    "HOST",
    "ENVIRONMENT",
    "LOG_LEVEL",
    "DATABASE_URL",
    "DATABASE_POOL_SIZE",
    "DATABASE_MAX_OVERFLOW",
    "DATABASE_ECHO",
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_POOL_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_POOLER",
    "MAX_BODY_BYTES",
    "DOCS_ENABLED",
    "REDIS_URL",
    "REDIS_CA_FILE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWKS_URL",
    "SERVICE_TOKEN",
    "ENCRYPTION_KEYS",
    "SERVICE_NAME",
    "SERVICE_URLS",
    "HEALTH_CHECK_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper() in _SETTINGS_VARIABLES or name.upper().endswith("_URL"):
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of a scratch PostgreSQL database; skips (saying why) when no server answers."""
    return ensure_database(POSTGRES_TEST_DATABASE)


async def _redis_answers() -> None:
    client = Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a Redis database for tests; skips (saying why) when no server answers."""
    try:
        run_in_own_loop(_redis_answers)
    except (RedisError, OSError) as error:
        unreachable(f"Redis not reachable at {REDIS_TEST_URL}", error)
    return REDIS_TEST_URL


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/data/service.db"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using it runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/data/service.db"
    return str(request.getfixturevalue("postgres_url"))


def unique_name(stem: str) -> str:
    """Table names unique per test, so parallel runs on one server never collide."""
    return f"{stem}_{uuid.uuid4().hex[:10]}"


def make_settings(database_url: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": "testsvc",
        "port": 3999,
        "database_url": database_url,
        "service_token": TEST_TOKEN,
        "health_check_timeout": 2.0,
    }
    values.update(overrides)
    return ServiceSettings(**values)


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan entered, as a server would run it, and a client for it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
