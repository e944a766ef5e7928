"""Turn Alembic's raw diff into the ordered operations of the next revision.

Reflected objects are swapped for the exact ones, ``renamed_from`` pairs become column
renames, unnamed constraints get PostgreSQL's default names, and the changes that can lose
data are listed (`DestructiveChange`) so that they can be refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from alembic.operations import ops
from cloudretail.generator.errors import CloudRetailError
from cloudretail.generator.migrations.compare import default_key, is_plain_default, types_differ
from cloudretail.generator.migrations.state import (
    PG,
    build_column,
    build_constraint,
    capture_column,
    capture_constraint,
    capture_table,
    constraint_name,
    postgres_default_name,
    sorted_constraints,
    sql_text,
    type_sql,
)
from sqlalchemy.types import TypeEngine

_ALLOW_HINT: Final = "mark the change allowed in the spec (allow_destructive)"
# the bases of all types, not kinds of data
_BASES: Final = (TypeEngine, sa.TypeDecorator, sa.types.UserDefinedType, sa.types.ExternalType)


@dataclass(frozen=True)
class DestructiveChange:
    """One change that can lose data: a dropped table, a dropped column, or a column whose
    type narrows (``column`` is then its name in the desired schema)."""

    kind: str  # "drop_table" | "drop_column" | "narrow"
    table: str
    column: str | None = None
    reason: str = ""  # "narrow": how the type changes

    @property
    def problem(self) -> str:
        """What is lost and how to allow it; the table (and column) are left to the caller."""
        if self.kind == "drop_table":
            return f"dropping table {self.table!r} loses data; {_ALLOW_HINT}"
        if self.kind == "drop_column":
            return f"dropping column {self.column!r} loses data; {_ALLOW_HINT} or add renamed_from"
        return f"{self.reason} may lose data; {_ALLOW_HINT}"

    @property
    def message(self) -> str:
        if self.kind == "drop_table":
            return f"table {self.table!r}: dropping the table loses data; {_ALLOW_HINT}"
        if self.kind == "drop_column":
            return f"table {self.table!r}: {self.problem}"
        return f"table {self.table!r}: column {self.column!r}: {self.problem}"


class DestructiveChangeError(CloudRetailError, ValueError):
    """The schema change would lose data and was not allowed."""

    def __init__(self, changes: Sequence[DestructiveChange]) -> None:
        self.changes: list[DestructiveChange] = list(changes)
        self.messages: list[str] = [change.message for change in self.changes]
        super().__init__("\n".join(self.messages))


def _walk(container: ops.OpContainer) -> Iterator[ops.MigrateOperation]:
    for op in container.ops:
        if isinstance(op, ops.OpContainer):
            yield from _walk(op)
        else:
            yield op


def op_table(op: ops.MigrateOperation) -> str:
    if isinstance(op, ops.AddConstraintOp):
        return str(op.to_constraint().table.name)
    name = getattr(op, "table_name", None)
    if name is None:
        raise ValueError(f"unexpected operation {type(op).__name__}")
    return str(name)


def _constraint_kind(constraint: sa.Constraint) -> str:
    if isinstance(constraint, sa.ForeignKeyConstraint):
        return "foreign_key"
    if isinstance(constraint, sa.UniqueConstraint):
        return "unique"
    if isinstance(constraint, sa.CheckConstraint):
        return "check"
    return "primary_key"


def _constraint_columns(constraint: sa.Constraint) -> tuple[str, ...]:
    if isinstance(constraint, sa.ForeignKeyConstraint):
        return tuple(constraint.column_keys)
    return tuple(c.name for c in getattr(constraint, "columns", ()))


def _index_key(index: sa.Index, renames: Mapping[str, str]) -> tuple[Any, ...]:
    exprs = tuple(
        renames.get(e.name, e.name) if isinstance(e, sa.Column) else sql_text(e)
        for e in index.expressions
    )
    return (exprs, bool(index.unique), sorted(index.dialect_kwargs.items()))


class Plan:
    """Turns Alembic's raw diff into the final, ordered list of upgrade ops."""

    def __init__(
        self,
        diff: ops.UpgradeOps,
        exact: sa.MetaData,
        desired: sa.MetaData,
        renames: Mapping[tuple[str, str], str],
    ) -> None:
        self.exact = exact
        self.desired = desired
        self.renames = renames
        self.created: list[ops.CreateTableOp] = []
        self.dropped: list[ops.DropTableOp] = []
        self.by_table: dict[str, list[ops.MigrateOperation]] = {}
        for op in _walk(diff):
            if isinstance(op, ops.CreateTableOp):
                self.created.append(op)
            elif isinstance(op, ops.DropTableOp):
                self.dropped.append(op)
            else:
                self.by_table.setdefault(op_table(op), []).append(op)

    # -- exact objects from the replayed schema

    def _exact_table(self, name: str) -> sa.Table:
        return self.exact.tables[name]

    def _exact_constraint(self, table: str, constraint: sa.Constraint) -> sa.Constraint:
        name = constraint_name(constraint)
        kind = _constraint_kind(constraint)
        columns = _constraint_columns(constraint)
        candidates = [
            c for c in self._exact_table(table).constraints if _constraint_kind(c) == kind
        ]
        for candidate in candidates:
            if name is not None and constraint_name(candidate) == name:
                return candidate
        for candidate in candidates:
            if name is None and _constraint_columns(candidate) == columns:
                return candidate
        return constraint

    # -- the plan

    def upgrade_ops(self) -> list[ops.MigrateOperation]:
        """All changes, in an order that is fixed and valid on PostgreSQL.

        Existing tables first lose the foreign keys, then the other constraints and indexes
        that go away; then their columns are added, altered (renamed) and dropped; new
        tables follow (in foreign key order) with their indexes; then the new indexes and
        constraints of existing tables, foreign keys last; finally dropped tables go, in
        reverse foreign key order.  The downgrade is the exact reverse.
        """
        drop_fks: list[ops.MigrateOperation] = []
        drop_others: list[ops.MigrateOperation] = []
        column_ops: list[ops.MigrateOperation] = []
        creates: list[ops.MigrateOperation] = []
        create_fks: list[ops.MigrateOperation] = []
        new_tables = {op.table_name for op in self.created}
        dropped_tables = {op.table_name for op in self.dropped}
        new_table_indexes: dict[str, list[ops.MigrateOperation]] = {}
        dropped_table_indexes: dict[str, list[ops.MigrateOperation]] = {}

        for table in sorted(self.by_table):
            table_ops = self._pair_renames(table, self.by_table[table])
            table_ops = self._cancel_renamed_indexes(table, table_ops)
            table_ops = sorted((self._finalize(table, op) for op in table_ops), key=_sort_name)
            if table in new_tables:
                new_table_indexes[table] = table_ops
                continue
            if table in dropped_tables:
                dropped_table_indexes[table] = table_ops
                continue
            column_ops += [op for op in table_ops if isinstance(op, ops.AddColumnOp)]
            column_ops += [op for op in table_ops if isinstance(op, ops.AlterColumnOp)]
            column_ops += [op for op in table_ops if isinstance(op, ops.DropColumnOp)]
            for op in table_ops:
                if isinstance(op, ops.DropConstraintOp) and op.constraint_type == "foreignkey":
                    drop_fks.append(op)
                elif isinstance(op, (ops.DropIndexOp, ops.DropConstraintOp)):
                    drop_others.append(op)
                elif isinstance(op, ops.CreateForeignKeyOp):
                    create_fks.append(op)
                elif isinstance(op, (ops.CreateIndexOp, ops.AddConstraintOp)):
                    creates.append(op)

        result: list[ops.MigrateOperation] = [*drop_fks, *drop_others, *column_ops]
        for create in self.created:  # Alembic keeps MetaData.sorted_tables (FK) order
            result.append(_create_table_op(self.desired.tables[create.table_name]))
            result += new_table_indexes.get(create.table_name, [])
        result += creates + create_fks
        exact_dropped = [self._exact_table(op.table_name) for op in self.dropped]
        ordered = sa.schema.sort_tables(sorted(exact_dropped, key=lambda t: t.name))
        for table_obj in reversed(ordered):
            result += dropped_table_indexes.get(table_obj.name, [])
            result.append(ops.DropTableOp.from_table(table_obj))
        return result

    def _finalize(self, table: str, op: ops.MigrateOperation) -> ops.MigrateOperation:
        if isinstance(op, ops.AlterColumnOp):
            return self._exact_alter(op)
        if isinstance(op, (ops.DropColumnOp, ops.DropIndexOp, ops.DropConstraintOp)):
            return self._exact_drop(op)
        if isinstance(op, ops.AddConstraintOp):
            return self._named_add(table, op)
        return op

    def _pair_renames(
        self, table: str, table_ops: list[ops.MigrateOperation]
    ) -> list[ops.MigrateOperation]:
        adds = {op.column.name: op for op in table_ops if isinstance(op, ops.AddColumnOp)}
        drops = {op.column_name: op for op in table_ops if isinstance(op, ops.DropColumnOp)}
        replaced: dict[int, ops.MigrateOperation | None] = {}
        for (rtable, new), old in sorted(self.renames.items()):
            if rtable != table or new not in adds or old not in drops:
                continue
            old_column = self._exact_table(table).columns[old]
            new_column = adds[new].column
            alter = ops.AlterColumnOp(
                table,
                old,
                modify_name=new,
                existing_type=old_column.type,
                existing_nullable=old_column.nullable,
                existing_server_default=old_column.server_default,
                existing_comment=old_column.comment,
            )
            if types_differ(old_column.type, new_column.type):
                alter.modify_type = new_column.type
            if bool(old_column.nullable) != bool(new_column.nullable):
                alter.modify_nullable = bool(new_column.nullable)
            old_default, new_default = old_column.server_default, new_column.server_default
            if (
                is_plain_default(old_default)
                and is_plain_default(new_default)
                and default_key(old_default) != default_key(new_default)
            ):  # computed / identity columns are not compared, as in `compare`
                alter.modify_server_default = new_default
            replaced[id(adds[new])] = alter
            replaced[id(drops[old])] = None
        result: list[ops.MigrateOperation] = []
        for op in table_ops:
            if id(op) not in replaced:
                result.append(op)
            elif (substitute := replaced[id(op)]) is not None:
                result.append(substitute)
        return result

    def _cancel_renamed_indexes(
        self, table: str, table_ops: list[ops.MigrateOperation]
    ) -> list[ops.MigrateOperation]:
        """A renamed column keeps its indexes and constraints: drop the drop+create pairs."""
        renamed = {
            op.column_name: op.modify_name
            for op in table_ops
            if isinstance(op, ops.AlterColumnOp) and op.modify_name is not None
        }
        if not renamed:
            return table_ops
        cancelled: set[int] = set()
        for drop in table_ops:
            if not isinstance(drop, (ops.DropIndexOp, ops.DropConstraintOp)):
                continue
            for create in table_ops:
                if id(create) in cancelled or id(drop) in cancelled:
                    continue
                if (
                    isinstance(drop, ops.DropIndexOp)
                    and isinstance(create, ops.CreateIndexOp)
                    and str(drop.index_name) == str(create.index_name)
                ):
                    old_index = self._exact_table(table).indexes
                    match = [i for i in old_index if str(i.name) == str(drop.index_name)]
                    if match and _index_key(match[0], renamed) == _index_key(create.to_index(), {}):
                        cancelled |= {id(drop), id(create)}
                elif (
                    isinstance(drop, ops.DropConstraintOp)
                    and isinstance(create, ops.CreateUniqueConstraintOp)
                    and drop.constraint_type == "unique"
                ):
                    old = self._exact_constraint(table, drop.to_constraint())
                    new = create.to_constraint()
                    old_cols = tuple(renamed.get(c, c) for c in _constraint_columns(old))
                    if old_cols == _constraint_columns(new) and (
                        create.constraint_name is None
                        or constraint_name(old) == str(create.constraint_name)
                    ):
                        cancelled |= {id(drop), id(create)}
        return [op for op in table_ops if id(op) not in cancelled]

    def _exact_alter(self, op: ops.AlterColumnOp) -> ops.AlterColumnOp:
        if op.modify_name is not None:
            return op  # built from the exact model in _pair_renames
        column = self._exact_table(op.table_name).columns[op.column_name]
        op.existing_type = column.type
        op.existing_nullable = bool(column.nullable)
        op.existing_server_default = column.server_default
        op.existing_comment = column.comment
        return op

    def _exact_drop(self, op: ops.MigrateOperation) -> ops.MigrateOperation:
        """Rebuild a drop op from the exact model so that its reverse is faithful."""
        if isinstance(op, ops.DropColumnOp):
            state = capture_column(self._exact_table(op.table_name).columns[op.column_name])
            column = build_column(state, sqlite_safe=False)
            return ops.DropColumnOp.from_column_and_tablename(None, op.table_name, column)
        if isinstance(op, ops.DropIndexOp):
            for index in self._exact_table(str(op.table_name)).indexes:
                if str(index.name) == str(op.index_name):
                    return ops.DropIndexOp.from_index(index)
            return op
        if isinstance(op, ops.DropConstraintOp):
            table = op.table_name
            constraint = self._exact_constraint(table, op.to_constraint())
            if constraint_name(constraint) is None:
                constraint = _with_name(
                    constraint,
                    postgres_default_name(
                        table, _constraint_kind(constraint), _constraint_columns(constraint)
                    ),
                )
            return ops.DropConstraintOp.from_constraint(constraint)
        return op

    def _named_add(self, table: str, op: ops.AddConstraintOp) -> ops.MigrateOperation:
        constraint = op.to_constraint()
        if constraint_name(constraint) is not None:
            return op
        kind = _constraint_kind(constraint)
        named = _with_name(
            constraint, postgres_default_name(table, kind, _constraint_columns(constraint))
        )
        return ops.AddConstraintOp.from_constraint(named)


