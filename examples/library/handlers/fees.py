"""Fees: the deposit each loan takes, and fines librarians record.

A member whose unpaid fines reach `FINE_LIMIT` may not borrow: the deposit is refused
(402), and the borrow saga undoes the hold it placed on the copy. The deposit is refunded
when the loan ends: when the saga is undone after the deposit was taken, and when the loan
is returned (`loan.returned`). Each operation is idempotent by loan id.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.handlers import Context, created
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.fees.events import publish
from generated.services.fees.models import Fee
from generated.services.fees.schemas import FeeRead

DEPOSIT = Decimal("2.00")
FINE_LIMIT = Decimal("5.00")

# publish(kind, data) in the caller's transaction
Emit = Callable[[str, dict[str, Any]], Awaitable[object]]


class NewFine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    member_id: uuid.UUID
    amount: Decimal = Field(gt=0, le=1000, max_digits=8, decimal_places=2)
    reason: str = Field(min_length=1, max_length=255)


class DepositRequest(BaseModel):
    """The borrow saga's data; only the loan and its member matter here."""

    model_config = ConfigDict(extra="ignore")

    loan_id: uuid.UUID
    member_id: uuid.UUID


def _view(fee: Fee) -> dict[str, Any]:
    return FeeRead.model_validate(fee).model_dump(mode="json")


async def _unpaid_fines(session: AsyncSession, member_id: uuid.UUID) -> Decimal:
    total = await session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(Fee.amount), 0)).where(
            Fee.member_id == member_id, Fee.kind == "fine", Fee.status == "charged"
        )
    )
    return Decimal(str(total or 0))


async def _deposit(session: AsyncSession, loan_id: uuid.UUID) -> Fee | None:
    query = (
        sa.select(Fee)
        .where(Fee.loan_id == loan_id, Fee.kind == "deposit")
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(query)).first()


async def _refund(session: AsyncSession, loan_id: uuid.UUID, emit: Emit) -> Fee | None:
    """Refund the loan's deposit if it is still charged; the deposit either way."""
    fee = await _deposit(session, loan_id)
    if fee is None or fee.status != "charged":
        return fee
    moved = await session.execute(
        sa.update(Fee).where(Fee.id == fee.id, Fee.status == "charged").values(status="refunded")
    )
    if moved.rowcount == 1:  # type: ignore[attr-defined]
        await emit(
            "fee.refunded",
            {
                "fee_id": fee.id,
                "member_id": fee.member_id,
                "loan_id": fee.loan_id,
                "amount": fee.amount,
            },
        )
    await session.refresh(fee)
    return fee


# -- members and librarians ---------------------------------------------------------------------


async def my_fees(ctx: Context) -> Any:
    """GET /api/fees/mine (authenticated): the caller's deposits and fines."""
    rows = await ctx.session.scalars(
        sa.select(Fee)
        .where(Fee.member_id == uuid.UUID(ctx.user.subject))
        .order_by(Fee.created_at.desc(), Fee.id)
        .limit(100)
    )
    fees = [_view(fee) for fee in rows]
    owed = await _unpaid_fines(ctx.session, uuid.UUID(ctx.user.subject))
    return {"items": fees, "unpaid_fines": str(owed), "fine_limit": str(FINE_LIMIT)}


async def add_fine(ctx: Context) -> Any:
    """POST /api/fees/fines (librarian, admin): a fine for a member (late, damaged ...)."""
    body = await ctx.body(NewFine)
    fee = Fee(
        member_id=body.member_id,
        kind="fine",
        amount=body.amount,
        status="charged",
        reason=body.reason,
    )
    ctx.session.add(fee)
    await ctx.session.flush()
    await publish(
        ctx.session,
        "fee.charged",
        {
            "fee_id": fee.id,
            "member_id": fee.member_id,
            "loan_id": None,
            "kind": "fine",
            "amount": fee.amount,
        },
    )
    await ctx.session.commit()
    await ctx.session.refresh(fee)
    return created(_view(fee))


async def waive_fine(ctx: Context) -> Any:
    """POST /api/fees/fines/{id}/waive (admin): forgive an unpaid fine."""
    fee = await ctx.session.get(Fee, ctx.path_uuid("id"))
    if fee is None or fee.kind != "fine":
        raise Problem(404, detail="no such fine")
    if fee.status != "charged":
        raise Problem(409, detail=f"this fine is {fee.status} already")
    fee.status = "waived"
    await publish(
        ctx.session,
        "fee.waived",
        {"fee_id": fee.id, "member_id": fee.member_id, "amount": fee.amount},
    )
    await ctx.session.commit()
    await ctx.session.refresh(fee)
    return _view(fee)


# -- the borrow saga -----------------------------------------------------------------------------


async def charge(ctx: Context) -> Any:
    """POST /internal/fees/deposits (service): take the loan's deposit, unless the member
    owes too much in fines (402)."""
    body = await ctx.body(DepositRequest)
    earlier = await _deposit(ctx.session, body.loan_id)
    if earlier is not None:
        return _view(earlier)  # a repeated call: the same answer
    owed = await _unpaid_fines(ctx.session, body.member_id)
    if owed >= FINE_LIMIT:
        raise Problem(
            402,
            title="Fines unpaid",
            detail=f"the member owes {owed} in fines; borrowing resumes below {FINE_LIMIT}",
            type="/problems/fines-unpaid",
        )
    fee = Fee(
        member_id=body.member_id,
        loan_id=body.loan_id,
        kind="deposit",
        amount=DEPOSIT,
        status="charged",
    )
    ctx.session.add(fee)
    try:
        await ctx.session.flush()
    except IntegrityError:  # the same loan, at the same moment, in another request
        await ctx.session.rollback()
        again = await _deposit(ctx.session, body.loan_id)
        if again is None:
            raise
        return _view(again)
    await publish(
        ctx.session,
        "fee.charged",
        {
            "fee_id": fee.id,
            "member_id": fee.member_id,
            "loan_id": fee.loan_id,
            "kind": "deposit",
            "amount": fee.amount,
        },
    )
    await ctx.session.commit()
    await ctx.session.refresh(fee)
    return _view(fee)


async def refund(ctx: Context) -> Any:
    """POST /internal/fees/deposits/{loan_id}/refund (service): give the deposit back."""
    loan_id = ctx.path_uuid("loan_id")
    fee = await _refund(ctx.session, loan_id, lambda kind, data: publish(ctx.session, kind, data))
    await ctx.session.commit()
    return {"loan_id": str(loan_id), "deposit": _view(fee) if fee is not None else None}


# -- events ---------------------------------------------------------------------------------------


async def on_loan_returned(ctx: EventContext) -> None:
    """A returned loan's deposit goes back to the member."""
    await _refund(ctx.session, uuid.UUID(str(ctx.event.data["loan_id"])), ctx.publish)
