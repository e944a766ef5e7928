"""Notifications: one mail per order or payment event that concerns a customer.

Addresses come from user events (`recipients`, the event-carried state of the user
service), so a mail needs no call at send time. Each mail is rendered from the template
named after its event in `handlers/mails/` (first line `Subject: ...`, then the body) and
queued in the mail outbox under the event's id, in the same transaction as the consumer's
dedup record: a redelivered event finds its id processed, and even a handler run twice
queues one mail. The relay sends it over SMTP_URL after the commit.

An event about a user whose address is unknown (their `user.created` not seen yet, or the
account erased) is recorded as `no_address` and sends nothing. Erasure (`user.deleted`) is
the spec's `pii` declarations, applied by the generated app: the address row goes, and the
notifications sent lose their recipient and their link to the person.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.mail import queue_mail
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from generated.services.notification.models import Notification, Recipient

MAILS = Path(__file__).with_name("mails")

_templates = Environment(
    loader=FileSystemLoader(MAILS),
    undefined=StrictUndefined,
    autoescape=False,  # plain-text mail, not HTML
    keep_trailing_newline=True,
)


def render(event_type: str, data: dict[str, Any]) -> tuple[str, str]:
    """The subject and body of the mail for an event (its template, filled with its data)."""
    order_id = str(data.get("order_id") or "")
    values = {**{k: "" if v is None else v for k, v in data.items()}, "order_ref": order_id[:8]}
    text = _templates.get_template(f"{event_type}.txt").render(values)
    head, _, body = text.partition("\n")
    if not head.startswith("Subject: "):
        raise ValueError(f"mails/{event_type}.txt must start with a `Subject: ` line")
    # A subject is one header line: whatever the data held, no line breaks reach it.
    subject = " ".join(head.removeprefix("Subject: ").split())
    return subject[:255], body.lstrip("\n")


async def on_user_created(ctx: EventContext) -> None:
    await _remember(ctx, uuid.UUID(str(ctx.event.data["user_id"])), str(ctx.event.data["email"]))


async def on_user_updated(ctx: EventContext) -> None:
    fields = ctx.event.data.get("fields")
    if isinstance(fields, dict) and isinstance(fields.get("email"), str):
        await _remember(ctx, uuid.UUID(str(ctx.event.data["user_id"])), fields["email"])


async def on_order_confirmed(ctx: EventContext) -> None:
    await _notify(ctx)


async def on_order_shipped(ctx: EventContext) -> None:
    await _notify(ctx)


async def on_order_cancelled(ctx: EventContext) -> None:
    await _notify(ctx)


async def on_payment_failed(ctx: EventContext) -> None:
    await _notify(ctx)


async def _remember(ctx: EventContext, user_id: uuid.UUID, email: str) -> None:
    await ctx.session.merge(Recipient(user_id=user_id, email=email))


async def _notify(ctx: EventContext) -> None:
    event = ctx.event
    data = dict(event.data)
    if not data.get("user_id"):
        return  # nobody to write to (an event from before it named its user)
    user_id = uuid.UUID(str(data["user_id"]))
    recipient = await ctx.session.get(Recipient, user_id)
    subject, body = render(event.type, data)
    if recipient is not None:
        await queue_mail(
            ctx.session, key=str(event.id), to=recipient.email, subject=subject, body=body
        )
    ctx.session.add(
        Notification(
            event_id=event.id,
            event_type=event.type,
            user_id=user_id,
            order_id=uuid.UUID(str(data["order_id"])) if data.get("order_id") else None,
            recipient=recipient.email if recipient is not None else None,
            subject=subject,
            status="queued" if recipient is not None else "no_address",
        )
    )
