from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from cloudretail.runtime.db import Database, PoolStats, normalize_database_url
from cloudretail.runtime.types import GUID, DecimalType, JSONType, UTCDateTime, utc_now
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, StatementError

from tests.runtime.conftest import DEAD_POSTGRES_URL, unique_name


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("postgres://u:p@db:5432/shop", "postgresql+asyncpg"),
        ("postgresql://u:p@db:5432/shop", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u:p@db:5432/shop", "postgresql+asyncpg"),
        ("sqlite:///./data/x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///./data/x.db", "sqlite+aiosqlite"),
    ],
)
def test_urls_get_the_async_driver(given: str, driver: str) -> None:
    url = normalize_database_url(given)
    assert url.drivername == driver
    if "db:5432" in given:
        assert (url.host, url.port, url.database, url.password) == ("db", 5432, "shop", "p")


def test_libpq_sslmode_becomes_asyncpg_ssl() -> None:
    url = normalize_database_url("postgres://u:p@db/shop?sslmode=require")
    assert dict(url.query) == {"ssl": "require"}


async def test_sqlite_creates_its_folder_and_enables_wal_and_foreign_keys(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/nested/deeper/app.db")
    try:
        assert (tmp_path / "nested" / "deeper").is_dir()
        assert database.dialect_name == "sqlite"
        async with database.engine.connect() as connection:
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert await database.ping()
    finally:
        await database.dispose()


async def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    metadata = MetaData()
    parents = Table("parents", metadata, Column("id", Integer, primary_key=True))
    children = Table(
        "children",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parents.id"), nullable=False),
    )
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/fk.db")
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with database.session() as session:
            await session.execute(insert(parents).values(id=1))
            await session.execute(insert(children).values(id=1, parent_id=1))
        with pytest.raises(IntegrityError):
            async with database.session() as session:
                await session.execute(insert(children).values(id=2, parent_id=99))
    finally:
        await database.dispose()


async def test_ping_reports_a_dead_server_without_raising() -> None:
    database = Database(DEAD_POSTGRES_URL, connect_timeout=2)
    try:
        assert await database.ping() is False
    finally:
        await database.dispose()


async def test_ping_on_postgres(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        assert database.dialect_name == "postgresql"
        assert await database.ping()
    finally:
        await database.dispose()


async def test_a_pooled_connection_is_tested_only_after_it_rested(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy pool reuses connections untested (pool_pre_ping cost three round trips on every
    checkout); one that rested, and died meanwhile, is replaced before the request sees it."""
    import cloudretail.runtime.db

    database = Database(postgres_url, pool_size=1, max_overflow=0)
    pings = []
    dialect = database.engine.sync_engine.dialect
    real_ping = dialect.do_ping

    def counting_ping(dbapi_connection: Any) -> bool:
        pings.append(1)
        return real_ping(dbapi_connection)

    monkeypatch.setattr(dialect, "do_ping", counting_ping)
    try:
        for _ in range(20):
            async with database.engine.connect() as connection:
                pid = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert pings == []  # back-to-back checkouts: never tested
        # The server drops the pooled connection while it rests.
        async with database.engine.connect() as connection:
            pass
        other = Database(postgres_url)
        try:
            async with other.engine.connect() as connection:
                await connection.execute(text(f"SELECT pg_terminate_backend({pid})"))
        finally:
            await other.dispose()
        monkeypatch.setattr(cloudretail.runtime.db, "PING_AFTER_IDLE", 0.0)
        await asyncio.sleep(0.05)
        async with database.engine.connect() as connection:
            fresh = (await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert pings == [1] and fresh != pid
    finally:
        await database.dispose()


async def test_bursts_reuse_pooled_connections(postgres_url: str) -> None:
    """Ten bursts of eight concurrent transactions: the pool opens eight connections and
    keeps them (a pool of 5 with overflow 10 closed three after each burst and opened
    three for the next)."""
    database = Database(postgres_url)
    backends: set[int] = set()

    async def transaction() -> None:
        async with database.engine.connect() as connection:
            result = await connection.execute(text("SELECT pg_backend_pid(), pg_sleep(0.005)"))
            backends.add(result.scalar_one())

    try:
        for _ in range(10):
            await asyncio.gather(*(transaction() for _ in range(8)))
    finally:
        await database.dispose()
    assert len(backends) <= 8


async def test_pool_stats_on_an_in_memory_static_pool() -> None:
    database = Database("sqlite+aiosqlite:///:memory:")
    try:
        assert database.pool_stats() == PoolStats(size=1, checked_out=0, overflow=0)
        async with database.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert database.pool_stats().checked_out == 1
        assert database.pool_stats().checked_out == 0
    finally:
        await database.dispose()


async def test_pool_stats_count_checked_out_connections(database_url: str) -> None:
    database = Database(database_url, pool_size=3)
    try:
        idle = database.pool_stats()
        assert idle.checked_out == 0
        assert idle.overflow == 0
        async with database.engine.connect() as first, database.engine.connect() as second:
            await first.execute(text("SELECT 1"))
            await second.execute(text("SELECT 1"))
            assert database.pool_stats().checked_out == 2
        assert database.pool_stats().checked_out == 0
    finally:
        await database.dispose()


async def test_session_commits_on_success_and_rolls_back_on_error(database_url: str) -> None:
    metadata = MetaData()
    notes = Table(
        unique_name("notes"),
        metadata,
        Column("id", Integer, primary_key=True),
        Column("body", String(50)),
    )
    database = Database(database_url)
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with database.session() as session:
            await session.execute(insert(notes).values(id=1, body="kept"))
        with pytest.raises(RuntimeError):
            async with database.session() as session:
                await session.execute(insert(notes).values(id=2, body="discarded"))
                raise RuntimeError("handler failed")
        async with database.session() as session:
            bodies = (await session.execute(select(notes.c.body))).scalars().all()
        assert bodies == ["kept"]
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
        await database.dispose()


@pytest.fixture
async def typed_table(database_url: str) -> AsyncIterator[tuple[Database, Table]]:
    metadata = MetaData()
    table = Table(
        unique_name("typed"),
        metadata,
        Column("id", GUID, primary_key=True, default=uuid.uuid4),
        Column("price", DecimalType(10, 2)),
        Column("payload", JSONType),
        Column("created_at", UTCDateTime, default=utc_now),
    )
    database = Database(database_url)
    async with database.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    try:
        yield database, table
    finally:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
        await database.dispose()


PRICES = [
    Decimal("0.00"),
    Decimal("0.10"),
    Decimal("19.99"),
    Decimal("-42.50"),
    Decimal("12345678.99"),
    Decimal("99999999.99"),
]


async def _store_and_read(database: Database, table: Table, **values: Any) -> Any:
    async with database.session() as session:
        result = cast(CursorResult[Any], await session.execute(insert(table).values(**values)))
        primary_key = result.inserted_primary_key
        assert primary_key is not None
        row_id = primary_key[0]
    async with database.session() as session:
        return (await session.execute(select(table).where(table.c.id == row_id))).one()


@pytest.mark.parametrize("price", PRICES, ids=str)
async def test_numeric_10_2_round_trips_as_decimal(
    typed_table: tuple[Database, Table], price: Decimal
) -> None:
    database, table = typed_table
    row = await _store_and_read(database, table, price=price)
    assert isinstance(row.price, Decimal)
    assert row.price == price
    # Exactly two places on every backend: 10.00, not 10.0 or 10.
    assert row.price.as_tuple().exponent == -2


async def test_decimal_is_rounded_like_postgres_and_overflow_refused(
    typed_table: tuple[Database, Table],
) -> None:
    database, table = typed_table
    assert (await _store_and_read(database, table, price=Decimal("2.345"))).price == Decimal("2.35")
    assert (await _store_and_read(database, table, price=Decimal("-2.345"))).price == Decimal(
        "-2.35"
    )
    assert (await _store_and_read(database, table, price=10)).price == Decimal("10.00")
    with pytest.raises(StatementError, match="does not fit NUMERIC"):
        await _store_and_read(database, table, price=Decimal("100000000.00"))


async def test_decimals_sum_exactly_in_sql(typed_table: tuple[Database, Table]) -> None:
    database, table = typed_table
    async with database.session() as session:
        for price in (Decimal("0.10"), Decimal("0.20"), Decimal("19.99")):
            await session.execute(insert(table).values(price=price))
    async with database.session() as session:
        rows = (await session.execute(select(table.c.price).order_by(table.c.price))).scalars()
        assert list(rows) == [Decimal("0.10"), Decimal("0.20"), Decimal("19.99")]


async def test_json_uuid_and_utc_timestamps_round_trip(typed_table: tuple[Database, Table]) -> None:
    database, table = typed_table
    row_id = uuid.uuid4()
    order_id = uuid.uuid4()
    payload = {"items": [{"sku": "A-1", "qty": 2, "price": Decimal("9.95")}], "order": order_id}
    moment = datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2)))

    row = await _store_and_read(
        database, table, id=row_id, payload=payload, created_at=moment, price=Decimal("1.00")
    )

    assert row.id == row_id
    # Decimal and UUID inside JSON come back as strings, as any JSON client would see them.
    assert row.payload == {
        "items": [{"sku": "A-1", "qty": 2, "price": "9.95"}],
        "order": str(order_id),
    }
    assert row.created_at == moment
    assert row.created_at.tzinfo is not None
    assert row.created_at.utcoffset() == timedelta(0)


async def test_default_timestamp_is_recent_utc(typed_table: tuple[Database, Table]) -> None:
    database, table = typed_table
    row = await _store_and_read(database, table, price=Decimal("1.00"))
    assert abs(datetime.now(UTC) - row.created_at) < timedelta(minutes=1)


async def test_naive_datetimes_are_refused(typed_table: tuple[Database, Table]) -> None:
    database, table = typed_table
    with pytest.raises(StatementError, match="naive datetime"):
        await _store_and_read(database, table, created_at=datetime(2024, 1, 1))


async def test_concurrent_sessions_on_one_database(database_url: str) -> None:
    database = Database(database_url)
    try:

        async def one() -> int:
            async with database.session() as session:
                return int((await session.execute(text("SELECT 1"))).scalar_one())

        assert await asyncio.gather(*(one() for _ in range(10))) == [1] * 10
    finally:
        await database.dispose()
