"""The two tables every event-using service database has: `outbox` and `processed_events`.

The generator emits identical definitions into each service's models and migrations; these
copies live on a private MetaData so the runtime can query them without importing a service.
Names and types here and there must stay identical.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()

# Events written in the same transaction as the state change they describe; the relay sends
# them in `seq` order and stamps `sent_at`. Rows are the durable record of what was published.
outbox = Table(
    "outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Uuid, nullable=False),
    Column("topic", String(255), nullable=False),
    Column("message_key", String(255), nullable=False),
    Column("event_type", String(255), nullable=False),
    Column("payload", Text, nullable=False),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("CURRENT_TIMESTAMP"),
    ),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("event_id", name="uq_outbox_event_id"),
    # The relay's query is "unsent, oldest first": sent_at IS NULL ORDER BY seq.
    Index("idx_outbox_unsent", "sent_at", "seq"),
)

# Ids of consumed events whose handler transaction committed: a redelivered event finds its
# id here and is skipped, so each event is applied at most once.
processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("event_type", String(255), nullable=False),
    Column(
        "processed_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("CURRENT_TIMESTAMP"),
    ),
)


async def create_event_tables(connection: AsyncConnection) -> None:
    """Create both tables if missing. For tests: services get them from their migrations."""
    await connection.run_sync(metadata.create_all)
