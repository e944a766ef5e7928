"""A local SMTP server that keeps every mail it receives, for `cloudretail up`.

Services that send mail get SMTP_URL pointing here; each mail lands in the stack's
`mail/` folder as an `.eml` file (numbered in arrival order) and `cloudretail mails`
lists them. It accepts anything from loopback and delivers nothing onwards.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 10 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedMail:
    path: Path
    sender: str
    recipients: str
    subject: str
    message_id: str
    date: str

    def body(self) -> str:
        message = email.message_from_bytes(self.path.read_bytes(), policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else ""


class _Keeper:
    def __init__(self, directory: Path, notify: Callable[[ReceivedMail], None] | None) -> None:
        self.directory = directory
        self.notify = notify
        existing = [int(p.stem) for p in directory.glob("*.eml") if p.stem.isdigit()]
        self._numbers = itertools.count(max(existing, default=0) + 1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        path = self.directory / f"{next(self._numbers):06d}.eml"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(content)
        temporary.replace(path)
        if self.notify is not None:
            self.notify(read_mail(path))
        return "250 Message accepted for delivery"


class MailSink:
    def __init__(
        self,
        host: str,
        port: int,
        directory: Path,
        *,
        notify: Callable[[ReceivedMail], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.directory = directory
        self.notify = notify
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        handler = _Keeper(self.directory, self.notify)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(handler, data_size_limit=_MAX_MESSAGE, hostname="localhost"),
            self.host,
            self.port,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def read_mail(path: Path) -> ReceivedMail:
    headers: Any = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return ReceivedMail(
        path=path,
        sender=str(headers.get("From", "")),
        recipients=str(headers.get("To", "")),
        subject=str(headers.get("Subject", "")),
        message_id=str(headers.get("Message-ID", "")),
        date=str(headers.get("Date", "")),
    )


def received_mails(directory: Path) -> list[ReceivedMail]:
    """The mails a sink kept in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return [read_mail(path) for path in sorted(directory.glob("*.eml"))]
