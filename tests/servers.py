"""Real PostgreSQL and Redis for tests: reach them, make scratch databases, or skip saying why.

In CI (CLOUDRETAIL_REQUIRE_SERVICES=1) an unreachable server fails the test instead.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import asyncpg
import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "CLOUDRETAIL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_TEST_URL = os.environ.get("CLOUDRETAIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("CLOUDRETAIL_REQUIRE_SERVICES", "") not in ("", "0")
POSTGRES_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def admin_dsn() -> str:
    return POSTGRES_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://")


def database_dsn(name: str) -> str:
    base, _, _ = admin_dsn().rpartition("/")
    return f"{base}/{name}"


def run_in_own_loop(probe: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion even when called from inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, probe()).result()


def unreachable(what: str, error: BaseException) -> NoReturn:
    message = f"{what}: {error!r}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (CLOUDRETAIL_REQUIRE_SERVICES is set)")
    pytest.skip(message)


async def _admin(statement: str) -> None:
    connection = await asyncpg.connect(admin_dsn(), timeout=3)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def ensure_database(name: str) -> str:
    """Create database `name` if missing; return its URL. Skips when Postgres is down."""

    async def create() -> None:
        connection = await asyncpg.connect(admin_dsn(), timeout=3)
        try:
            exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    try:
        run_in_own_loop(create)
    except POSTGRES_ERRORS as error:
        unreachable(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}", error)
    return database_dsn(name)


def fresh_database(stem: str) -> str:
    """A new, empty database with a unique name (drop it with `drop_database`)."""
    return ensure_database(f"{stem}_{uuid.uuid4().hex[:10]}")


def drop_database(url: str) -> None:
    name = url.rpartition("/")[2]
    run_in_own_loop(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def eventually(check: Callable[[], Any], timeout: float = 20.0, pause: float = 0.3) -> Any:
    """The first truthy result of `check`, polled every `pause` seconds until `timeout`
    (then its last result, for the caller's assertion to show)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(pause)
