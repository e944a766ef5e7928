"""`cloudretail replay`: rebuild a service's database from the events its topics retain.

The database is created when missing and migrated to head; then every retained event of the
topics the service consumes, up to the ends found at the start, goes through the service's
consumer (its handlers and the claim in `processed_events`) into it. An event already in the
database is skipped, so an interrupted replay is finished by running it again. Nothing is
written to the broker; events the handlers publish stay in the new database's outbox, and
would go out if that database went live (the report counts them).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.db import Database, normalize_database_url
from cloudretail.runtime.events.consumer import Handler
from cloudretail.runtime.events.kafka import KafkaSettings, tls_context
from cloudretail.runtime.events.registry import EventRegistry
from cloudretail.runtime.events.replay import (
    EventReplay,
    ReplayReport,
    ReplayStalled,
    TopicProgress,
)
from cloudretail.runtime.events.tables import outbox
from cloudretail.runtime.events.transport import BrokerUnavailable
from cloudretail.runtime.migrate import (
    DatabaseUnreachableError,
    MigrationError,
    migrate,
    project_imports,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


class ReplayError(RuntimeError):
    """The replay cannot start or finish; the message says why."""


class ReplayUnreachableError(ReplayError):
    """The broker or the database did not answer: the machine or the network, not the input."""


@dataclass(frozen=True)
class ReplayTarget:
    """Which service to replay and where: its app module (which names its event handlers),
    its migrations and the database to fill."""

    service: str
    app_module: str
    ini: Path
    database_url: str


@dataclass(frozen=True)
class ServiceReplayReport:
    events: ReplayReport
    database: str  # the URL, password masked
    head: str  # the migration revision the database is at
    unsent: int  # events the handlers published, waiting in the database's outbox


def database_url(raw: str) -> URL:
    """The URL of the database to fill, or ReplayError saying what is wrong with it."""
    try:
        url = normalize_database_url(raw)
    except (ArgumentError, ValueError):
        raise ReplayError(
            "--database-url is not a database URL; give e.g. "
            "postgresql://user@host/name or sqlite:///path/to/file.db"
        ) from None
    backend = url.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ReplayError(
            f"--database-url names a {backend} database; services run on postgresql or sqlite"
        )
    if backend == "sqlite" and url.database in (None, "", ":memory:"):
        raise ReplayError(
            "--database-url is an in-memory SQLite database, gone when the replay ends; "
            "give a file, e.g. sqlite:///rebuilt.db"
        )
    return url


def consumer_of(target: ReplayTarget) -> tuple[EventRegistry, Mapping[str, Handler]]:
    """The event registry and handlers the service's app wires into its consumer."""
    try:
        with project_imports(target.ini):
            module: Any = importlib.import_module(target.app_module)
    except ImportError as error:
        raise ReplayError(f"cannot load {target.app_module}: {error}") from None
    if not hasattr(module, "event_handlers") or not hasattr(module, "REGISTRY"):
        raise ReplayError(
            f"{target.app_module} names no event handlers; run `cloudretail generate`"
        )
    return module.REGISTRY, module.event_handlers()


async def _unsent(database: Database) -> int:
    async with database.engine.connect() as connection:
        has_outbox = await connection.run_sync(lambda sync: sa.inspect(sync).has_table(outbox.name))
        if not has_outbox:
            return 0
        query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
        return int(await connection.scalar(query) or 0)


async def _replay(
    target: ReplayTarget,
    url: URL,
    replay: EventReplay,
    progress: Callable[[tuple[TopicProgress, ...]], None] | None,
) -> ServiceReplayReport:
    safe = url.render_as_string(hide_password=True)
    try:
        await replay.open()
    except BrokerUnavailable as error:
        raise ReplayUnreachableError(str(error)) from None
    try:
        head = await asyncio.to_thread(migrate, target.ini, target.database_url)
    except MigrationError as error:
        await replay.close()
        if isinstance(error, DatabaseUnreachableError):
            raise ReplayUnreachableError(str(error)) from None
        raise ReplayError(str(error)) from None
    database = Database(url, pool_size=3)
    try:
        events = await replay.run(database, progress)
        unsent = await _unsent(database)
    except ReplayStalled as error:
        raise ReplayError(str(error)) from None
    except (SQLAlchemyError, OSError) as error:
        raise ReplayError(
            f"the database at {safe} failed: {type(error).__name__}: {error}"
        ) from None
    finally:
        await replay.close()
        await database.dispose()
    return ServiceReplayReport(events=events, database=safe, head=head, unsent=unsent)


def replay_service(
    target: ReplayTarget,
    *,
    bootstrap_servers: str | None = None,
    progress: Callable[[tuple[TopicProgress, ...]], None] | None = None,
    stall_timeout: float = 60.0,
) -> ServiceReplayReport:
    """Rebuild `target`'s database from Kafka at `bootstrap_servers` (default:
    KAFKA_BOOTSTRAP_SERVERS, else the local broker; TLS with KAFKA_CA_FILE)."""
    url = database_url(target.database_url)
    registry, handlers = consumer_of(target)
    if not handlers:
        raise ReplayError(f"{target.service} consumes no events: there is nothing to replay")
    settings = KafkaSettings()
    try:
        tls = tls_context(settings.kafka_ca_file)
    except OSError as error:
        raise ReplayError(f"KAFKA_CA_FILE={settings.kafka_ca_file}: {error}") from None
    replay = EventReplay(
        registry,
        handlers,
        service=target.service,
        bootstrap_servers=(
            bootstrap_servers or settings.kafka_bootstrap_servers or DEFAULT_BOOTSTRAP
        ),
        tls=tls,
        stall_timeout=stall_timeout,
    )
    return asyncio.run(_replay(target, url, replay, progress))
