"""Run a service's Alembic migrations against a database URL.

`python -m cloudretail.runtime.migrate` upgrades the databases it reads on stdin, one JSON
object per line (`{"name": ..., "ini": ..., "url": ...}`; on stdin, so passwords stay off
the process list), printing `<name> <head>` as each is done; on a failure it prints
`<name>: <error>` on stderr and exits 2. `cloudretail up` runs it so the supervisor, which
lives as long as the stack, never loads Alembic.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from cloudretail.runtime.db import normalize_database_url


def alembic_config(ini: Path, database_url: str) -> Config:
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    url = normalize_database_url(database_url).render_as_string(hide_password=False)
    # ConfigParser treats % as interpolation; a password may contain one.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _loaded_from(module: object, root: Path) -> bool:
    location = getattr(module, "__file__", None)
    if location is None:  # a namespace package: where its portions are
        return any(Path(p).resolve().parent == root for p in getattr(module, "__path__", ()))
    return Path(location).resolve().is_relative_to(root)


@contextlib.contextmanager
def project_imports(ini: Path) -> Iterator[None]:
    """While migrating, `import generated...` (and the `handlers` it imports) finds the
    project that holds `ini`, whoever runs it: the project's folder (the one above the
    package `ini` is in) comes first on sys.path, and any package of the same name already
    imported from elsewhere (another project, or the copy an installed CloudRetail ships)
    is set aside until the migration ends. Without this, the `cloudretail` command and
    other processes not started in the project's folder imported someone else's code."""
    root = ini.resolve().parent
    while (root / "__init__.py").exists():
        root = root.parent
    names = {path.name for path in root.iterdir() if (path / "__init__.py").exists()}
    set_aside = {
        name: module
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] in names and not _loaded_from(module, root)
    }
    for name in set_aside:
        del sys.modules[name]
    swapped = {name.partition(".")[0] for name in set_aside}
    path = list(sys.path)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path[:] = path
        if swapped:
            for name in [n for n in sys.modules if n.partition(".")[0] in swapped]:
                del sys.modules[name]
            sys.modules.update(set_aside)


def upgrade(ini: Path, database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision`, creating a SQLite file's folder when needed."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    with project_imports(ini):
        command.upgrade(alembic_config(ini, database_url), revision)


def downgrade(ini: Path, database_url: str, revision: str = "-1") -> None:
    with project_imports(ini):
        command.downgrade(alembic_config(ini, database_url), revision)


class MigrationError(RuntimeError):
    """A database could not be reached or upgraded; the message says which and why."""


class DatabaseUnreachableError(MigrationError):
    """The database server did not answer: the machine or the network, not the input."""


def create_database_if_missing(database_url: str) -> bool:
    """For PostgreSQL URLs, create the database when it does not exist yet (True if made)."""
    url = normalize_database_url(database_url)
    if url.get_backend_name() != "postgresql" or not url.database:
        return False
    import asyncio

    import asyncpg

    async def create() -> bool:
        admin = url.set(drivername="postgresql", database="postgres")
        dsn = admin.render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            exists = await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", url.database
            )
            if exists:
                return False
            name = str(url.database).replace('"', '""')
            await connection.execute(f'CREATE DATABASE "{name}"')
            return True
        finally:
            await connection.close()

    return asyncio.run(create())


def migrate(ini: Path, database_url: str) -> str:
    """Create the database if needed and upgrade it to head; return the head revision."""
    safe = normalize_database_url(database_url).render_as_string(hide_password=True)
    try:
        create_database_if_missing(database_url)
        upgrade(ini, database_url)
    except (OSError, TimeoutError) as error:
        raise DatabaseUnreachableError(f"cannot reach the database at {safe}: {error}") from error
    except Exception as error:
        raise MigrationError(f"upgrading {safe} failed: {type(error).__name__}: {error}") from error
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config(ini, database_url)).get_current_head())


def _main() -> int:
    for line in sys.stdin:
        if not line.strip():
            continue
        target = json.loads(line)
        try:
            head = migrate(Path(target["ini"]), target["url"])
        except MigrationError as error:
            print(f"{target['name']}: {error}", file=sys.stderr)
            return 2
        print(target["name"], head, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
