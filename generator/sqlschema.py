"""A service's desired database schema as SQLAlchemy MetaData, built from the model.

The migration planner compares this with what the existing revisions produce. It uses
plain SQLAlchemy types (what a migration file should contain); the generated models use
runtime types whose storage types are exactly these.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from generator.model import Column, Table


def column_type(column: Column) -> sa.types.TypeEngine[Any]:
    kind = column.type
    if kind in {"string", "enum"}:
        return sa.String(column.length)
    if kind == "decimal":
        return sa.Numeric(column.precision, column.scale)
    if kind == "json":
        return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    simple: dict[str, sa.types.TypeEngine[Any]] = {
        "uuid": sa.Uuid(),
        "text": sa.Text(),
        "integer": sa.Integer(),
        "bigint": sa.BigInteger(),
        "boolean": sa.Boolean(),
        "timestamp": sa.DateTime(timezone=True),
    }
    return simple[kind]


def server_default(column: Column) -> str | sa.TextClause | None:
    """The DEFAULT clause, portable between SQLite and PostgreSQL (ids are made in Python)."""
    default = column.default
    if default is None or default == "gen_random_uuid":
        return None
    if default == "now":
        return sa.text("CURRENT_TIMESTAMP")
    if isinstance(default, bool):
        return sa.text("true" if default else "false")
    if isinstance(default, int | float):
        return sa.text(str(default))
    return str(default)


def check_name(table: Table, column: Column) -> str:
    return f"ck_{table.name}_{column.name}"


def unique_name(table: Table, column: Column) -> str:
    return f"uq_{table.name}_{column.name}"


def table_schema(table: Table, metadata: sa.MetaData) -> sa.Table:
    columns = [
        sa.Column(
            column.name,
            column_type(column),
            primary_key=column.primary_key,
            nullable=column.nullable,
            server_default=server_default(column),
        )
        for column in table.columns
    ]
    constraints: list[sa.Constraint] = [
        sa.CheckConstraint(column.check_sql, name=check_name(table, column))
        for column in table.columns
        if column.check_sql is not None
    ]
    constraints += [
        sa.UniqueConstraint(column.name, name=unique_name(table, column))
        for column in table.columns
        if column.unique
    ]
    indexes = [sa.Index(index.name, *index.columns, unique=index.unique) for index in table.indexes]
    return sa.Table(table.name, metadata, *columns, *constraints, *indexes)


def schema_metadata(tables: tuple[Table, ...]) -> sa.MetaData:
    metadata = sa.MetaData()
    for table in tables:
        table_schema(table, metadata)
    return metadata
