"""The notification service: one mail per order or payment event, over real SMTP.

Events reach the generated service through the runtime's consumer (on a MemoryBus in place
of Kafka) with the handlers its app wires; its mail relay delivers to a real SMTP server (the
local sink `cloudretail up` runs) on a loopback port. SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.events.broker import free_port
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.envelope import Event, EventMetadata
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.mail import mail_outbox
from cloudretail.runtime.mailsink import MailSink, ReceivedMail, received_mails

from generated.events import REGISTRY
from generated.services.notification.models import Notification, Recipient
from tests.services.commerce import capture_event_handlers, eventually
from tests.services.conftest import service_client

USER = "00000000-0000-4000-8000-0000000000aa"
STRANGER = "00000000-0000-4000-8000-0000000000bb"


def event(event_type: str, **data: Any) -> Event:
    return Event(
        type=event_type,
        data=REGISTRY.validate(event_type, data),
        metadata=EventMetadata(correlation_id="notification-test", service="test"),
    )


def ada() -> Event:
    return event("user.created", user_id=USER, email="ada@shop.test", role="customer")


class Harness:
    def __init__(self, client: httpx.AsyncClient, handlers: dict[str, Handler], mails: Path):
        self.client = client
        self.handlers = handlers
        self.mails = mails
        self.bus = MemoryBus()
        self.sent = 0

    @property
    def app(self) -> Any:
        return self.client.app  # type: ignore[attr-defined]

    async def deliver(self, *events: Event) -> EventConsumer:
        """Send the events, then run a consumer until it has seen each of them."""
        producer = self.bus.producer()
        for item in events:
            spec = REGISTRY.get(item.type)
            key = REGISTRY.key_of(item.type, item.data).encode()
            await producer.send(spec.topic, key, item.to_bytes())
        self.sent += len(events)
        consumer = EventConsumer(
            self.app.state.database,
            REGISTRY,
            self.bus.source("notification", consumer_topics(REGISTRY, self.handlers)),
            producer,
            service="notification",
            handlers=self.handlers,
            backoff_base=0.01,
        )
        await consumer.start()
        try:

            async def seen() -> bool:
                stats = consumer.stats
                return stats.applied + stats.duplicates + stats.dead_lettered >= len(events)

            await eventually(seen, 15, "the notification consumer handled the events")
        finally:
            await consumer.stop()
        assert consumer.stats.dead_lettered == 0
        return consumer

    async def rows(self, table: sa.Table) -> list[dict[str, Any]]:
        async with self.app.state.database.engine.connect() as connection:
            result = await connection.execute(sa.select(table))
            return [dict(row._mapping) for row in result]

    async def mails_arrived(self, count: int) -> list[ReceivedMail]:
        async def arrived() -> bool:
            return len(received_mails(self.mails)) >= count

        await eventually(arrived, 15, f"{count} mails at the SMTP sink")
        return received_mails(self.mails)


@pytest.fixture
async def notification(
    database_url: str,
    issuer: TokenIssuer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Harness]:
    port = free_port()
    sink = MailSink("127.0.0.1", port, tmp_path / "mail")
    await sink.start()
    handlers = capture_event_handlers(monkeypatch, "notification")
    try:
        async with service_client(
            "notification",
            database_url,
            issuer,
            smtp_url=f"smtp://127.0.0.1:{port}",
            mail_from="no-reply@shop.test",
        ) as client:
            yield Harness(client, handlers, tmp_path / "mail")
    finally:
        await sink.stop()


async def test_a_confirmed_order_sends_one_mail_even_when_redelivered(
    notification: Harness,
) -> None:
    order_id = str(uuid.uuid4())
    confirmed = event(
        "order.confirmed",
        order_id=order_id,
        user_id=USER,
        payment_id=str(uuid.uuid4()),
        total_amount="42.50",
    )
    await notification.deliver(ada())
    consumer = await notification.deliver(
        confirmed,
        confirmed,  # Kafka redelivers after a lost commit
    )
    assert (consumer.stats.applied, consumer.stats.duplicates) == (1, 1)
    mails = await notification.mails_arrived(1)
    assert len(mails) == 1
    mail = mails[0]
    assert mail.recipients == "ada@shop.test"
    assert mail.sender == "no-reply@shop.test"
    assert mail.subject == f"Your order {order_id[:8]} is confirmed"
    assert "42.50" in mail.body() and order_id in mail.body()

    # The same event through a fresh consumer group (a replay, say): still one mail.
    await notification.deliver(confirmed)
    rows = await notification.rows(mail_outbox)
    assert len(rows) == 1 and rows[0]["sent_at"] is not None
    assert rows[0]["message_key"] == str(confirmed.id)
    assert len(received_mails(notification.mails)) == 1
    recorded = await notification.rows(Notification.__table__)
    assert [(r["event_type"], r["status"], r["recipient"]) for r in recorded] == [
        ("order.confirmed", "queued", "ada@shop.test")
    ]


async def test_each_event_kind_renders_its_own_mail(notification: Harness) -> None:
    order_id = str(uuid.uuid4())
    await notification.deliver(ada())
    await notification.deliver(
        event("order.shipped", order_id=order_id, user_id=USER),
        event("order.cancelled", order_id=order_id, user_id=USER, reason="out of stock"),
        event(
            "payment.failed",
            payment_id=str(uuid.uuid4()),
            order_id=order_id,
            user_id=USER,
            reason="card declined",
        ),
    )
    mails = await notification.mails_arrived(3)
    subjects = sorted(mail.subject for mail in mails)
    ref = order_id[:8]
    assert subjects == sorted(
        [
            f"Your order {ref} has shipped",
            f"Your order {ref} was cancelled",
            f"The payment for order {ref} did not go through",
        ]
    )
    bodies = {mail.subject: mail.body() for mail in mails}
    assert "out of stock" in bodies[f"Your order {ref} was cancelled"]
    assert "card declined" in bodies[f"The payment for order {ref} did not go through"]
    assert len({mail.message_id for mail in mails}) == 3


async def test_an_address_change_and_an_unknown_user(notification: Harness) -> None:
    # One user's events share a partition: they arrive in order.
    await notification.deliver(
        event("user.created", user_id=USER, email="old@shop.test", role="customer"),
        event("user.updated", user_id=USER, fields={"email": "new@shop.test"}),
    )
    await notification.deliver(
        event("order.shipped", order_id=str(uuid.uuid4()), user_id=USER),
        event("order.shipped", order_id=str(uuid.uuid4()), user_id=STRANGER),
    )
    mails = await notification.mails_arrived(1)
    assert [mail.recipients for mail in mails] == ["new@shop.test"]
    statuses = {
        str(row["user_id"]): row["status"]
        for row in await notification.rows(Notification.__table__)
    }
    assert statuses == {USER: "queued", STRANGER: "no_address"}


async def test_erasure_forgets_the_address(notification: Harness, admin: dict[str, str]) -> None:
    await notification.deliver(ada())
    await notification.deliver(event("order.shipped", order_id=str(uuid.uuid4()), user_id=USER))
    await notification.mails_arrived(1)
    listed = await notification.client.get(
        "/api/notifications", params={"user_id": USER}, headers=admin
    )
    assert listed.status_code == 200, listed.text
    assert [item["event_type"] for item in listed.json()["items"]] == ["order.shipped"]

    # The spec's `pii` declarations: the address row goes, the record of the mail stays
    # without its recipient or its link to the person.
    await notification.deliver(event("user.deleted", user_id=USER))
    assert await notification.rows(Recipient.__table__) == []
    [row] = await notification.rows(Notification.__table__)
    assert row["recipient"] is None and row["user_id"] == uuid.UUID(int=0)
    assert row["event_type"] == "order.shipped"
    after = await notification.client.get(
        "/api/notifications", params={"user_id": USER}, headers=admin
    )
    assert after.json()["items"] == []


async def test_customers_may_not_list_notifications(
    notification: Harness, customer: dict[str, str]
) -> None:
    answer = await notification.client.get("/api/notifications", headers=customer)
    assert answer.status_code == 403
