"""Key rotation on real SQLite files and PostgreSQL: values move to the active key, batch by
batch, resumably, without overwriting what the running service writes meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cloudretail.runtime.crypto import KeyRing
from cloudretail.runtime.db import Database
from cloudretail.runtime.rotate import EncryptedTable, RotationError, rotate_keys
from sqlalchemy import Column, Integer, MetaData, Table, Text, event, insert, select
from sqlalchemy.engine import Engine

from tests.runtime.conftest import unique_name

KEY_A = KeyRing.new_entry("a")
KEY_B = KeyRing.new_entry("b")
KEY_C = KeyRing.new_entry("c")
RING_A = KeyRing.parse(KEY_A)
RING_B = KeyRing.parse(KEY_B)
RING_C = KeyRing.parse(KEY_C)
RING_BA = KeyRing.parse(f"{KEY_B},{KEY_A}")

Rows = dict[int, tuple[str | None, str | None]]


class Secrets:
    """A scratch table `(id, secret, note)` with both text columns encrypted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = unique_name("secrets")
        self.table = Table(
            self.name,
            MetaData(),
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("secret", Text),
            Column("note", Text),
        )
        self.spec = EncryptedTable(self.name, ("secret", "note"))

    def context(self, column: str) -> str:
        return f"{self.name}.{column}"

    def seal(self, ring: KeyRing, column: str, plaintext: str | None) -> str | None:
        return None if plaintext is None else ring.encrypt(plaintext, self.context(column))

    async def create(self, rows: Rows) -> None:
        database = Database(self.url)
        try:
            async with database.engine.begin() as connection:
                await connection.run_sync(self.table.metadata.create_all)
                values = [{"id": key, "secret": s, "note": n} for key, (s, n) in rows.items()]
                if values:
                    await connection.execute(insert(self.table), values)
        finally:
            await database.dispose()

    async def stored(self) -> Rows:
        database = Database(self.url)
        try:
            async with database.engine.connect() as connection:
                result = await connection.execute(select(self.table).order_by(self.table.c.id))
                return {key: (secret, note) for key, secret, note in result.all()}
        finally:
            await database.dispose()

    def opened(self, rows: Rows, ring: KeyRing) -> Rows:
        """Every value decrypted with `ring`: fails unless each is under one of its keys."""
        return {
            key: (self._open(ring, "secret", secret), self._open(ring, "note", note))
            for key, (secret, note) in rows.items()
        }

    def _open(self, ring: KeyRing, column: str, value: str | None) -> str | None:
        return None if value is None else ring.decrypt(value, self.context(column))

    async def drop(self) -> None:
        database = Database(self.url)
        try:
            async with database.engine.begin() as connection:
                await connection.run_sync(self.table.metadata.drop_all)
        finally:
            await database.dispose()


@pytest.fixture
async def secrets(database_url: str) -> AsyncIterator[Secrets]:
    table = Secrets(database_url)
    yield table
    await table.drop()


def recorder() -> tuple[list[tuple[str, int]], Callable[[str, int], None]]:
    calls: list[tuple[str, int]] = []
    return calls, lambda table, count: calls.append((table, count))


async def test_rotation_moves_every_value_to_the_active_key(secrets: Secrets) -> None:
    def a(column: str, plaintext: str) -> str | None:
        return secrets.seal(RING_A, column, plaintext)

    def b(column: str, plaintext: str) -> str | None:
        return secrets.seal(RING_B, column, plaintext)

    rows: Rows = {
        1: (a("secret", "s1"), a("note", "n1")),
        2: ("legacy plaintext", None),
        3: (None, None),
        4: (a("secret", "s4"), None),
        5: (None, a("note", "n5")),
        6: (b("secret", "s6"), a("note", "n6")),  # half done already
        7: (b("secret", "s7"), None),  # done already
    }
    await secrets.create(rows)
    calls, progress = recorder()

    done = await rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2, progress=progress)

    assert done == {secrets.name: 5}
    assert calls == [(secrets.name, 2), (secrets.name, 2), (secrets.name, 1)]
    after = await secrets.stored()
    # Only B's key opens them now, and each holds what it held before.
    assert secrets.opened(after, RING_B) == {
        1: ("s1", "n1"),
        2: ("legacy plaintext", None),
        3: (None, None),
        4: ("s4", None),
        5: (None, "n5"),
        6: ("s6", "n6"),
        7: ("s7", None),
    }
    assert after[3] == (None, None)
    # Values already under B are left as they are, not re-encrypted.
    assert after[6][0] == rows[6][0]
    assert after[7] == rows[7]
    assert "legacy plaintext" not in str(after)


async def test_a_second_run_has_nothing_to_do(secrets: Secrets) -> None:
    await secrets.create({1: (secrets.seal(RING_A, "secret", "s1"), None), 2: (None, None)})
    assert await rotate_keys(secrets.url, [secrets.spec], RING_BA) == {secrets.name: 1}
    before = await secrets.stored()
    calls, progress = recorder()

    again = await rotate_keys(secrets.url, [secrets.spec], RING_BA, progress=progress)

    assert again == {secrets.name: 0}
    assert calls == []
    assert await secrets.stored() == before


