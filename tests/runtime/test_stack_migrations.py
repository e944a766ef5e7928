"""`up` migrates the stack's databases in a child process (`python -m cloudretail.runtime.migrate`), so
the supervisor that stays up with the stack never loads Alembic: what it reports, and how a
database that cannot be migrated is named."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cloudretail.runtime.stack import StackError, migrate_all
from cloudretail.runtime.stackplan import PlannedDatabase, StackPlan

ROOT = Path(__file__).resolve().parents[2]


def _plan(tmp_path: Path, *databases: PlannedDatabase) -> StackPlan:
    return StackPlan(
        platform="cloudretail",
        data_dir=str(tmp_path),
        broker=None,
        bootstrap="127.0.0.1:9092",
        redis_url=None,
        processes=(),
        databases=databases,
        topics=(),
        gateway="http://127.0.0.1:8080",
        token_issuer=None,
    )


def _ini(service: str) -> str:
    return str(ROOT / "generated" / "services" / service / "alembic.ini")


async def test_each_database_is_upgraded_and_reported(tmp_path: Path) -> None:
    said: list[str] = []
    files = {name: tmp_path / f"{name}.db" for name in ("product", "payment")}
    plan = _plan(
        tmp_path,
        *(
            PlannedDatabase(name=name, ini=_ini(name), url=f"sqlite+aiosqlite:///{path}")
            for name, path in files.items()
        ),
    )
    await migrate_all(plan, said.append)
    assert said[0] == "migrating product, payment ..."
    assert [line.split(" to ")[0] for line in said[1:]] == ["migrated product", "migrated payment"]
    tables = sqlite3.connect(files["payment"]).execute("SELECT name FROM sqlite_master")
    assert "payments" in {row[0] for row in tables}


async def test_a_database_that_cannot_be_reached_is_named(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        PlannedDatabase(
            name="product",
            ini=_ini("product"),
            url="postgresql://postgres@127.0.0.1:1/cloudretail_nowhere",
        ),
    )
    with pytest.raises(StackError, match="product: cannot reach the database at"):
        await migrate_all(plan, lambda _line: None)
