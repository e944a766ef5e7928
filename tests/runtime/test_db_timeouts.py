"""A database that stops answering costs bounded seconds and a 503, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time

import httpx
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.db import SessionDep
from fastapi import APIRouter
from sqlalchemy import text

from tests.runtime.conftest import make_settings, running, unique_name

router = APIRouter()


@router.get("/sleep/{seconds}")
async def sleep(seconds: float, session: SessionDep) -> float:
    await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return seconds


def assert_503(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
    for leak in ("pg_sleep", "Timeout", "canceling", "127.0.0.1"):
        assert leak not in response.text


async def test_a_statement_past_its_timeout_is_a_503(postgres_url: str) -> None:
    settings = make_settings(postgres_url, database_statement_timeout=0.5)
    app = create_service_app(settings, routers=[router])
    async with running(app) as client:
        started = time.perf_counter()
        slow = await client.get("/sleep/5")
        elapsed = time.perf_counter() - started
        quick = await client.get("/sleep/0")
    assert_503(slow)
    assert elapsed < 3
    # The connection went back to the pool usable (or was replaced): the next one works.
    assert quick.status_code == 200, quick.text


async def test_a_statement_waiting_on_a_lock_is_a_503(postgres_url: str) -> None:
    table = unique_name("locked")
    locker = APIRouter()

    @locker.post("/touch")
    async def touch(session: SessionDep) -> str:
        await session.execute(text(f"UPDATE {table} SET n = n + 1"))
        return "ok"

    settings = make_settings(postgres_url, database_statement_timeout=0.5)
    app = create_service_app(settings, routers=[locker])
    async with running(app) as client:
        database = app.state.database
        async with database.engine.begin() as connection:
            await connection.execute(text(f"CREATE TABLE {table} (n integer)"))
            await connection.execute(text(f"INSERT INTO {table} VALUES (0)"))
        try:
            async with database.engine.connect() as holder:
                transaction = await holder.begin()
                await holder.execute(text(f"UPDATE {table} SET n = 100"))  # holds the row lock
                started = time.perf_counter()
                blocked = await client.post("/touch")
                elapsed = time.perf_counter() - started
                await transaction.rollback()
        finally:
            async with database.engine.begin() as connection:
                await connection.execute(text(f"DROP TABLE {table}"))
    assert_503(blocked)
    assert elapsed < 3


async def test_waiting_for_a_pooled_connection_is_bounded(postgres_url: str) -> None:
    settings = make_settings(
        postgres_url,
        database_pool_size=1,
        database_max_overflow=0,
        database_pool_timeout=0.3,
        database_statement_timeout=10,
    )
    app = create_service_app(settings, routers=[router])
    async with running(app) as client:
        holder = asyncio.create_task(client.get("/sleep/1.5"))
        await asyncio.sleep(0.3)
        started = time.perf_counter()
        waiting = await client.get("/sleep/0")
        elapsed = time.perf_counter() - started
        held = await holder
    assert held.status_code == 200
    assert_503(waiting)
    assert elapsed < 1
