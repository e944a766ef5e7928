"""Outgoing mail through an outbox: queued in the transaction that decides to send, then
delivered over SMTP by a relay.

`queue_mail` adds a row to the caller's transaction under a `message_key` the caller
chooses (an event id, say): queuing the same key again is a no-op, so a handler that runs
twice queues one mail. `MailRelay` sends unsent rows oldest first and stamps them; while the
SMTP server is down rows wait and are retried with a growing delay. SMTP has no idempotency,
so a crash between the server's acceptance and the stamp sends that mail again; it carries
the same Message-ID (derived from the key) both times, which receivers use to drop repeats.

For services whose spec says `uses: [mail]`: the generator adds the `mail_outbox` table to
their migrations (identical to the definition below) and the app runs the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.db import Database, insert_skipping_duplicates
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
    and_,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

logger = logging.getLogger(__name__)

metadata = MetaData()

mail_outbox = Table(
    "mail_outbox",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("message_key", String(255), nullable=False),
    Column("recipient", String(320), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column(
        "created_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("CURRENT_TIMESTAMP"),
    ),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("message_key", name="uq_mail_outbox_message_key"),
    Index("idx_mail_outbox_unsent", "sent_at", "seq"),
)

_MAX_KEY = 255
_MAX_SUBJECT = 255
_MAX_RECIPIENT = 320
_MAX_ERROR_TEXT = 2000
# A failed send waits 2 s, 4 s, ... up to 5 minutes before the next try.
_FIRST_RETRY = 2.0
_LAST_RETRY = 300.0


class MailError(ValueError):
    """A mail that cannot be queued (a missing recipient, an over-long subject, ...)."""


async def create_mail_tables(connection: AsyncConnection) -> None:
    """Create the table if missing. For tests: services get it from their migrations."""
    await connection.run_sync(metadata.create_all)


async def queue_mail(session: AsyncSession, *, key: str, to: str, subject: str, body: str) -> bool:
    """Add a mail to the session's transaction; the caller commits. False when a mail with
    this key was queued before (nothing is added)."""
    if not key or len(key) > _MAX_KEY:
        raise MailError(f"a mail's key must be 1 to {_MAX_KEY} characters")
    if not to or len(to) > _MAX_RECIPIENT or any(c in to for c in "\r\n,;"):
        raise MailError(f"not one mail address: {to[:80]!r}")
    if len(subject) > _MAX_SUBJECT or "\n" in subject or "\r" in subject:
        raise MailError(f"a subject is one line of at most {_MAX_SUBJECT} characters")
    values = {"message_key": key, "recipient": to, "subject": subject, "body": body}
    dialect = session.get_bind().dialect.name
    result = await session.execute(
        insert_skipping_duplicates(mail_outbox, dialect, "message_key").values(**values)
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class SmtpServer:
    """Where mail goes: `smtp://[user:password@]host[:port]` (STARTTLS when the server
    offers it), `smtps://...` (TLS from the first byte, port 465 by default)."""

    host: str
    port: int
    use_tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpServer:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"SMTP_URL must look like smtp://host:port or smtps://host:port, not {url!r}"
            )
        tls = parts.scheme == "smtps"
        try:
            port = parts.port or (465 if tls else 25)
        except ValueError as error:
            raise ValueError(f"SMTP_URL has a bad port: {error}") from None
        return cls(
            host=parts.hostname,
            port=port,
            use_tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def safe_url(self) -> str:
        scheme = "smtps" if self.use_tls else "smtp"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def message_id(key: str, sender: str) -> str:
    """The same Message-ID for every attempt at one mail."""
    domain = sender.rpartition("@")[2] or "localhost"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"


def build_message(row: Any, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = row.recipient
    message["Subject"] = row.subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = message_id(row.message_key, sender)
    message.set_content(row.body)
    return message


def mail_relay(settings: ServiceSettings, database: Database) -> MailRelay:
    """The relay a service's settings describe (SMTP_URL, MAIL_FROM)."""
    server = SmtpServer.from_url(settings.smtp_url) if settings.smtp_url else None
    return MailRelay(database, server, settings.mail_from)


class MailRelay:
    """Sends queued mails in `seq` order. With PostgreSQL several replicas share the work:
    each claims its rows with FOR UPDATE SKIP LOCKED, so a mail is sent by one of them."""

    def __init__(
        self,
        database: Database,
        server: SmtpServer | None,
        sender: str,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 20,
        timeout: float = 10.0,
    ) -> None:
        self.database = database
        self.server = server
        self.sender = sender
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.timeout = timeout
        # Like the event bus without a broker: no SMTP server configured is a choice (mails
        # wait in the outbox), not an outage; a server that fails us is.
        self.healthy = True
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        if self.server is None:
            logger.warning("SMTP_URL is not set: mails stay in the mail outbox")
            return
        self._task = asyncio.create_task(self._run(), name="mail-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.send_pending()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is away: try again later
                logger.warning("mail relay pass failed", extra={"error": str(error)[:500]})
                sent = 0
            if sent:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def send_pending(self) -> int:
        """One pass: claim up to a batch of due mails, send them, stamp them. Returns the
        number sent."""
        if self.server is None:
            return 0
        now = datetime.now(UTC)
        due = and_(
            mail_outbox.c.sent_at.is_(None),
            or_(mail_outbox.c.next_attempt_at.is_(None), mail_outbox.c.next_attempt_at <= now),
        )
        query = select(mail_outbox).where(due).order_by(mail_outbox.c.seq).limit(self.batch_size)
        if self.database.dialect_name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        sent = 0
        async with self.database.sessionmaker() as session, session.begin():
            rows = (await session.execute(query)).all()
            if not rows:
                return 0
            try:
                smtp = await self._connect()
            except (aiosmtplib.SMTPException, OSError) as error:
                self.healthy = False
                for row in rows:
                    await self._failed(session, row, error)
                return 0
            try:
                for row in rows:
                    try:
                        await smtp.send_message(build_message(row, self.sender))
                    except aiosmtplib.SMTPRecipientsRefused as error:
                        await self._failed(session, row, error)
                        continue
                    await session.execute(
                        update(mail_outbox)
                        .where(mail_outbox.c.seq == row.seq)
                        .values(sent_at=datetime.now(UTC), attempts=row.attempts + 1)
                    )
                    sent += 1
            except (aiosmtplib.SMTPException, OSError) as error:
                self.healthy = False
                logger.warning("SMTP send failed", extra={"error": str(error)[:500]})
                return sent
            finally:
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await smtp.quit()
        self.healthy = True
        self.sent += sent
        if sent:
            logger.info("mails sent", extra={"count": sent})
        return sent

    async def _connect(self) -> aiosmtplib.SMTP:
        server = self.server
        assert server is not None
        smtp = aiosmtplib.SMTP(
            hostname=server.host,
            port=server.port,
            use_tls=server.use_tls,
            start_tls=None if not server.use_tls else False,
            timeout=self.timeout,
        )
        await smtp.connect()
        if server.username:
            await smtp.login(server.username, server.password or "")
        return smtp

    async def _failed(self, session: AsyncSession, row: Any, error: BaseException) -> None:
        attempts = row.attempts + 1
        delay = min(_LAST_RETRY, _FIRST_RETRY * 2 ** (attempts - 1))
        await session.execute(
            update(mail_outbox)
            .where(mail_outbox.c.seq == row.seq)
            .values(
                attempts=attempts,
                next_attempt_at=datetime.now(UTC) + timedelta(seconds=delay),
                last_error=f"{type(error).__name__}: {error}"[:_MAX_ERROR_TEXT],
            )
        )
