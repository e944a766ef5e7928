"""A service's desired database schema as SQLAlchemy MetaData, built from the model.

The migration planner compares this with what the existing revisions produce. It uses
plain SQLAlchemy types (what a migration file should contain); the generated models use
runtime types whose storage types are exactly these.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from cloudretail.generator.model import Column, Table


def column_type(column: Column) -> sa.types.TypeEngine[Any]:
    if column.encrypted:  # ciphertext, whatever the plaintext's kind
        return sa.Text()
    return column.kind.schema_type(column)


def server_default(column: Column) -> str | sa.TextClause | None:
    """The DEFAULT clause, portable between SQLite and PostgreSQL (ids are made in Python)."""
    found = column.kind.server_default(column.default)
    if found is None:
        return None
    text, is_sql = found
    return sa.text(text) if is_sql else text


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
        sa.CheckConstraint(column.check_sql, name=table.check_name(column))
        for column in table.columns
        if column.check_sql is not None
    ]
    constraints += [
        sa.UniqueConstraint(column.name, name=table.unique_name(column))
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
