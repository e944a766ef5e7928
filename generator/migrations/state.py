"""The schema the existing revisions build, kept as plain data.

`SchemaState` folds recorded Alembic operations into tables, columns, constraints and
indexes; `to_metadata` materializes it either exactly (types, server defaults, CHECK text,
dialect options) or as the stand-in SQLite can create for the comparison.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import ops
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import FetchedValue
from sqlalchemy.sql.elements import ClauseElement, TextClause
from sqlalchemy.types import TypeEngine

PG: Final[Dialect] = PGDialect()  # type: ignore[no-untyped-call]
SQLITE: Final[Dialect] = sqlite.dialect()
# What the SQLite stand-in carries instead of a server default or a CHECK expression: only
# "there is one" (and for a CHECK, its name) matters there; the real values are compared on
# the exact model.
_PLACEHOLDER_DEFAULT: Final = "x"
_PLACEHOLDER_CHECK: Final = "1 = 1"


@dataclass
class _ColumnState:
    name: str
    type: TypeEngine[Any]
    nullable: bool
    server_default: FetchedValue | None
    autoincrement: bool | str
    comment: str | None


@dataclass
class _ConstraintState:
    kind: str  # "primary_key" | "unique" | "check" | "foreign_key"
    name: str | None
    columns: tuple[str, ...]
    sqltext: str = ""
    referred: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _IndexState:
    name: str
    # (is_column, column name or SQL expression)
    expressions: tuple[tuple[bool, str], ...]
    unique: bool
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _TableState:
    name: str
    columns: dict[str, _ColumnState] = field(default_factory=dict)
    constraints: list[_ConstraintState] = field(default_factory=list)
    indexes: dict[str, _IndexState] = field(default_factory=dict)
    comment: str | None = None


class SchemaState:
    """The schema produced by the recorded ops, kept as plain data."""

    def __init__(self) -> None:
        self.tables: dict[str, _TableState] = {}

    def _table(self, name: str) -> _TableState:
        try:
            return self.tables[name]
        except KeyError:
            raise ValueError(f"existing revisions refer to unknown table {name!r}") from None

    def apply(self, op: ops.MigrateOperation) -> None:
        if isinstance(op, ops.ModifyTableOps):
            for sub in op.ops:
                self.apply(sub)
        elif isinstance(op, ops.CreateTableOp):
            self.tables[op.table_name] = capture_table(op.to_table())
        elif isinstance(op, ops.DropTableOp):
            self._table(op.table_name)
            del self.tables[op.table_name]
        elif isinstance(op, ops.RenameTableOp):
            table = self.tables.pop(op.table_name)
            table.name = op.new_table_name
            self.tables[table.name] = table
        elif isinstance(op, ops.AddColumnOp):
            self._add_column(op.table_name, op.column)
        elif isinstance(op, ops.DropColumnOp):
            self._drop_column(self._table(op.table_name), op.column_name)
        elif isinstance(op, ops.AlterColumnOp):
            self._alter_column(op)
        elif isinstance(op, ops.CreateIndexOp):
            index = _capture_index(op.to_index())
            self._table(op.table_name).indexes[index.name] = index
        elif isinstance(op, ops.DropIndexOp):
            table = self._table(str(op.table_name))
            table.indexes.pop(str(op.index_name), None)
        elif isinstance(op, ops.AddConstraintOp):
            constraint = op.to_constraint()
            parent = constraint.table
            captured = capture_constraint(constraint)
            if captured is not None:
                self._add_constraint(self._table(parent.name), captured)
        elif isinstance(op, ops.DropConstraintOp):
            self._drop_constraint(op)
        elif isinstance(op, ops.CreateTableCommentOp):
            self._table(op.table_name).comment = op.comment
        elif isinstance(op, ops.DropTableCommentOp):
            self._table(op.table_name).comment = None
        elif isinstance(op, (ops.ExecuteSQLOp, ops.BulkInsertOp)):
            return  # data only; the schema does not change
        else:
            raise ValueError(f"cannot replay operation {type(op).__name__}")

    def _add_column(self, table_name: str, column: sa.Column[Any]) -> None:
        table = self._table(table_name)
        # the same expansion Alembic's add_column does: inline FK / UNIQUE / CHECK / index
        scratch = sa.Table(table_name, sa.MetaData(), _detached(column))
        captured = capture_table(scratch)
        table.columns.update(captured.columns)
        for constraint in captured.constraints:
            if constraint.kind != "primary_key":
                self._add_constraint(table, constraint)
        table.indexes.update(captured.indexes)

    @staticmethod
    def _add_constraint(table: _TableState, constraint: _ConstraintState) -> None:
        if constraint.kind == "primary_key":
            table.constraints = [c for c in table.constraints if c.kind != "primary_key"]
        table.constraints.append(constraint)

    @staticmethod
    def _drop_column(table: _TableState, name: str) -> None:
        if name not in table.columns:
            raise ValueError(f"existing revisions drop unknown column {table.name}.{name}")
        del table.columns[name]
        # PostgreSQL drops the indexes and constraints that involve the column
        table.indexes = {
            key: index
            for key, index in table.indexes.items()
            if not any(
                expr == name if is_col else _mentions(expr, name)
                for is_col, expr in index.expressions
            )
        }
        table.constraints = [
            c
            for c in table.constraints
            if name not in c.columns and not (c.kind == "check" and _mentions(c.sqltext, name))
        ]

    def _alter_column(self, op: ops.AlterColumnOp) -> None:
        table = self._table(op.table_name)
        column = table.columns.get(op.column_name)
        if column is None:
            raise ValueError(
                f"existing revisions alter unknown column {op.table_name}.{op.column_name}"
            )
        if op.modify_type is not None:
            column.type = sa.types.to_instance(op.modify_type)
        if op.modify_nullable is not None:
            column.nullable = op.modify_nullable
        if op.modify_server_default is not False:
            column.server_default = _as_server_default(op.modify_server_default)
        if op.modify_comment is not False:
            column.comment = op.modify_comment
        if op.modify_name is not None:
            old, new = op.column_name, op.modify_name
            column.name = new
            for constraint in table.constraints:
                if constraint.name is None and old in constraint.columns:
                    # PostgreSQL keeps the name it gave the constraint under the old column
                    constraint.name = postgres_default_name(
                        table.name, constraint.kind, constraint.columns
                    )
            table.columns = {
                (new if key == old else key): value for key, value in table.columns.items()
            }
            for constraint in table.constraints:
                constraint.columns = tuple(new if c == old else c for c in constraint.columns)
                if constraint.kind == "check":
                    constraint.sqltext = _rename_in_sql(constraint.sqltext, old, new)
            for index in table.indexes.values():
                index.expressions = tuple(
                    (
                        is_col,
                        (new if expr == old else expr)
                        if is_col
                        else _rename_in_sql(expr, old, new),
                    )
                    for is_col, expr in index.expressions
                )

    def _drop_constraint(self, op: ops.DropConstraintOp) -> None:
        table = self._table(op.table_name)
        name = constraint_name(op)

        def dropped(constraint: _ConstraintState) -> bool:
            if op.constraint_type == "primary" and constraint.kind == "primary_key":
                return True
            if constraint.name is not None:
                return constraint.name == name
            # an unnamed constraint carries PostgreSQL's default name in the database
            return postgres_default_name(table.name, constraint.kind, constraint.columns) == name

        table.constraints = [c for c in table.constraints if not dropped(c)]

    def to_metadata(self, *, sqlite_safe: bool) -> sa.MetaData:
        """Materialize the model; ``sqlite_safe`` keeps only what SQLite must carry."""
        metadata = sa.MetaData()
        for name in sorted(self.tables):
            table = self.tables[name]
            items: list[Any] = [build_column(c, sqlite_safe) for c in table.columns.values()]
            for constraint in sorted_constraints(table.constraints):
                built = build_constraint(constraint, sqlite_safe, self.tables)
                if built is not None:
                    items.append(built)
            for index_name in sorted(table.indexes):
                index = _build_index(table.indexes[index_name], sqlite_safe)
                if index is not None:
                    items.append(index)
            sa.Table(name, metadata, *items, comment=None if sqlite_safe else table.comment)
        return metadata


def _mentions(sql: str, name: str) -> bool:
    """Whether ``name`` occurs as an identifier in ``sql`` (outside string literals)."""
    pattern = re.compile(rf'(?<![\w$]){re.escape(name)}(?![\w$])|"{re.escape(name)}"')
    return any(pattern.search(part) for part in sql.split("'")[::2])


def _rename_in_sql(sql: str, old: str, new: str) -> str:
    pattern = re.compile(rf'(?<![\w$"]){re.escape(old)}(?![\w$"])')
    parts = sql.split("'")
    parts[::2] = [pattern.sub(new, part).replace(f'"{old}"', f'"{new}"') for part in parts[::2]]
    return "'".join(parts)


def _as_server_default(value: Any) -> FetchedValue | None:
    if value is None:
        return None
    if isinstance(value, FetchedValue):
        return value
    if isinstance(value, (str, ClauseElement)):
        return sa.DefaultClause(value)
    raise ValueError(f"unsupported server default {value!r}")


def capture_column(column: sa.Column[Any]) -> _ColumnState:
    return _ColumnState(
        name=column.name,
        type=column.type,
        nullable=bool(column.nullable),
        server_default=column.server_default,
        autoincrement=column.autoincrement,
        comment=column.comment,
    )


def sql_text(clause: Any) -> str:
    if isinstance(clause, str):
        return clause
    if isinstance(clause, TextClause):
        return clause.text
    compiled = clause.compile(
        dialect=PG, compile_kwargs={"literal_binds": True, "include_table": False}
    )
    return str(compiled)


def constraint_name(obj: Any) -> str | None:
    """The name of a constraint, index or drop op as a plain string (None when unnamed)."""
    if isinstance(obj, ops.MigrateOperation):
        name = getattr(obj, "constraint_name", None)
    else:
        name = obj.name
    return str(name) if isinstance(name, str) else None


def capture_constraint(constraint: sa.Constraint) -> _ConstraintState | None:
    name = constraint_name(constraint)
    options = {k: v for k, v in constraint.dialect_kwargs.items() if v is not None}
    for attr in ("deferrable", "initially"):
        if getattr(constraint, attr, None) is not None:
            options[attr] = getattr(constraint, attr)
    if isinstance(constraint, sa.PrimaryKeyConstraint):
        columns = tuple(c.name for c in constraint.columns)
        if not columns:
            return None
        return _ConstraintState("primary_key", name, columns, options=options)
    if isinstance(constraint, sa.UniqueConstraint):
        return _ConstraintState(
            "unique", name, tuple(c.name for c in constraint.columns), options=options
        )
    if isinstance(constraint, sa.CheckConstraint):
        columns = tuple(c.name for c in getattr(constraint, "columns", ()))
        return _ConstraintState(
            "check", name, columns, sqltext=sql_text(constraint.sqltext), options=options
        )
    if isinstance(constraint, sa.ForeignKeyConstraint):
        for attr in ("ondelete", "onupdate", "match"):
            if getattr(constraint, attr) is not None:
                options[attr] = getattr(constraint, attr)
        return _ConstraintState(
            "foreign_key",
            name,
            tuple(constraint.column_keys),
            referred=tuple(element.target_fullname for element in constraint.elements),
            options=options,
        )
    raise ValueError(f"unsupported constraint {constraint!r}")


def _capture_index(index: sa.Index) -> _IndexState:
    name = constraint_name(index)
    if name is None:
        raise ValueError("indexes must be named")
    expressions: list[tuple[bool, str]] = []
    for expr in index.expressions:
        if isinstance(expr, sa.Column):
            expressions.append((True, expr.name))
        elif isinstance(expr, str):
            expressions.append((True, expr))
        else:
            expressions.append((False, sql_text(expr)))
    options = {k: v for k, v in index.dialect_kwargs.items() if v is not None}
    return _IndexState(name, tuple(expressions), bool(index.unique), options)


def capture_table(table: sa.Table) -> _TableState:
    state = _TableState(table.name, comment=table.comment)
    for column in table.columns:
        state.columns[column.name] = capture_column(column)
    column_checks = [c for column in table.columns for c in column.constraints]
    type_checks = _type_checks(table)
    for constraint in [*table.constraints, *column_checks]:
        if isinstance(constraint, sa.CheckConstraint) and _check_key(constraint) in type_checks:
            continue  # Enum / Boolean CHECKs come back with their type
        captured = capture_constraint(constraint)
        if captured is not None:
            state.constraints.append(captured)
    for index in table.indexes:
        captured_index = _capture_index(index)
        state.indexes[captured_index.name] = captured_index
    return state


def _check_key(constraint: sa.CheckConstraint) -> tuple[object, str]:
    return (constraint.name, sql_text(constraint.sqltext))


def _type_checks(table: sa.Table) -> set[tuple[object, str]]:
    """The CHECK constraints (name, text) that the Enum / Boolean types of ``table``'s columns
    create with ``create_constraint=True``: the same types on a scratch table show them."""
    typed: list[sa.Column[Any]] = [
        sa.Column(column.name, column.type)
        for column in table.columns
        if isinstance(column.type, sa.types.SchemaType)
        and getattr(column.type, "create_constraint", False)
    ]
    if not typed:
        return set()
    metadata = sa.MetaData(naming_convention=table.metadata.naming_convention)
    scratch = sa.Table(table.name, metadata, *typed)
    return {_check_key(c) for c in scratch.constraints if isinstance(c, sa.CheckConstraint)}


def is_type_check(constraint: sa.CheckConstraint) -> bool:
    """Whether ``constraint`` is the CHECK an Enum / Boolean column type creates (it is created
    and dropped with the type)."""
    table = constraint.table
    return isinstance(table, sa.Table) and _check_key(constraint) in _type_checks(table)


def sorted_constraints(constraints: Iterable[_ConstraintState]) -> list[_ConstraintState]:
    order = {"primary_key": 0, "unique": 1, "check": 2, "foreign_key": 3}
    return sorted(constraints, key=lambda c: (order[c.kind], c.name or "", c.columns, c.sqltext))


def _sqlite_type(type_: TypeEngine[Any]) -> TypeEngine[Any]:
    """A type SQLite accepts; which one does not matter, exact types are compared."""
    if isinstance(type_, sa.types.SchemaType):
        return sa.Text()  # no Enum / Boolean CHECK constraint in the stand-in
    try:
        type_.compile(dialect=SQLITE)
    except sa.exc.SQLAlchemyError:
        return sa.Text()
    return type_


def _detached(column: sa.Column[Any]) -> sa.Column[Any]:
    """``column`` when it belongs to no table yet, else a new column like it (what Alembic's
    ``add_column`` adds in that case too)."""
    if column.table is None:
        return column
    default = column.server_default
    return sa.Column(
        column.name,
        column.type,
        *(
            sa.ForeignKey(
                fk.target_fullname,
                name=fk.name,
                ondelete=fk.ondelete,
                onupdate=fk.onupdate,
                deferrable=fk.deferrable,
                initially=fk.initially,
                match=fk.match,
            )
            for fk in column.foreign_keys
        ),
        *(
            sa.CheckConstraint(sql_text(c.sqltext), name=c.name)
            for c in column.constraints
            if isinstance(c, sa.CheckConstraint)
        ),
        key=column.key,
        primary_key=column.primary_key,
        nullable=column.nullable,
        server_default=None if default is None else _copied_default(default),
        autoincrement=column.autoincrement,
        unique=column.unique,
        index=column.index,
        comment=column.comment,
    )


def _copied_default(default: FetchedValue) -> FetchedValue:
    """A server default like ``default`` for another column (a default belongs to one)."""
    if isinstance(default, sa.Computed):
        return sa.Computed(default.sqltext, persisted=default.persisted)
    if isinstance(default, sa.Identity):
        return sa.Identity(
            always=default.always,
            start=default.start,
            increment=default.increment,
            minvalue=default.minvalue,
            maxvalue=default.maxvalue,
            nominvalue=default.nominvalue,
            nomaxvalue=default.nomaxvalue,
            cycle=default.cycle,
            cache=default.cache,
            **default.dialect_kwargs,
        )
    if isinstance(default, sa.DefaultClause):
        return sa.DefaultClause(default.arg, for_update=default.for_update)
    return sa.FetchedValue(for_update=default.for_update)


def build_column(state: _ColumnState, sqlite_safe: bool) -> sa.Column[Any]:
    server_default: FetchedValue | None = None
    if isinstance(state.server_default, sa.DefaultClause):
        server_default = sa.DefaultClause(
            _PLACEHOLDER_DEFAULT if sqlite_safe else state.server_default.arg
        )
    elif state.server_default is not None and not sqlite_safe:
        server_default = _copied_default(state.server_default)
    return sa.Column(
        state.name,
        _sqlite_type(state.type) if sqlite_safe else state.type,
        nullable=state.nullable,
        server_default=server_default,
        autoincrement=state.autoincrement,  # type: ignore[arg-type]
        comment=None if sqlite_safe else state.comment,
    )


def build_constraint(
    state: _ConstraintState, sqlite_safe: bool, tables: Mapping[str, _TableState]
) -> sa.Constraint | None:
    options = dict(state.options)
    if sqlite_safe:
        options = {k: v for k, v in options.items() if k in ("deferrable", "initially")}
    if state.kind == "primary_key":
        return sa.PrimaryKeyConstraint(*state.columns, name=state.name, **options)
    if state.kind == "unique":
        return sa.UniqueConstraint(*state.columns, name=state.name, **options)
    if state.kind == "check":
        if sqlite_safe:
            if state.name is None:
                return None
            return sa.CheckConstraint(_PLACEHOLDER_CHECK, name=state.name)
        return sa.CheckConstraint(state.sqltext, name=state.name, **options)
    if sqlite_safe:
        targets = {ref.rsplit(".", 1)[0] for ref in state.referred}
        if not targets <= set(tables):
            return None
        options = {k: v for k, v in state.options.items() if k in ("ondelete", "onupdate")}
    return sa.ForeignKeyConstraint(
        list(state.columns), list(state.referred), name=state.name, **options
    )


def _build_index(state: _IndexState, sqlite_safe: bool) -> sa.Index | None:
    if sqlite_safe and not all(is_col for is_col, _ in state.expressions):
        return None  # expression indexes cannot be reflected on SQLite; never compared
    expressions = [expr if is_col else sa.text(expr) for is_col, expr in state.expressions]
    options = {} if sqlite_safe else state.options
    return sa.Index(state.name, *expressions, unique=state.unique, **options)


def postgres_default_name(table: str, kind: str, columns: Sequence[str]) -> str | None:
    suffix = {"primary_key": "pkey", "unique": "key", "check": "check", "foreign_key": "fkey"}
    if kind == "primary_key":
        return f"{table}_pkey"
    if not columns:
        return None
    return f"{table}_{'_'.join(columns)}_{suffix[kind]}"


def type_sql(type_: TypeEngine[Any], dialect: Dialect) -> str | None:
    try:
        return str(type_.compile(dialect=dialect))
    except sa.exc.SQLAlchemyError:
        return None
