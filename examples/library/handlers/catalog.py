"""The catalog: titles (generated CRUD) and their copies, and the holds the borrow saga
places on a copy.

A copy is `available`, `held` for a loan that is being made, or `lent`. Every change of
status is one conditional UPDATE (`... WHERE status = 'available'`), so two loans can never
take the same copy. The saga's operations are idempotent by loan id: a repeated call gives
the same answer and changes nothing, so the saga may repeat a step after a crash.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.handlers import Context, created
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.catalog.events import publish
from generated.services.catalog.models import Copy, Title
from generated.services.catalog.schemas import CopyRead


class NewCopy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    barcode: str = Field(min_length=1, max_length=40)
    shelf: str | None = Field(default=None, max_length=40)


class HoldRequest(BaseModel):
    """The borrow saga's data; only the loan and the copy matter here."""

    model_config = ConfigDict(extra="ignore")

    loan_id: uuid.UUID
    copy_id: uuid.UUID


def _view(copy: Copy) -> dict[str, Any]:
    return CopyRead.model_validate(copy).model_dump(mode="json")


async def _of_loan(session: AsyncSession, loan_id: uuid.UUID) -> Copy | None:
    query = (
        sa.select(Copy)
        .where(Copy.loan_id == loan_id)
        # Its status may have been changed by an UPDATE statement in this transaction.
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(query)).first()


async def _move(
    session: AsyncSession, loan_id: uuid.UUID, start: str, end: str, *, keep_loan: bool
) -> Copy | None:
    """The loan's copy moved from `start` to `end` (None when it was not in `start`)."""
    copy = await _of_loan(session, loan_id)
    if copy is None or copy.status != start:
        return None
    moved = await session.execute(
        sa.update(Copy)
        .where(Copy.id == copy.id, Copy.loan_id == loan_id, Copy.status == start)
        .values(status=end, loan_id=loan_id if keep_loan else None)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return None
    await session.refresh(copy)
    return copy


# -- librarians ------------------------------------------------------------------------------


async def add_copy(ctx: Context) -> Any:
    """POST /api/catalog/titles/{id}/copies (librarian, admin): a new copy of the title,
    available."""
    title_id = ctx.path_uuid("id")
    body = await ctx.body(NewCopy)
    if await ctx.session.get(Title, title_id) is None:
        raise Problem(404, detail="no such title")
    copy = Copy(title_id=title_id, barcode=body.barcode, shelf=body.shelf, status="available")
    ctx.session.add(copy)
    try:
        await ctx.session.flush()
    except IntegrityError:
        raise Problem(409, detail="a copy with this barcode exists already") from None
    await publish(
        ctx.session,
        "copy.created",
        {"copy_id": copy.id, "title_id": copy.title_id, "barcode": copy.barcode},
    )
    await ctx.session.commit()
    await ctx.session.refresh(copy)
    return created(_view(copy), headers={"Location": f"/api/catalog/copies/{copy.id}"})


# -- the borrow saga -------------------------------------------------------------------------


async def hold(ctx: Context) -> Any:
    """POST /internal/catalog/holds (service): hold the copy for the loan, if available."""
    body = await ctx.body(HoldRequest)
    copy = await ctx.session.get(Copy, body.copy_id)
    if copy is None:
        raise Problem(404, detail="no such copy")
    if copy.loan_id == body.loan_id:
        return _view(copy)  # a repeated call: the same answer
    taken = await ctx.session.execute(
        sa.update(Copy)
        .where(Copy.id == body.copy_id, Copy.status == "available")
        .values(status="held", loan_id=body.loan_id)
    )
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        await ctx.session.rollback()
        raise Problem(
            409,
            title="Copy not available",
            detail="this copy is on loan or held for another loan",
            type="/problems/copy-not-available",
        )
    await publish(ctx.session, "copy.held", {"copy_id": body.copy_id, "loan_id": body.loan_id})
    await ctx.session.commit()
    await ctx.session.refresh(copy)
    return _view(copy)


async def release(ctx: Context) -> Any:
    """POST /internal/catalog/holds/{loan_id}/release (service): undo a hold; a copy that
    is not held for the loan (released already, or never held) is left as it is."""
    loan_id = ctx.path_uuid("loan_id")
    copy = await _move(ctx.session, loan_id, "held", "available", keep_loan=False)
    if copy is not None:
        await publish(ctx.session, "copy.released", {"copy_id": copy.id, "loan_id": loan_id})
    await ctx.session.commit()
    return {"loan_id": str(loan_id), "released": copy is not None}


async def lend(ctx: Context) -> Any:
    """POST /internal/catalog/holds/{loan_id}/lend (service): the held copy leaves the shelf."""
    loan_id = ctx.path_uuid("loan_id")
    copy = await _move(ctx.session, loan_id, "held", "lent", keep_loan=True)
    if copy is not None:
        await publish(ctx.session, "copy.lent", {"copy_id": copy.id, "loan_id": loan_id})
        await ctx.session.commit()
        return _view(copy)
    copy = await _of_loan(ctx.session, loan_id)
    if copy is not None and copy.status == "lent":
        return _view(copy)  # a repeated call
    raise Problem(409, detail="no copy is held for this loan")


# -- events ------------------------------------------------------------------------------------


async def on_loan_returned(ctx: EventContext) -> None:
    """The copy of a returned loan goes back on the shelf."""
    loan_id = uuid.UUID(str(ctx.event.data["loan_id"]))
    copy = await _move(ctx.session, loan_id, "lent", "available", keep_loan=False)
    if copy is not None:
        await ctx.publish("copy.shelved", {"copy_id": copy.id, "loan_id": loan_id})