@pytest.mark.parametrize("bad", ["unknown key", "damaged"])
async def test_a_value_the_ring_cannot_open_stops_the_run_and_rolls_its_batch_back(
    secrets: Secrets, bad: str
) -> None:
    damaged = secrets.seal(RING_A, "secret", "very-private-2")
    assert damaged is not None
    unreadable = (
        secrets.seal(RING_C, "secret", "very-private-2")
        if bad == "unknown key"
        else damaged[:-8] + "AAAAAAAA"
    )
    rows: Rows = {
        1: (secrets.seal(RING_A, "secret", "s1"), "plain note"),
        2: (unreadable, None),
        3: (secrets.seal(RING_A, "secret", "s3"), None),
    }
    await secrets.create(rows)

    with pytest.raises(RotationError) as caught:
        await rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2)

    assert caught.value.table == secrets.name
    assert caught.value.primary_key == 2
    assert str(caught.value).startswith(f"{secrets.name} row 2: {secrets.name}.secret: ")
    assert "very-private" not in str(caught.value)
    assert await secrets.stored() == rows


async def test_an_interrupted_run_keeps_its_done_batches_and_a_rerun_finishes(
    secrets: Secrets,
) -> None:
    rows: Rows = {key: (secrets.seal(RING_A, "secret", f"s{key}"), None) for key in range(1, 6)}
    await secrets.create(rows)

    class Interrupted(Exception):
        pass

    def stop(table: str, count: int) -> None:
        raise Interrupted

    with pytest.raises(Interrupted):
        await rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2, progress=stop)

    after = await secrets.stored()
    assert [RING_BA.key_of(after[key][0] or "") for key in range(1, 6)] == ["b", "b", "a", "a", "a"]
    assert {key: after[key] for key in (3, 4, 5)} == {key: rows[key] for key in (3, 4, 5)}

    calls, progress = recorder()
    done = await rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2, progress=progress)

    assert done == {secrets.name: 3}
    assert calls == [(secrets.name, 2), (secrets.name, 1)]
    assert secrets.opened(await secrets.stored(), RING_B) == {
        key: (f"s{key}", None) for key in range(1, 6)
    }


@contextmanager
def service_writes(table: str, write: Callable[[], str], times: int) -> Iterator[None]:
    """Before the rotation's UPDATEs of `table` (the first `times`), another statement
    changes the row the way the running service would, in between the read and the write."""
    left = [times]

    def before(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
        if left[0] and statement.lstrip().upper().startswith("UPDATE") and table in statement:
            left[0] -= 1
            cursor.execute(write())

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", before)


async def test_a_row_the_service_writes_meanwhile_is_not_overwritten(secrets: Secrets) -> None:
    rows: Rows = {key: (secrets.seal(RING_A, "secret", f"s{key}"), None) for key in range(1, 4)}
    await secrets.create(rows)
    newer = secrets.seal(RING_B, "secret", "written by the service")

    def write() -> str:
        return f"UPDATE {secrets.name} SET secret = '{newer}' WHERE id = 1"

    with service_writes(secrets.name, write, times=1):
        done = await rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2)

    assert done == {secrets.name: 2}
    after = await secrets.stored()
    assert after[1] == (newer, None)
    assert secrets.opened(after, RING_B) == {
        1: ("written by the service", None),
        2: ("s2", None),
        3: ("s3", None),
    }


async def test_rows_the_service_keeps_rewriting_under_the_old_key_end_the_run(
    secrets: Secrets,
) -> None:
    rows: Rows = {key: (secrets.seal(RING_A, "secret", f"s{key}"), None) for key in (1, 2)}
    await secrets.create(rows)

    def write() -> str:
        value = secrets.seal(RING_A, "secret", "rewritten")
        return f"UPDATE {secrets.name} SET secret = '{value}' WHERE id = 1"

    calls, progress = recorder()
    with service_writes(secrets.name, write, times=1000):
        done = await asyncio.wait_for(
            rotate_keys(secrets.url, [secrets.spec], RING_BA, batch_size=2, progress=progress),
            timeout=20,
        )

    assert done == {secrets.name: 1}
    assert calls == [(secrets.name, 1), (secrets.name, 0)]
    after = await secrets.stored()
    assert RING_BA.key_of(after[1][0] or "") == "a"
    assert secrets.opened({2: after[2]}, RING_B) == {2: ("s2", None)}


async def test_key_ids_are_compared_exactly_not_as_like_patterns(secrets: Secrets) -> None:
    # `_` is a LIKE wildcard and SQLite's LIKE ignores case: neither may pass for k_1.
    entries = {key_id: KeyRing.new_entry(key_id) for key_id in ("k_1", "kx1", "K_1")}
    ring = KeyRing.parse(",".join(entries.values()))
    rows: Rows = {
        1: (secrets.seal(KeyRing.parse(entries["kx1"]), "secret", "s1"), None),
        2: (secrets.seal(KeyRing.parse(entries["K_1"]), "secret", "s2"), None),
    }
    await secrets.create(rows)

    done = await rotate_keys(secrets.url, [secrets.spec], ring)

    assert done == {secrets.name: 2}
    after = await secrets.stored()
    assert [ring.key_of(after[key][0] or "") for key in (1, 2)] == ["k_1", "k_1"]
    assert secrets.opened(after, KeyRing.parse(entries["k_1"])) == {
        1: ("s1", None),
        2: ("s2", None),
    }


async def test_a_missing_table_or_column_is_named(secrets: Secrets) -> None:
    await secrets.create({})
    with pytest.raises(RotationError, match="nowhere: no such table"):
        await rotate_keys(secrets.url, [EncryptedTable("nowhere", ("secret",))], RING_BA)
    with pytest.raises(RotationError, match=f"{secrets.name}: no column missing"):
        await rotate_keys(
            secrets.url, [EncryptedTable(secrets.name, ("secret", "missing"))], RING_BA
        )
