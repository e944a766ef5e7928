"""Run a service's Alembic migrations against a database URL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from runtime.db import normalize_database_url


def alembic_config(ini: Path, database_url: str) -> Config:
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    url = normalize_database_url(database_url).render_as_string(hide_password=False)
    # ConfigParser treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(ini: Path, database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`, creating a SQLite file's folder when needed."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(ini, database_url), revision)


def downgrade(ini: Path, database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(ini, database_url), revision)
