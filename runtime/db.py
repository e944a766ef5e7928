"""Async SQLAlchemy engine and sessions for one service database (SQLite or PostgreSQL)."""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
from cloudretail.runtime.jsonenc import dumps
from fastapi import Depends, Request
from sqlalchemy import event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool, StaticPool

logger = logging.getLogger(__name__)

_SQLITE_MEMORY = {"", ":memory:"}

# Seconds a pooled PostgreSQL connection may rest before it is tested at checkout: a busy
# service reuses its connections within milliseconds and never pays for the test; one that
# rested through a server restart is found dead here instead of failing a request.
PING_AFTER_IDLE = 1.0
_RESTED_SINCE = "rested_since"


def normalize_database_url(url: str | URL) -> URL:
    """Pick the async driver for the URLs people actually paste.

    `postgres://` (Heroku and friends) and `postgresql://` become `postgresql+asyncpg://`;
    `sqlite://` becomes `sqlite+aiosqlite://`. A URL naming its driver is left alone.
    """
    if isinstance(url, str):
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        url = make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    if url.drivername == "postgresql+asyncpg" and "sslmode" in url.query:
        # asyncpg spells libpq's `sslmode` as `ssl`; passing it through would fail at connect.
        mode = url.query["sslmode"]
        url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": mode})
    return url


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database or ""
    in_memory = database in _SQLITE_MEMORY or url.query.get("mode") == "memory"
    # `file:` URIs say where they live in their own syntax; leave them to SQLite.
    if in_memory or database.startswith("file:"):
        return None
    return Path(database)


def insert_skipping_duplicates(table: sa.Table, dialect: str, key: str) -> sa.Insert:
    """An INSERT into `table` that leaves rows whose `key` is taken as they are (ON CONFLICT
    DO NOTHING: on PostgreSQL it also waits for a concurrent insert of the same key to commit
    or roll back, so two racing writers keep one row). PostgreSQL and SQLite only."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=[key])
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=[key])
    raise ValueError(f"no INSERT ... ON CONFLICT for {dialect}")


def upsert_newest(
    table: sa.Table,
    dialect: str,
    key: str,
    rows: list[dict[str, Any]],
    *,
    version: str,
    ascending: tuple[str, ...] = (),
) -> sa.Insert:
    """An INSERT of `rows` into `table` that, where a row's `key` is taken, writes the columns
    `rows` name only if the stored `version` is not newer than the new one (ON CONFLICT DO
    UPDATE), so a late or replayed write never rolls a newer one back; each column of
    `ascending` (a last-seen time, say) takes the greater of its stored and its new value
    either way. Columns `rows` do not name keep their value; every row names the same ones.
    PostgreSQL and SQLite only."""
    if dialect == "postgresql":
        statement: postgresql.Insert | sqlite.Insert = postgresql.insert(table).values(rows)
    elif dialect == "sqlite":
        statement = sqlite.insert(table).values(rows)
    else:
        raise ValueError(f"no INSERT ... ON CONFLICT for {dialect}")
    new = statement.excluded
    newer = table.c[version] <= new[version]
    values: dict[str, Any] = {}
    for name in rows[0]:
        if name == key:
            continue
        stored = table.c[name]
        if name in ascending:
            values[name] = sa.case(
                (sa.or_(stored.is_(None), new[name] > stored), new[name]), else_=stored
            )
        else:
            values[name] = sa.case((newer, new[name]), else_=stored)
    return statement.on_conflict_do_update(index_elements=[key], set_=values)


@dataclass(frozen=True)
class PoolStats:
    """Connection pool occupancy, for metrics. `size` is the configured steady-state size."""

    size: int
    checked_out: int
    overflow: int


def through_pooler(url: URL, pooler: str) -> URL:
    """`url` with its host (and port) those of `pooler` (`host` or `host:port`): the same
    user, password and database, reached through PgBouncer."""
    host, _, port = pooler.strip().rpartition(":") if ":" in pooler else (pooler.strip(), "", "")
    if not host or (port and not port.isdigit()):
        raise ValueError(f"DATABASE_POOLER must be host or host:port, not {pooler!r}")
    return url.set(host=host, port=int(port) if port else url.port)


def unique_statement_name() -> str:
    """A prepared statement's name no other client of a PgBouncer server connection uses."""
    return f"__asyncpg_{uuid.uuid4().hex}__"


def transaction_pooling_args() -> dict[str, Any]:
    """asyncpg behind PgBouncer in transaction mode: each transaction may run on another
    server connection, so a statement prepared by name in one may be missing in the next, or
    its name already taken there by another client. As SQLAlchemy's asyncpg dialect
    documents ("Prepared Statement Name with PGBouncer"): no statement cache, neither
    SQLAlchemy's (`prepared_statement_cache_size`) nor asyncpg's own (`statement_cache_size`,
    which also makes asyncpg re-prepare within an implicit transaction rather than trust
    PgBouncer to keep it on one server), and a unique name for each statement it prepares.
    The pool stays: a client connection to PgBouncer is cheap to keep, and the dialect's
    NullPool advice is about cached statements piling up, which these settings prevent."""
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": unique_statement_name,
    }


def tls_connect_args(url: URL, ca_file: str | None) -> dict[str, Any]:
    """asyncpg's arguments for PostgreSQL over TLS, verify-full: the certificate must chain
    to `ca_file` and name the host. Nothing for SQLite or without a CA file (plaintext)."""
    if ca_file is None or is_sqlite(url):
        return {}
    return {"ssl": ssl.create_default_context(cafile=ca_file)}


