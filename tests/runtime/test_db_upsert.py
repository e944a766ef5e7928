"""`upsert_newest`: a write older than the stored row never rolls it back, its ascending
columns only move forward, and columns a write does not name keep their value (SQLite and
PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from cloudretail.runtime.db import Database, upsert_newest
from cloudretail.runtime.types import UTCDateTime, utc_now
from sqlalchemy import Column, Integer, MetaData, String, Table, select

from tests.runtime.conftest import unique_name

T0 = utc_now().replace(microsecond=0)


@pytest.fixture
async def rows(database_url: str) -> AsyncIterator[tuple[Database, Table]]:
    metadata = MetaData()
    table = Table(
        unique_name("latest"),
        metadata,
        Column("id", Integer, primary_key=True),
        Column("label", String(50)),
        Column("note", String(50)),
        Column("version", UTCDateTime, nullable=False),
        Column("seen", UTCDateTime),
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


async def _write(database: Database, table: Table, *values: dict[str, Any]) -> None:
    async with database.session() as session:
        statement = upsert_newest(
            table, database.dialect_name, "id", list(values), version="version", ascending=("seen",)
        )
        await session.execute(statement)


async def _read(database: Database, table: Table) -> dict[int, dict[str, Any]]:
    async with database.engine.connect() as connection:
        result = await connection.execute(select(table))
        return {row["id"]: dict(row) for row in result.mappings()}


async def test_an_older_write_keeps_the_newer_values(rows: tuple[Database, Table]) -> None:
    database, table = rows
    later = T0 + timedelta(seconds=10)
    await _write(database, table, {"id": 1, "label": "new", "version": later, "seen": later})
    await _write(database, table, {"id": 1, "label": "old", "version": T0, "seen": T0})
    assert (await _read(database, table))[1] == {
        "id": 1,
        "label": "new",
        "note": None,
        "version": later,
        "seen": later,
    }


async def test_an_ascending_column_moves_forward_even_with_older_values(
    rows: tuple[Database, Table],
) -> None:
    database, table = rows
    later = T0 + timedelta(seconds=10)
    await _write(database, table, {"id": 1, "label": "new", "version": later, "seen": None})
    await _write(database, table, {"id": 1, "label": "old", "version": T0, "seen": T0})
    assert (await _read(database, table))[1]["seen"] == T0  # from nothing
    await _write(database, table, {"id": 1, "label": "old", "version": T0, "seen": later})
    stored = (await _read(database, table))[1]
    assert (stored["label"], stored["version"], stored["seen"]) == ("new", later, later)


async def test_a_newer_write_changes_only_the_columns_it_names(
    rows: tuple[Database, Table],
) -> None:
    database, table = rows
    await _write(
        database,
        table,
        {"id": 1, "label": "a", "note": "kept", "version": T0, "seen": T0},
        {"id": 2, "label": "b", "note": "kept", "version": T0, "seen": T0},
    )
    later = T0 + timedelta(seconds=1)
    await _write(database, table, {"id": 1, "label": "a2", "version": later, "seen": later})
    await _write(database, table, {"id": 2, "label": "b2", "version": T0, "seen": T0})
    stored = await _read(database, table)
    assert (stored[1]["label"], stored[1]["note"], stored[1]["version"]) == ("a2", "kept", later)
    assert stored[2]["label"] == "b2"  # the same version is not older: it is applied


def test_other_databases_are_refused() -> None:
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True))
    with pytest.raises(ValueError, match=r"no INSERT \.\.\. ON CONFLICT for mysql"):
        upsert_newest(table, "mysql", "id", [{"id": 1}], version="id")
