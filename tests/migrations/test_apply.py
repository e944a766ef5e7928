"""The planned revisions, applied for real with `alembic upgrade/downgrade`."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.conftest import services_required
from tests.migrations.helpers import (
    Chain,
    Database,
    add_categories,
    products_schema,
    products_table,
    shop_schema,
    with_weight,
)

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


async def _pg_admin(*statements: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A scratch database on the local server, dropped afterwards."""
    name = f"cloudretail_test_migrations_{os.getpid()}"
    try:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError) as error:
        reason = f"PostgreSQL at {PG_HOST}:{PG_PORT} unreachable: {error!r}"
        if services_required():
            pytest.fail(reason)
        print(reason)
        pytest.skip(reason)
    yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    return Database(url, tmp_path / "alembic")


def insert_products(db: Database, *names: str) -> None:
    table = products_table(sa.MetaData())
    rows = [
        {"id": uuid.uuid4(), "name": name, "price": Decimal("9.99"), "sku": f"SKU-{name}"}
        for name in names
    ]
    db.run(lambda c: c.execute(table.insert(), rows))


def names(db: Database, column: str = "name") -> list[str]:
    return [row[0] for row in db.fetch(f"SELECT {column} FROM products ORDER BY {column}")]


def assert_matches(db: Database, metadata: sa.MetaData) -> None:
    """Alembic, run against the migrated database itself, finds nothing left to do."""

    def diff(connection: sa.Connection) -> list[Any]:
        # PostgreSQL compares defaults by evaluating them; SQLite only compares their text,
        # and sa.false() reads "0" there while the portable revision says "false"
        defaults = connection.dialect.name == "postgresql"
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": defaults}
        )
        return list(compare_metadata(context, metadata))

    assert db.run(diff) == []


def test_upgrade_keeps_rows_and_downgrade_reverses(db: Database) -> None:
    chain = Chain()
    chain.advance(products_schema())
    db.upgrade(chain)
    insert_products(db, "anvil", "rope")
    # server defaults are in place
    assert db.fetch("SELECT currency, is_active, is_featured FROM products") == [
        ("USD", True, False),
        ("USD", True, False),
    ]
    assert all(row[0] is not None for row in db.fetch("SELECT created_at FROM products"))

    # add a column and an index
    chain.advance(with_weight())
    db.upgrade(chain)
    assert names(db) == ["anvil", "rope"]
    assert "weight" in db.columns("products")
    assert "idx_products_weight" in db.indexes("products")
    assert_matches(db, with_weight())
    db.downgrade(chain)
    assert "weight" not in db.columns("products")
    assert "idx_products_weight" not in db.indexes("products")
    assert names(db) == ["anvil", "rope"]
    db.upgrade(chain)

    # add a table
    chain.advance(add_categories(with_weight()))
    db.upgrade(chain)
    assert "categories" in db.tables()
    assert_matches(db, add_categories(with_weight()))
    db.downgrade(chain)
    assert "categories" not in db.tables()
    db.upgrade(chain)

    # rename a column: the values move with it
    renamed = add_categories(
        products_schema(
            name="title",
            extra=[
                sa.Column("weight", sa.Numeric(8, 3)),
                sa.Index("idx_products_weight", "weight"),
            ],
        )
    )
    chain.advance(renamed, renames={("products", "title"): "name"})
    db.upgrade(chain)
    assert names(db, "title") == ["anvil", "rope"]
    assert_matches(db, renamed)
    db.downgrade(chain)
    assert names(db, "name") == ["anvil", "rope"]
    db.upgrade(chain)

    # drop a (nullable, unindexed) column, allowed
    dropped = add_categories(
        products_schema(
            name="title",
            with_description=False,
            extra=[
                sa.Column("weight", sa.Numeric(8, 3)),
                sa.Index("idx_products_weight", "weight"),
            ],
        )
    )
    chain.advance(dropped, renames={("products", "title"): "name"}, allow_destructive=True)
    db.upgrade(chain)
    assert "description" not in db.columns("products")
    assert_matches(db, dropped)
    db.downgrade(chain)
    assert "description" in db.columns("products")
    db.upgrade(chain)
    assert names(db, "title") == ["anvil", "rope"]

    # all the way down and up again
    db.downgrade(chain, "base")
    assert db.tables() <= {"alembic_version"}
    db.upgrade(chain)
    assert_matches(db, dropped)


