from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.cache import MemoryCache
from cloudretail.runtime.config import DEFAULT_SECRET
from cloudretail.runtime.db import Database
from cloudretail.runtime.deps import CacheDep, DatabaseDep, SessionDep, SettingsDep
from cloudretail.runtime.errors import Problem
from fastapi import APIRouter, FastAPI
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select

from tests.runtime.conftest import make_settings, running

metadata = MetaData()
notes = Table(
    "notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(100), nullable=False),
)

router = APIRouter(prefix="/api/notes")


@router.post("", status_code=201)
async def add_note(body: str, session: SessionDep, cache: CacheDep) -> dict[str, str]:
    await session.execute(insert(notes).values(body=body))
    await cache.delete_prefix("notes:")
    if body == "reject":
        # Raised after the insert: the request's session must roll it back.
        raise Problem(422, "Rejected after writing")
    return {"body": body}


@router.get("/count")
async def count_notes(session: SessionDep, cache: CacheDep) -> dict[str, int | bool]:
    cached = await cache.get("notes:count")
    if cached is not None:
        return {"count": int(cached), "cached": True}
    total = (await session.execute(select(func.count()).select_from(notes))).scalar_one()
    await cache.set("notes:count", str(total), ttl=60)
    return {"count": total, "cached": False}


@router.get("/about")
async def about(settings: SettingsDep, database: DatabaseDep) -> dict[str, str]:
    return {"service": settings.service_name, "dialect": database.dialect_name}


class TrackingDatabase(Database):
    disposed = False

    async def dispose(self) -> None:
        await super().dispose()
        self.disposed = True


class TrackingCache(MemoryCache):
    closed = False

    async def close(self) -> None:
        await super().close()
        self.closed = True


async def test_a_service_round_trip_through_every_dependency(database_url: str) -> None:
    database = Database(database_url)
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)
    app = create_service_app(make_settings(database_url), routers=[router], database=database)
    try:
        async with running(app) as client:
            assert (await client.get("/api/notes/count")).json() == {"count": 0, "cached": False}
            assert (await client.get("/api/notes/count")).json() == {"count": 0, "cached": True}
            assert (await client.post("/api/notes", params={"body": "hello"})).status_code == 201
            assert (await client.post("/api/notes", params={"body": "reject"})).status_code == 422
            assert (await client.get("/api/notes/count")).json() == {"count": 1, "cached": False}
            about = (await client.get("/api/notes/about")).json()
        assert about["service"] == "testsvc"
        assert about["dialect"] == database.dialect_name
    finally:
        cleanup = Database(database_url)
        async with cleanup.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
        await cleanup.dispose()


async def test_shutdown_closes_the_cache_and_disposes_the_engine(tmp_path: Path) -> None:
    database = TrackingDatabase(f"sqlite+aiosqlite:///{tmp_path}/app.db")
    cache = TrackingCache()
    app = create_service_app(make_settings(str(database.url)), database=database, cache=cache)
    async with running(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        assert not database.disposed
        assert database.pool_stats().size > 0
    assert database.disposed
    assert cache.closed


async def test_custom_lifespan_runs_inside_and_stops_before_the_pool(tmp_path: Path) -> None:
    events: list[str] = []
    database = TrackingDatabase(f"sqlite+aiosqlite:///{tmp_path}/app.db")

    @asynccontextmanager
    async def consumers(app: FastAPI) -> AsyncIterator[None]:
        events.append("consumers started")
        yield
        events.append(f"consumers stopped, pool disposed={database.disposed}")

    app = create_service_app(
        make_settings(str(database.url)), database=database, lifespan=consumers
    )
    async with running(app):
        events.append("serving")
    assert events == ["consumers started", "serving", "consumers stopped, pool disposed=False"]
    assert database.disposed


def test_app_state_and_defaults(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path}/app.db")
    app = create_service_app(settings, title="Product service", version="1.2.3")
    assert app.title == "Product service"
    assert app.version == "1.2.3"
    assert app.state.settings is settings
    assert app.state.database.url.drivername == "sqlite+aiosqlite"
    assert isinstance(app.state.cache, MemoryCache)
    assert app.state.health.names == ["database", "cache", "eventBus"]


async def test_startup_warns_about_default_secrets_in_development(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/app.db", service_token=DEFAULT_SECRET)
    with caplog.at_level(logging.WARNING, logger="cloudretail.runtime.app"):
        async with running(create_service_app(settings)):
            pass
    warned = [record for record in caplog.records if "default secret" in record.getMessage()]
    assert [record.__dict__["secret"] for record in warned] == ["SERVICE_TOKEN"]