def _with_name(constraint: sa.Constraint, name: str | None) -> sa.Constraint:
    """A copy of ``constraint``, on a scratch copy of its table, carrying ``name``."""
    state = capture_constraint(constraint)
    assert state is not None
    state.name = name
    table = constraint.table
    columns = [sa.Column(c.name, c.type, nullable=c.nullable) for c in table.columns]
    metadata = sa.MetaData()
    scratch = sa.Table(table.name, metadata, *columns)
    for reference in state.referred:  # a foreign key needs its target to resolve
        target_name, column_name = reference.rsplit(".", 1)
        target = metadata.tables.get(target_name)
        if target is None:
            target = sa.Table(target_name, metadata)
        if column_name not in target.c:
            target.append_column(sa.Column(column_name, sa.Integer()))
    built = build_constraint(state, False, {})
    assert built is not None
    scratch.append_constraint(built)
    return built


def _create_table_op(table: sa.Table) -> ops.CreateTableOp:
    """``create_table`` for a desired table, rebuilt from the model of it.

    Column-level CHECK constraints become table-level ones (Alembic renders only those),
    and unnamed UNIQUE / FOREIGN KEY constraints get the names PostgreSQL would give them,
    so that a later revision can drop them by name on PostgreSQL and SQLite alike.
    """
    state = capture_table(table)
    for constraint in state.constraints:
        if constraint.name is None and constraint.kind in ("unique", "foreign_key"):
            constraint.name = postgres_default_name(table.name, constraint.kind, constraint.columns)
    items: list[Any] = [build_column(c, False) for c in state.columns.values()]
    for constraint in sorted_constraints(state.constraints):
        items.append(build_constraint(constraint, False, {}))
    return ops.CreateTableOp(
        table.name,
        items,
        comment=table.comment,
        info=dict(table.info),
        **table.kwargs,
    )


