"""The event bus keeps a fetched batch at once: one audit-log statement and transaction,
one store round trip; a redelivered event (in the batch or later) is kept once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database
from cloudretail.runtime.eventbus import EventBus, MemoryEventStore, audit_log
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.transport import Message

from generated.events import REGISTRY


def _message(event: Event, offset: int) -> Message:
    return Message("order-events", 0, offset, None, event.to_bytes())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_batch_is_kept_once_each(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = (
        request.getfixturevalue("postgres_url")
        if backend == "postgresql"
        else f"sqlite+aiosqlite:///{tmp_path}/events.db"
    )
    database = Database(url)
    async with database.engine.begin() as connection:
        await connection.run_sync(audit_log.metadata.drop_all)
        await connection.run_sync(audit_log.metadata.create_all)
    store = MemoryEventStore(retention=3600)
    settings = ServiceSettings(service_name="eventbus", port=4000, database_url=url)
    bus = EventBus(settings, REGISTRY, ["order-events"], store)
    bus.database = database
    correlation = f"corr-{uuid.uuid4().hex[:8]}"
    events = [
        Event(
            type="order.cancelled",
            data={"order_id": str(uuid.uuid4()), "reason": "test"},
            metadata=EventMetadata(correlation_id=correlation, service="order"),
        )
        for _ in range(3)
    ]
    try:
        # The first event twice in one batch, a message that is no event, then a redelivery.
        batch = [_message(e, i) for i, e in enumerate(events)]
        await bus.record(
            [*batch, _message(events[0], 3), Message("order-events", 0, 4, None, b"{")]
        )
        await bus.record([_message(events[1], 5)])
        async with database.engine.connect() as connection:
            rows = (
                await connection.execute(
                    sa.select(audit_log.c.event_id).where(audit_log.c.correlation_id == correlation)
                )
            ).all()
        assert sorted(str(row[0]) for row in rows) == sorted(str(e.id) for e in events)
        for event in events:
            kept = await store.get(str(event.id))
            assert kept is not None and kept["topic"] == "order-events"
    finally:
        await database.dispose()
