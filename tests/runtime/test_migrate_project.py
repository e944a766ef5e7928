"""Migrations import the generated code of the project being migrated, wherever the process
runs from: a project outside the checkout (`cloudretail init`) migrates with the
`cloudretail` command and in process, and the checkout's own packages stay as they were."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from cloudretail.cli import app
from cloudretail.generator import generate
from cloudretail.runtime.migrate import upgrade
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


def _project(tmp_path: Path) -> Path:
    folder = tmp_path / "acme"
    made = CliRunner().invoke(app, ["init", str(folder), "--name", "acme"])
    assert made.exit_code == 0, made.output
    generate(
        folder / "spec" / "cloudretail.yaml",
        folder / "generated",
        handlers_dir=folder / "handlers",
    )
    return folder


def _tables(database: Path) -> set[str]:
    rows = sqlite3.connect(database).execute("SELECT name FROM sqlite_master WHERE type='table'")
    return {row[0] for row in rows}


def test_upgrade_imports_the_project_of_the_ini_and_restores_the_checkouts(tmp_path: Path):
    import generated.services.user.models  # the checkout's `generated`, as any test may

    checkout = sys.modules["generated"]
    project = _project(tmp_path)
    database = tmp_path / "catalog.db"
    upgrade(project / "generated" / "services" / "catalog" / "alembic.ini", f"sqlite:///{database}")
    assert {"items", "alembic_version"} <= _tables(database)
    assert sys.modules["generated"] is checkout
    assert "generated.services.catalog" not in sys.modules
    assert generated.services.user.models is sys.modules["generated.services.user.models"]


def test_the_cloudretail_command_migrates_a_project_outside_the_checkout(tmp_path: Path):
    project = _project(tmp_path)
    command = Path(sys.executable).parent / "cloudretail"
    template = f"sqlite+aiosqlite:///{tmp_path}/{{database}}.db"
    result = subprocess.run(
        [str(command), "migrate", "--database-url-template", template],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "items" in _tables(tmp_path / "acme_catalog.db")
