from __future__ import annotations

import sqlite3
from pathlib import Path

from cloudretail.cli import app
from cloudretail.generator import load_platform
from typer.testing import CliRunner

runner = CliRunner()


def test_migrate_upgrades_every_service_database(in_root: Path, tmp_path: Path):
    template = f"sqlite+aiosqlite:///{tmp_path}/{{database}}.db"
    result = runner.invoke(app, ["migrate", "--database-url-template", template])
    assert result.exit_code == 0, result.output
    owners = [
        service
        for service in load_platform(in_root / "spec" / "cloudretail.yaml").services
        if service.tables
    ]
    assert len(result.stdout.splitlines()) == len(owners)  # a line per service database
    tables = sqlite3.connect(tmp_path / "cloudretail_orders.db").execute(
        "SELECT name FROM sqlite_master WHERE type='table'"
    )
    assert {"orders", "alembic_version"} <= {row[0] for row in tables}
    again = runner.invoke(app, ["migrate", "order", "--database-url-template", template])
    assert again.exit_code == 0  # idempotent


def test_migrate_names_an_unreachable_database(in_root: Path):
    template = "postgresql://postgres@127.0.0.1:1/{database}"
    result = runner.invoke(app, ["migrate", "product", "--database-url-template", template])
    assert result.exit_code == 3  # the environment, not the input
    assert (
        "cannot reach the database at postgresql+asyncpg://postgres@127.0.0.1:1/" in result.stderr
    )
    assert "Traceback" not in result.output


def test_migrate_refuses_an_unknown_service(in_root: Path):
    result = runner.invoke(app, ["migrate", "prodcut"])
    assert result.exit_code == 2
    assert "unknown service prodcut" in result.stderr