class Database:
    """An AsyncEngine plus its session factory, built from one URL."""

    def __init__(
        self,
        url: str | URL,
        *,
        pool_size: int = 15,
        max_overflow: int = 0,
        echo: bool = False,
        connect_timeout: float = 3.0,
        pool_timeout: float = 5.0,
        statement_timeout: float | None = None,
        json_serializer: Callable[[Any], str] = dumps,
        ca_file: str | None = None,
        pooler: str | None = None,
    ) -> None:
        """`connect_timeout`, `pool_timeout` (waiting for a free pooled connection) and
        `statement_timeout` (one statement's answer; None waits forever) are seconds and
        apply to PostgreSQL; past them the caller gets TimeoutError (a 503 in a service).
        With `ca_file`, PostgreSQL connections use TLS verified as libpq's verify-full does.
        With `pooler` (`host[:port]` of a PgBouncer in transaction mode), PostgreSQL
        connections go there, set up for transaction pooling (`transaction_pooling_args`).
        """
        self.url = normalize_database_url(url)
        self.pooled = pooler is not None and not is_sqlite(self.url)
        if pooler is not None and self.pooled:
            self.url = through_pooler(self.url, pooler)
        options: dict[str, Any] = {"echo": echo, "json_serializer": json_serializer}
        sqlite_file = _sqlite_file(self.url) if is_sqlite(self.url) else None
        if is_sqlite(self.url):
            if sqlite_file is not None:
                sqlite_file.parent.mkdir(parents=True, exist_ok=True)
            # sqlite3's timeout is its busy timeout: wait for a writer instead of failing.
            options["connect_args"] = {"timeout": 30}
        else:
            connect_args: dict[str, Any] = {"timeout": connect_timeout}
            connect_args.update(tls_connect_args(self.url, ca_file))
            if self.pooled:
                connect_args.update(transaction_pooling_args())
            if statement_timeout is not None:
                # asyncpg's default for every query on the connection, the pre-ping too: a
                # server that stops answering mid-request costs this long, then TimeoutError
                # (asyncpg cancels the statement on the server).
                connect_args["command_timeout"] = statement_timeout
            options.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                # A restarted PostgreSQL leaves dead sockets in the pool: a connection that
                # rested longer than `PING_AFTER_IDLE` is tested before use (the checkout
                # listener). SQLAlchemy's pool_pre_ping tests every checkout, three round
                # trips each (BEGIN, a ping, ROLLBACK): about a tenth of a busy service's CPU.
                pool_recycle=1800,
                connect_args=connect_args,
            )
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        # Objects stay usable after commit: in async code a lazy refresh would be an error.
        self.sessionmaker: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )
        self._checked_out = 0
        self._install_listeners(sqlite_file is not None)

    def _install_listeners(self, sqlite_file: bool) -> None:
        sync_engine = self.engine.sync_engine

        if is_sqlite(self.url):

            @event.listens_for(sync_engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
                cursor = dbapi_connection.cursor()
                # SQLite ignores foreign keys unless asked, per connection.
                cursor.execute("PRAGMA foreign_keys=ON")
                if sqlite_file:
                    # WAL lets readers work while one writer commits.
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

        dialect = sync_engine.dialect
        ping_rested = not is_sqlite(self.url)

        # Only pools without their own counters (StaticPool, NullPool) need the counting.
        @event.listens_for(sync_engine, "checkout")
        def _checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
            rested_since = record.info.pop(_RESTED_SINCE, None)
            if (
                ping_rested
                and rested_since is not None
                and time.monotonic() - rested_since > PING_AFTER_IDLE
            ):
                try:
                    dialect.do_ping(dbapi_connection)
                except Exception as error:
                    # The pool drops this connection and checks out another (or a new one).
                    raise exc.DisconnectionError(f"{type(error).__name__}: {error}") from error
            self._checked_out += 1

        @event.listens_for(sync_engine, "checkin")
        def _checkin(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info[_RESTED_SINCE] = time.monotonic()
            self._checked_out = max(0, self._checked_out - 1)

    @property
    def dialect_name(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, fit for logs."""
        return self.url.render_as_string(hide_password=True)

    async def ping(self) -> bool:
        """True when a connection answers `SELECT 1`; never raises, for health checks."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as error:
            logger.warning(
                "database ping failed",
                extra={"database": self.safe_url, "error": f"{type(error).__name__}: {error}"},
            )
            return False
        return True

    def pool_stats(self) -> PoolStats:
        pool = self.engine.sync_engine.pool
        if isinstance(pool, QueuePool):
            # overflow() starts at -pool_size; only connections beyond the size are overflow.
            return PoolStats(
                size=pool.size(), checked_out=pool.checkedout(), overflow=max(0, pool.overflow())
            )
        size = 1 if isinstance(pool, StaticPool) else 0
        return PoolStats(size=size, checked_out=self._checked_out, overflow=0)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: committed when the block ends, rolled back if it raises."""
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except Exception:
                await session.rollback()
                raise

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    """The app's Database (a dependency: `async def`, so FastAPI does not run it in a thread)."""
    return database_of(request)


def database_of(request: Request) -> Database:
    database = getattr(request.app.state, "database", None)
    if not isinstance(database, Database):
        raise RuntimeError(
            "no Database on app.state.database: build the app with create_service_app "
            "or set app.state.database yourself"
        )
    return database


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request, committed when the endpoint returns."""
    async with database_of(request).session() as session:
        yield session


# scope="function" ends the dependency before the response is sent, so a failing commit
# (say a unique violation) still becomes the response instead of a 200 for lost data.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
