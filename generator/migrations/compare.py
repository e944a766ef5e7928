"""Compare the replayed schema with the desired one through Alembic's autogenerate.

The replayed schema is created in an in-memory SQLite database, which only has to carry
structure; exact types and server defaults are compared against the exact model through
Alembic's ``compare_type`` / ``compare_server_default`` hooks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations
from alembic.migration import MigrationContext
from alembic.operations import ops
from cloudretail.generator.migrations.state import (
    PG,
    SQLITE,
    SchemaState,
    is_type_check,
    sql_text,
    type_sql,
)
from sqlalchemy.schema import FetchedValue
from sqlalchemy.types import TypeEngine


def types_differ(old: TypeEngine[Any], new: TypeEngine[Any]) -> bool:
    if any(type_sql(old, d) != type_sql(new, d) for d in (PG, SQLITE)):
        return True
    if isinstance(old, sa.Enum) and isinstance(new, sa.Enum):
        return list(old.enums) != list(new.enums)
    return False


def default_key(default: FetchedValue | None) -> str | None:
    """Comparable text of a plain server default, as PostgreSQL would receive it."""
    if default is None:
        return None
    assert isinstance(default, sa.DefaultClause)
    arg = default.arg
    if isinstance(arg, str):
        # Alembic renders literal defaults without their outer quotes
        return "'" + re.sub(r"^'|'$", "", arg).replace("'", "''") + "'"
    text = sql_text(arg).strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return " ".join(text.split())


def is_plain_default(default: FetchedValue | None) -> bool:
    return default is None or type(default) is sa.DefaultClause


def autogenerate(state: SchemaState, exact: sa.MetaData, desired: sa.MetaData) -> ops.UpgradeOps:
    def exact_column(inspected: sa.Column[Any]) -> sa.Column[Any] | None:
        table = exact.tables.get(inspected.table.name)
        return None if table is None else table.columns.get(inspected.name)

    def compare_type(
        context: MigrationContext,
        inspected_column: sa.Column[Any],
        metadata_column: sa.Column[Any],
        inspected_type: TypeEngine[Any],
        metadata_type: TypeEngine[Any],
    ) -> bool | None:
        old = exact_column(inspected_column)
        return None if old is None else types_differ(old.type, metadata_type)

    def compare_server_default(
        context: MigrationContext,
        inspected_column: sa.Column[Any],
        metadata_column: sa.Column[Any],
        inspected_default: str | None,
        metadata_default: FetchedValue | None,
        rendered_metadata_default: str | None,
    ) -> bool | None:
        old = exact_column(inspected_column)
        new = metadata_column.server_default
        if old is None:
            return None
        if not (is_plain_default(old.server_default) and is_plain_default(new)):
            return False  # computed / identity columns are not compared
        return default_key(old.server_default) != default_key(new)

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        # a CHECK that comes with an Enum / Boolean type is created and dropped with it
        return not (type_ == "check_constraint" and is_type_check(obj))

    with _stand_in(state) as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "target_metadata": desired,
                "compare_type": compare_type,
                "compare_server_default": compare_server_default,
                "include_object": include_object,
                "autogenerate_plugins": [
                    "alembic.autogenerate.*",
                    "alembic.ext.checkconstraint_byname",
                ],
            },
        )
        script = produce_migrations(context, desired)
    upgrade_ops = script.upgrade_ops
    assert upgrade_ops is not None
    return upgrade_ops


@contextmanager
def _stand_in(state: SchemaState) -> Iterator[sa.Connection]:
    """A connection to an in-memory SQLite database holding the stand-in of ``state``."""
    engine = sa.create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            state.to_metadata(sqlite_safe=True).create_all(connection)
            yield connection
    finally:
        engine.dispose()


def unbuildable(state: SchemaState) -> str | None:
    """Why the schema of ``state`` cannot be built, exactly or on SQLite; None when it can."""
    try:
        state.to_metadata(sqlite_safe=False)
        with _stand_in(state):
            pass
    except sa.exc.DBAPIError as exc:
        return f"SQLite refuses it: {exc.orig}"
    except sa.exc.SQLAlchemyError as exc:
        return str(exc)
    return None
