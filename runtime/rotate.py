"""Key rotation for encrypted columns: re-encrypt stored values under the ring's active key.

Runs beside the live service: each batch is one short transaction, and each row is updated
only if it still holds what was read (compare-and-set), so a value the service wrote in
the meantime, under its own ring, is never overwritten. Values without the `enc:v1:`
prefix (written before the column was encrypted) get encrypted. Rerunning continues where
a run stopped; with nothing left to do it returns zeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.crypto import PREFIX, EncryptionError, KeyRing, is_encrypted
from cloudretail.runtime.db import Database
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class EncryptedTable:
    """A table and its encrypted columns; a column's context is `"<name>.<column>"`."""

    name: str
    columns: tuple[str, ...]


class RotationError(Exception):
    """A stored value the ring cannot re-encrypt (or a table it cannot work on)."""

    def __init__(self, table: str, problem: str, primary_key: object = None) -> None:
        where = table if primary_key is None else f"{table} row {primary_key!r}"
        super().__init__(f"{where}: {problem}")
        self.table = table
        self.primary_key = primary_key
        self.problem = problem


@dataclass(frozen=True)
class _Plan:
    """One table, reflected: what to select and how to address a row."""

    spec: EncryptedTable
    table: sa.Table
    keys: tuple[sa.Column[Any], ...]
    columns: tuple[sa.Column[Any], ...]


async def rotate_keys(
    database_url: str,
    tables: Sequence[EncryptedTable],
    ring: KeyRing,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Re-encrypt every value of `tables` not under `ring.active`; rows done per table.

    `progress(table, count)` is called after each committed batch with the rows that batch
    re-encrypted. A value under a key the ring lacks, or a damaged one, raises
    RotationError and rolls that batch back (batches before it stay done).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    database = Database(database_url, pool_size=1, max_overflow=0)
    try:
        done: dict[str, int] = {}
        for spec in tables:
            plan = await _reflect(database.engine, spec)
            done[spec.name] = await _rotate_table(database.engine, plan, ring, batch_size, progress)
        return done
    finally:
        await database.dispose()


async def _reflect(engine: AsyncEngine, spec: EncryptedTable) -> _Plan:
    async with engine.connect() as connection:
        try:
            table = await connection.run_sync(
                lambda sync: sa.Table(spec.name, sa.MetaData(), autoload_with=sync)
            )
        except sa.exc.NoSuchTableError:
            raise RotationError(spec.name, "no such table") from None
    missing = [name for name in spec.columns if name not in table.c]
    if missing:
        raise RotationError(spec.name, f"no column {', '.join(missing)}")
    keys = tuple(table.primary_key.columns)
    if not keys:
        raise RotationError(spec.name, "has no primary key to update rows by")
    return _Plan(spec, table, keys, tuple(table.c[name] for name in spec.columns))


async def _rotate_table(
    engine: AsyncEngine, plan: _Plan, ring: KeyRing, batch_size: int, progress: Progress | None
) -> int:
    total = 0
    while True:
        async with engine.begin() as connection:
            found, updated = await _rotate_batch(connection, plan, ring, batch_size)
        if found == 0:
            return total
        total += updated
        if progress is not None:
            progress(plan.spec.name, updated)
        if updated == 0:
            # Every row found lost its compare-and-set: the service keeps writing them under
            # another ring. Stop rather than loop; a rerun picks them up.
            return total


async def _rotate_batch(
    connection: AsyncConnection, plan: _Plan, ring: KeyRing, batch_size: int
) -> tuple[int, int]:
    """(rows found needing work, rows updated) for one batch, in the caller's transaction."""
    rows = (await connection.execute(_pending(plan, ring, batch_size))).all()
    updated = 0
    for row in rows:
        key, old = tuple(row[: len(plan.keys)]), tuple(row[len(plan.keys) :])
        new = _rotated_values(plan, ring, key, old)
        updated += await _compare_and_set(connection, plan, key, old, new)
    return len(rows), updated


def _pending(plan: _Plan, ring: KeyRing, batch_size: int) -> sa.Select[Any]:
    """Rows with a non-null value not under the active key, by primary key. Compared with
    substr, not LIKE: `_` (allowed in key ids) is a LIKE wildcard, and SQLite's LIKE
    ignores case, so `k_1` would pass for `kx1` or `K_1`."""
    current = f"{PREFIX}{ring.active}:"
    stale = [
        sa.and_(column.is_not(None), sa.func.substr(column, 1, len(current)) != current)
        for column in plan.columns
    ]
    return (
        sa.select(*plan.keys, *plan.columns)
        .where(sa.or_(*stale))
        .order_by(*plan.keys)
        .limit(batch_size)
    )


def _rotated_values(
    plan: _Plan, ring: KeyRing, key: tuple[Any, ...], old: tuple[Any, ...]
) -> dict[str, str]:
    """The new value of each column that needs one."""
    new: dict[str, str] = {}
    for column, value in zip(plan.spec.columns, old, strict=True):
        if value is None or (isinstance(value, str) and ring.is_current(value)):
            continue
        try:
            new[column] = _reencrypted(ring, value, f"{plan.spec.name}.{column}")
        except EncryptionError as error:
            raise RotationError(plan.spec.name, str(error), _key_value(key)) from None
    return new


def _reencrypted(ring: KeyRing, value: object, context: str) -> str:
    """`value` under the active key: decrypted first when encrypted, as it is when not."""
    if not isinstance(value, str):
        raise EncryptionError(f"{context}: the column holds {type(value).__name__}, not text")
    plaintext = ring.decrypt(value, context) if is_encrypted(value) else value
    return ring.encrypt(plaintext, context)


async def _compare_and_set(
    connection: AsyncConnection,
    plan: _Plan,
    key: tuple[Any, ...],
    old: tuple[Any, ...],
    new: dict[str, str],
) -> int:
    """Write `new` if the row still holds `old`; 1 if it did, 0 if someone wrote it since."""
    unchanged = [
        column.is_not_distinct_from(value) for column, value in zip(plan.columns, old, strict=True)
    ]
    same_row = [column == value for column, value in zip(plan.keys, key, strict=True)]
    statement = sa.update(plan.table).where(*same_row, *unchanged).values(new)
    result = await connection.execute(statement)
    return 1 if result.rowcount else 0


def _key_value(key: tuple[Any, ...]) -> Any:
    """A single-column primary key as its value, a composite one as a tuple."""
    return key[0] if len(key) == 1 else key