def test_postgresql_gets_native_types_and_named_constraints(postgres_url: str, tmp_path: Path):
    db = Database(postgres_url, tmp_path / "alembic")
    chain = Chain()
    chain.advance(products_schema())
    db.upgrade(chain)
    types = dict(
        db.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'products'"
        )
    )
    assert types["id"] == "uuid"
    assert types["attributes"] == "jsonb"
    assert types["created_at"] == "timestamp with time zone"
    assert types["price"] == "numeric"
    constraints = dict(
        db.fetch(
            "SELECT conname, contype::text FROM pg_constraint "
            "WHERE conrelid = 'products'::regclass ORDER BY conname"
        )
    )
    assert constraints == {
        "ck_products_price": "c",
        "products_pkey": "p",
        "uq_products_sku": "u",
    }
    insert_products(db, "anvil")
    with pytest.raises(sa.exc.DBAPIError, match="ck_products_price"):
        db.run(lambda c: c.execute(sa.text("UPDATE products SET price = -1")))


def test_destructive_changes_apply_when_allowed(db: Database) -> None:
    chain = Chain()
    chain.advance(products_schema())
    db.upgrade(chain)
    insert_products(db, "anvil", "rope")

    # narrow VARCHAR(255) -> VARCHAR(100): the data fits, so the database accepts it
    narrowed = products_schema(name_length=100)
    chain.advance(narrowed, allow_destructive=True)
    db.upgrade(chain)
    assert db.columns("products")["name"]["type"].length == 100
    assert names(db) == ["anvil", "rope"]
    assert_matches(db, narrowed)
    db.downgrade(chain)
    assert db.columns("products")["name"]["type"].length == 255
    db.upgrade(chain)

    # drop the unique sku column; the downgrade brings the column and its constraint back
    no_sku = products_schema(name_length=100, with_sku=False)
    chain.advance(no_sku, allow_destructive=True)
    db.upgrade(chain)
    assert "sku" not in db.columns("products")
    assert names(db) == ["anvil", "rope"]
    assert_matches(db, no_sku)
    db.run(lambda c: c.execute(sa.text("DELETE FROM products")))  # sku comes back NOT NULL
    db.downgrade(chain)
    assert "sku" in db.columns("products")
    uniques = db.run(lambda c: sa.inspect(c).get_unique_constraints("products"))
    assert [(u["name"], u["column_names"]) for u in uniques] == [("uq_products_sku", ["sku"])]
    db.upgrade(chain)

    # drop the whole table; the downgrade recreates it exactly
    only_categories = add_categories(sa.MetaData())
    chain.advance(only_categories, allow_destructive=True)
    db.upgrade(chain)
    assert db.tables() == {"alembic_version", "categories"}
    assert_matches(db, only_categories)
    db.downgrade(chain)
    assert db.tables() == {"alembic_version", "products"}
    assert_matches(db, no_sku)


def test_foreign_keys_apply(db: Database) -> None:
    chain = Chain()
    steps = [
        shop_schema(orders=False),
        shop_schema(),
        shop_schema(buyer_email=True),
        shop_schema(user_fk=False),
        shop_schema(orders=False),
    ]
    for schema in steps:
        chain.advance(schema, allow_destructive=True)
        db.upgrade(chain)
        assert_matches(db, schema)
    for schema in reversed(steps[:-1]):
        db.downgrade(chain)
        assert_matches(db, schema)
        if schema is steps[1]:  # named as PostgreSQL would, on SQLite too
            fks = db.run(lambda c: sa.inspect(c).get_foreign_keys("orders"))
            assert [fk["name"] for fk in fks] == ["orders_user_id_fkey"]