def _sort_name(op: ops.MigrateOperation) -> tuple[str, str]:
    """Sort key within a table: by kind, then name; added and altered columns keep the
    column order of the desired table (the sort is stable)."""
    if isinstance(op, (ops.AddColumnOp, ops.AlterColumnOp)):
        return (type(op).__name__, "")
    if isinstance(op, ops.DropColumnOp):
        return ("", op.column_name)
    name = getattr(op, "index_name", None) or getattr(op, "constraint_name", None)
    if name is None and isinstance(op, ops.AddConstraintOp):
        constraint = op.to_constraint()
        name = constraint_name(constraint) or "_".join(_constraint_columns(constraint))
    return (type(op).__name__, str(name or ""))


def reverse_op(op: ops.MigrateOperation) -> ops.MigrateOperation:
    if isinstance(op, ops.AlterColumnOp) and op.modify_name is not None:
        reverse = op.reverse()
        assert isinstance(reverse, ops.AlterColumnOp)
        reverse.column_name = op.modify_name
        reverse.modify_name = op.column_name
        return reverse
    return op.reverse()


def _narrowing(old: TypeEngine[Any], new: TypeEngine[Any]) -> str | None:
    """Why changing ``old`` to ``new`` can lose data, or None when it cannot."""
    old_sql, new_sql = type_sql(old, PG), type_sql(new, PG)
    if isinstance(old, sa.String) and isinstance(new, sa.String):
        if isinstance(old, sa.Enum) and isinstance(new, sa.Enum):
            lost = [v for v in old.enums if v not in new.enums]
            if lost:
                return f"removing values {lost} from the enum"
        if new.length is not None and (old.length is None or new.length < old.length):
            return f"narrowing the type from {old_sql} to {new_sql}"
        return None
    if isinstance(old, sa.Numeric) and isinstance(new, sa.Numeric):
        op_, os_, np_, ns_ = old.precision, old.scale or 0, new.precision, new.scale or 0
        if ns_ < os_ or (np_ is not None and (op_ is None or np_ - ns_ < op_ - os_)):
            return f"narrowing the type from {old_sql} to {new_sql}"
        return None
    if isinstance(old, sa.Integer) and isinstance(new, sa.Integer):
        rank = {sa.SmallInteger: 0, sa.Integer: 1, sa.BigInteger: 2}
        if rank.get(type(new), 1) < rank.get(type(old), 1):
            return f"narrowing the type from {old_sql} to {new_sql}"
        return None
    if _type_kind(old) is _type_kind(new):
        return None
    return f"changing the type from {old_sql} to {new_sql}"


