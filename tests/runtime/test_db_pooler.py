"""DATABASE_POOLER: a service behind PgBouncer in transaction mode (the manifests' CloudNativePG
Pooler). PgBouncer is not installed here, so the real PostgreSQL stands where it would: the
connections go to the pooler's address, not DATABASE_URL's host, and every statement is
prepared under a name of its own, which is what transaction pooling needs."""

from __future__ import annotations

import re

import pytest
from cloudretail.runtime.app import create_service_app, database_from_settings
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database, through_pooler
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.runtime.conftest import make_settings, running, unique_name

UNIQUE_NAME = re.compile(r"^__asyncpg_[0-9a-f]{32}__$")


def test_the_pooler_takes_the_host_and_keeps_the_rest() -> None:
    url = make_url("postgresql+asyncpg://app:s3cr%40t@cluster-rw:5432/orders?ssl=require")
    pooled = through_pooler(url, "orders-pooler")
    assert (pooled.host, pooled.port) == ("orders-pooler", 5432)
    assert (pooled.username, pooled.password, pooled.database) == ("app", "s3cr@t", "orders")
    assert pooled.query == {"ssl": "require"}
    assert through_pooler(url, "127.0.0.1:6432").port == 6432


@pytest.mark.parametrize("value", ["pooler:port", "a b", "http://pooler"])
def test_a_malformed_pooler_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ValidationError, match="database_pooler"):
        make_settings("sqlite+aiosqlite://", database_pooler=value)


def test_sqlite_ignores_the_pooler(tmp_path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/x.db", pooler="pgbouncer")
    assert not database.pooled
    assert database.url.database and database.url.database.endswith("x.db")


async def _statement_names(database: Database) -> list[str]:
    """The names of the statements prepared on the connection, the asking one included."""
    async with database.engine.connect() as connection:
        rows = await connection.execute(text("SELECT name FROM pg_prepared_statements"))
        return [row[0] for row in rows]


async def test_statements_get_unique_names_only_behind_a_pooler(postgres_url: str) -> None:
    direct = Database(postgres_url)
    try:
        assert not any(UNIQUE_NAME.match(name) for name in await _statement_names(direct))
    finally:
        await direct.dispose()
    # DATABASE_URL names a host that does not exist: only the pooler's address can answer.
    url = make_url(postgres_url)
    nowhere = url.set(host="pgbouncer-not-here.invalid").render_as_string(hide_password=False)
    pooler = f"{url.host}:{url.port or 5432}"
    settings = make_settings(nowhere, database_pooler=pooler)
    pooled = database_from_settings(settings)
    try:
        assert pooled.pooled and pooled.url.host == url.host
        names = await _statement_names(pooled)
        assert names and all(UNIQUE_NAME.match(name) for name in names), names
        # Twice the same statement: no cache, so a new name each time (a cached statement
        # would be missing on the next transaction's server connection behind PgBouncer).
        again = await _statement_names(pooled)
        assert set(again).isdisjoint(names) or len(again) > len(names)
    finally:
        await pooled.dispose()


async def test_a_service_works_through_the_pooler_setting(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment the generated ConfigMaps give a deployable behind a Pooler."""
    url = make_url(postgres_url)
    monkeypatch.setenv(
        "DATABASE_URL",
        url.set(host="pgbouncer-not-here.invalid").render_as_string(hide_password=False),
    )
    monkeypatch.setenv("DATABASE_POOLER", f"{url.host}:{url.port or 5432}")
    settings = ServiceSettings(service_name="testsvc", port=3999)
    assert settings.database_pooler == f"{url.host}:{url.port or 5432}"
    app = create_service_app(settings)
    table = unique_name("pooled")
    database: Database = app.state.database
    async with running(app) as client:
        assert (await client.get("/health/ready")).status_code == 200
        try:
            async with database.session() as session:
                await session.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, n int)"))
            for index in range(30):  # more statements than any per-connection cache holds
                async with database.session() as session:
                    await session.execute(
                        text(f"INSERT INTO {table} VALUES (:id, :n)"), {"id": index, "n": index}
                    )
                    total = await session.scalar(text(f"SELECT sum(n) FROM {table}"))
                    assert total == sum(range(index + 1))
        finally:
            async with database.session() as session:
                await session.execute(text(f"DROP TABLE IF EXISTS {table}"))
