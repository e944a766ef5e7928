"""Loans and the borrow saga: `requested` + `loan.requested` -> hold the copy (catalog) ->
take the deposit (fees) -> lend the copy (catalog) -> `active` + `loan.started`. When a step
fails the earlier ones are undone (the hold released, the deposit refunded) and the loan
ends `refused` + `loan.refused`; the member gets the failing step's status (404 no such
copy, 409 not available, 402 fines unpaid).

Returning a loan publishes `loan.returned`: the catalog puts the copy back on the shelf and
fees refund the deposit, each when it consumes the event.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.auth import Principal
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.handlers import Context, created
from cloudretail.runtime.saga import SagaRunner, start_sagas, stop_sagas
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.loans.events import publish
from generated.services.loans.models import Loan
from generated.services.loans.sagas import BORROW

LOAN_PERIOD = timedelta(days=21)
STAFF = ("librarian", "admin")
# What a failed saga becomes for the member: a refused step keeps its own status.
FAILURE_STATUS = {"timeout": 504, "unavailable": 503, "unreachable": 503}


class LoanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    copy_id: uuid.UUID


def _view(loan: Loan) -> dict[str, Any]:
    return {
        "id": str(loan.id),
        "member_id": str(loan.member_id),
        "copy_id": str(loan.copy_id),
        "status": loan.status,
        "due_at": loan.due_at.isoformat() if loan.due_at else None,
        "reason": loan.reason,
        "created_at": loan.created_at.isoformat() if loan.created_at else None,
    }


def _is_staff(caller: Principal) -> bool:
    return caller.role in STAFF


async def _visible(ctx: Context, *, lock: bool = False) -> Loan:
    """The loan of the path, if the caller is its member or staff; else 404, so nobody
    learns which loan ids exist."""
    loan = await ctx.session.get(Loan, ctx.path_uuid("id"), with_for_update=lock or None)
    caller = ctx.user
    if loan is None or not (_is_staff(caller) or str(loan.member_id) == caller.subject):
        raise Problem(404, detail="no such loan")
    return loan


async def _emit(session: AsyncSession, kind: str, loan: Loan, **extra: Any) -> None:
    data = {"loan_id": loan.id, "member_id": loan.member_id, "copy_id": loan.copy_id}
    await publish(session, kind, {**data, **extra})


# -- saga ends ---------------------------------------------------------------------------------


async def started(session: AsyncSession, saga_id: uuid.UUID, data: dict[str, Any]) -> None:
    loan = await session.get(Loan, saga_id, with_for_update=True)
    if loan is None or loan.status != "requested":
        return
    loan.status = "active"
    loan.due_at = datetime.now(UTC) + LOAN_PERIOD
    await _emit(session, "loan.started", loan, due_at=loan.due_at)


async def refused(
    session: AsyncSession, saga_id: uuid.UUID, data: dict[str, Any], error: dict[str, Any]
) -> None:
    loan = await session.get(Loan, saga_id, with_for_update=True)
    if loan is None or loan.status != "requested":
        return
    loan.status = "refused"
    loan.reason = f"{error.get('step')}: {error.get('detail')}"[:255]
    await _emit(session, "loan.refused", loan, reason=loan.reason)


def _failure(error: dict[str, Any] | None, loan: dict[str, Any]) -> Problem:
    error = error or {}
    status = FAILURE_STATUS.get(error.get("kind", "")) or error.get("status") or 409
    problem = error.get("problem") or {}
    return Problem(
        int(status),
        title=problem.get("title") or "Loan refused",
        detail=str(error.get("detail") or "the loan could not be made"),
        type=problem.get("type", "about:blank"),
        loan=loan,
    )


# -- routes --------------------------------------------------------------------------------------


async def borrow(ctx: Context) -> Any:
    """POST /api/loans (authenticated): borrow a copy; 201 with the active loan."""
    body = await ctx.body(LoanRequest)
    loan = Loan(member_id=uuid.UUID(ctx.user.subject), copy_id=body.copy_id, status="requested")
    ctx.session.add(loan)
    await ctx.session.flush()
    await _emit(ctx.session, "loan.requested", loan)
    runner: SagaRunner = ctx.request.app.state.sagas
    await runner.begin(
        ctx.session,
        BORROW.name,
        loan.id,
        {"loan_id": str(loan.id), "member_id": str(loan.member_id), "copy_id": str(loan.copy_id)},
    )
    await ctx.session.commit()
    result = await runner.run(loan.id)
    await ctx.session.refresh(loan)
    if loan.status == "refused":
        raise _failure(result.error, _view(loan))
    if loan.status != "active":
        raise Problem(
            503,
            title="Loan not settled",
            detail="the loan is still being made; it starts or is refused shortly",
            loan=_view(loan),
        )
    return created(_view(loan), headers={"Location": f"/api/loans/{loan.id}"})


async def my_loans(ctx: Context) -> Any:
    """GET /api/loans (authenticated): the caller's loans, newest first."""
    rows = await ctx.session.scalars(
        sa.select(Loan)
        .where(Loan.member_id == uuid.UUID(ctx.user.subject))
        .order_by(Loan.created_at.desc(), Loan.id)
        .limit(100)
    )
    return {"items": [_view(loan) for loan in rows]}


async def get_loan(ctx: Context) -> Any:
    """GET /api/loans/{id} (authenticated): the member's loan (any loan, for staff)."""
    return _view(await _visible(ctx))


async def return_loan(ctx: Context) -> Any:
    """POST /api/loans/{id}/return (authenticated): the copy comes back."""
    loan = await _visible(ctx, lock=True)
    if loan.status == "returned":
        return _view(loan)
    if loan.status != "active":
        raise Problem(409, detail=f"a loan that is {loan.status} cannot be returned")
    loan.status = "returned"
    await _emit(ctx.session, "loan.returned", loan)
    await ctx.session.commit()
    await ctx.session.refresh(loan)
    return _view(loan)


async def overdue(ctx: Context) -> Any:
    """GET /api/loans/reports/overdue (librarian, admin): active loans past their due date."""
    rows = await ctx.session.scalars(
        sa.select(Loan)
        .where(Loan.status == "active", Loan.due_at < datetime.now(UTC))
        .order_by(Loan.due_at, Loan.id)
        .limit(500)
    )
    return {"items": [_view(loan) for loan in rows]}


# -- lifecycle -----------------------------------------------------------------------------------


async def startup(app: FastAPI) -> None:
    await start_sagas(app, BORROW.bind(on_completed=started, on_failed=refused))


async def shutdown(app: FastAPI) -> None:
    await stop_sagas(app)