def _type_kind(type_: TypeEngine[Any]) -> type:
    """The most general SQLAlchemy type class ``type_`` is an instance of (``DateTime`` for
    PostgreSQL's ``TIMESTAMP``, ``String`` for ``Text``); that of the type a user's
    ``TypeDecorator`` decorates; a user's own type class."""
    general = [c for c in type(type_).__mro__ if issubclass(c, TypeEngine) and c not in _BASES]
    kind = general[-1] if general else type(type_)
    if isinstance(type_, sa.TypeDecorator) and issubclass(kind, sa.TypeDecorator):
        return _type_kind(type_.impl_instance)
    return kind


def destructive_changes(upgrade: Sequence[ops.MigrateOperation]) -> list[DestructiveChange]:
    problems: list[DestructiveChange] = []
    for op in upgrade:
        if isinstance(op, ops.DropTableOp):
            problems.append(DestructiveChange("drop_table", op.table_name))
        elif isinstance(op, ops.DropColumnOp):
            problems.append(DestructiveChange("drop_column", op.table_name, op.column_name))
        elif (
            isinstance(op, ops.AlterColumnOp)
            and op.modify_type is not None
            and op.existing_type is not None
        ):
            reason = _narrowing(op.existing_type, op.modify_type)
            if reason is not None:
                column = op.modify_name or op.column_name
                problems.append(DestructiveChange("narrow", op.table_name, column, reason))
    return problems
