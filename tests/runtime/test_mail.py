"""The mail outbox and its relay, against a real SMTP server on loopback (the local sink)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cloudretail.generator import load_platform
from cloudretail.generator.stack import StackOptions
from cloudretail.generator.stack import plan as stack_plan
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.broker import free_port
from cloudretail.runtime.mail import (
    MailError,
    MailRelay,
    SmtpServer,
    create_mail_tables,
    mail_outbox,
    message_id,
    queue_mail,
)
from cloudretail.runtime.mailsink import MailSink, received_mails
from pydantic import ValidationError

from tests.servers import drop_database, fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/mail.db"
        if request.param == "sqlite"
        else fresh_database("cloudretail_test_mail")
    )
    db = Database(url)
    async with db.engine.begin() as connection:
        await create_mail_tables(connection)
    try:
        yield db
    finally:
        await db.dispose()
        if request.param == "postgres":
            drop_database(url)


async def _queue(db: Database, key: str, to: str = "ada@shop.test") -> bool:
    async with db.sessionmaker() as session, session.begin():
        return await queue_mail(session, key=key, to=to, subject="Hello", body="Hi there.\n")


async def _rows(db: Database) -> list[sa.Row[tuple[object, ...]]]:
    async with db.engine.connect() as connection:
        return list(await connection.execute(sa.select(mail_outbox).order_by(mail_outbox.c.seq)))


async def test_queuing_a_key_twice_keeps_one_mail(database: Database) -> None:
    assert await _queue(database, "event-1") is True
    assert await _queue(database, "event-1") is False
    assert await _queue(database, "event-2") is True
    assert [row.message_key for row in await _rows(database)] == ["event-1", "event-2"]


async def test_a_rolled_back_transaction_queues_nothing(database: Database) -> None:
    async with database.sessionmaker() as session:
        await queue_mail(session, key="k", to="ada@shop.test", subject="s", body="b")
        await session.rollback()
    assert await _rows(database) == []


@pytest.mark.parametrize(
    ("to", "subject"),
    [
        ("", "s"),
        ("a@b.test\r\nBcc: x@y.test", "s"),
        ("a@b.test, c@d.test", "s"),
        ("a@b.test", "two\nlines"),
    ],
)
async def test_header_injection_is_refused(database: Database, to: str, subject: str) -> None:
    async with database.sessionmaker() as session:
        with pytest.raises(MailError):
            await queue_mail(session, key="k", to=to, subject=subject, body="b")


async def test_the_relay_sends_waits_out_an_outage_and_keeps_the_message_id(
    database: Database, tmp_path: Path
) -> None:
    port = free_port()
    server = SmtpServer.from_url(f"smtp://127.0.0.1:{port}")
    relay = MailRelay(database, server, "no-reply@shop.test")
    await _queue(database, "event-1")

    # Nobody listens: the mail waits, with the error and a later attempt recorded.
    assert await relay.send_pending() == 0
    assert relay.healthy is False
    [row] = await _rows(database)
    assert row.sent_at is None and row.attempts == 1
    assert row.last_error and row.next_attempt_at is not None
    async with database.engine.begin() as connection:  # due again now
        await connection.execute(sa.update(mail_outbox).values(next_attempt_at=None))

    sink = MailSink("127.0.0.1", port, tmp_path / "mail")
    await sink.start()
    try:
        assert await relay.send_pending() == 1
        assert await relay.send_pending() == 0  # stamped: not sent again
    finally:
        await sink.stop()
    assert relay.healthy is True
    [mail] = received_mails(tmp_path / "mail")
    assert mail.recipients == "ada@shop.test" and mail.subject == "Hello"
    assert mail.message_id == message_id("event-1", "no-reply@shop.test")
    assert mail.body().strip() == "Hi there."
    [row] = await _rows(database)
    assert row.sent_at is not None and row.attempts == 2


async def test_a_mail_not_yet_due_is_left_alone(database: Database, tmp_path: Path) -> None:
    port = free_port()
    relay = MailRelay(database, SmtpServer.from_url(f"smtp://127.0.0.1:{port}"), "n@shop.test")
    await _queue(database, "event-1")
    await relay.send_pending()  # fails: the retry is seconds away
    sink = MailSink("127.0.0.1", port, tmp_path / "mail")
    await sink.start()
    try:
        assert await relay.send_pending() == 0
    finally:
        await sink.stop()
    assert received_mails(tmp_path / "mail") == []


def test_smtp_urls() -> None:
    plain = SmtpServer.from_url("smtp://mailer:s%40cret@mail.example:587")
    assert (plain.host, plain.port, plain.use_tls) == ("mail.example", 587, False)
    assert (plain.username, plain.password) == ("mailer", "s@cret")
    assert plain.safe_url == "smtp://mailer:***@mail.example:587"
    assert SmtpServer.from_url("smtps://mail.example").port == 465
    for bad in ("http://mail.example", "smtp://", "smtp://mail.example:99999"):
        with pytest.raises(ValueError):
            SmtpServer.from_url(bad)


BASE: dict[str, object] = {
    "service_name": "n",
    "port": 3999,
    "database_url": "sqlite+aiosqlite:///:memory:",
}


def test_settings_refuse_a_bad_smtp_url() -> None:
    with pytest.raises(ValidationError, match="SMTP_URL"):
        ServiceSettings(**BASE, smtp_url="mail.example:25")
    assert ServiceSettings(**BASE, smtp_url="").smtp_url is None


def test_up_runs_an_smtp_sink_for_the_services_that_send_mail(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    platform = load_platform(root / "spec" / "cloudretail.yaml")
    plan = stack_plan(platform, StackOptions(tmp_path), root / "generated")
    assert plan.mail_sink is not None
    assert plan.mail_sink.directory == str((tmp_path / "mail").resolve())
    senders = {s.name for s in platform.services if s.uses_mail}
    assert senders, "the spec has a service with `uses: [mail]`"
    for process in plan.processes:
        if process.name in senders:
            assert process.env["SMTP_URL"] == f"smtp://127.0.0.1:{plan.mail_sink.port}"
            assert process.env["MAIL_FROM"] == platform.mail_from
        else:
            assert "SMTP_URL" not in process.env, process.name

    quiet = load_platform(root / "tests" / "specs" / "minimal.yaml")
    assert stack_plan(quiet, StackOptions(tmp_path), root / "generated").mail_sink is None
