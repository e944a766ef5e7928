"""Payments: charges and refunds through a provider, idempotent by key.

The provider sits behind a small interface; the built-in simulated one answers by card
token (`tok_visa` pays, `tok_declined` is declined, `tok_timeout` never answers in time).
A real provider plugs in by implementing `PaymentProvider` and naming its class in
`PAYMENT_PROVIDER` (module:Class); production refuses to start without one.

A payment's status only moves by compare-and-set (`UPDATE ... WHERE status =
'processing'`), never by a blind overwrite: the first answer to land settles a charge and a
late one (a provider timeout after a retry succeeded, say) changes nothing. A timeout is no
answer, though: the charge may have gone through, so a retry asks the provider again under
the same idempotency key, and an approval it gets replaces the timeout. A refund asked for
while the outcome is still open is recorded and made as soon as the provider approves.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.handlers import Context, created
from cloudretail.runtime.http import ServiceCallError, ServiceClients
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.payment.events import publish
from generated.services.payment.models import Payment
from generated.services.payment.schemas import PaymentRead

logger = logging.getLogger(__name__)

PROVIDER_TIMEOUT = float(os.environ.get("PAYMENT_PROVIDER_TIMEOUT", "4"))
TIMED_OUT = "the payment provider did not answer in time"
CANCELLED = "the order was cancelled before the charge was made"


class PaymentMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["card"]
    token: str = Field(min_length=1, max_length=100)


class ChargeRequest(BaseModel):
    """The saga's data; what a charge needs of it."""

    model_config = ConfigDict(extra="ignore")

    order_id: uuid.UUID
    user_id: uuid.UUID
    total_amount: Decimal = Field(ge=0, max_digits=10, decimal_places=2)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    payment_method: PaymentMethod


class RefundRequest(BaseModel):
    """The saga's data, when its compensation asks: enough to record a payment that was
    never opened, so a charge still on its way is refused when it arrives."""

    model_config = ConfigDict(extra="ignore")

    order_id: uuid.UUID
    user_id: uuid.UUID
    total_amount: Decimal = Field(ge=0, max_digits=10, decimal_places=2)
    currency: str = Field(default="USD", min_length=3, max_length=3)


class PayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: uuid.UUID
    payment_method: PaymentMethod


# -- the provider interface ------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderResult:
    approved: bool
    transaction_id: str | None
    reason: str | None = None


class PaymentProvider(Protocol):
    name: str

    async def charge(
        self, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ProviderResult: ...

    async def refund(self, transaction_id: str, amount: Decimal, idempotency_key: str) -> None: ...


class SimulatedProvider:
    """A stand-in provider with the behaviours a real one has: approve (`tok_visa`), decline
    (`tok_declined`), hang (`tok_timeout`), and approve slowly (`tok_slow`, 3 s: time for a
    crash to happen mid-saga)."""

    name = "simulated"

    def __init__(self) -> None:
        self._charges: dict[str, ProviderResult] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def charge(
        self, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ProviderResult:
        # One charge per key, as real providers keep it: a repeat made while the first is
        # in progress waits for it and gets its answer.
        async with self._locks.setdefault(idempotency_key, asyncio.Lock()):
            if idempotency_key in self._charges:
                return self._charges[idempotency_key]
            if token == "tok_timeout":
                await asyncio.sleep(3600)
            if token == "tok_slow":
                await asyncio.sleep(3)
            if token in ("tok_visa", "tok_slow"):
                result = ProviderResult(True, f"sim_{uuid.uuid4().hex[:16]}")
            else:
                result = ProviderResult(False, None, "card declined")
            self._charges[idempotency_key] = result
            return result

    async def refund(self, transaction_id: str, amount: Decimal, idempotency_key: str) -> None:
        return None


class ProviderConfigError(RuntimeError):
    """PAYMENT_PROVIDER is missing where it is needed, or names no provider."""


def load_provider(*, production: bool = False) -> PaymentProvider:
    """The provider PAYMENT_PROVIDER names (module:Class); the simulator when it is unset,
    except in production, which refuses to take payments that move no money."""
    spec = os.environ.get("PAYMENT_PROVIDER", "").strip()
    if not spec:
        if production:
            raise ProviderConfigError(
                "PAYMENT_PROVIDER is not set: in production the payment service does not "
                "start with the simulated provider; set PAYMENT_PROVIDER to the module:Class "
                "of a real one"
            )
        return SimulatedProvider()
    module, _, name = spec.partition(":")
    try:
        provider: PaymentProvider = getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError, ValueError, TypeError) as error:
        raise ProviderConfigError(
            f"PAYMENT_PROVIDER={spec!r} does not name a provider class (module:Class): {error}"
        ) from None
    if production and isinstance(provider, SimulatedProvider):
        raise ProviderConfigError(
            f"PAYMENT_PROVIDER={spec!r} is the simulated provider, which production refuses; "
            "set PAYMENT_PROVIDER to the module:Class of a real one"
        )
    return provider


def _provider(ctx: Context) -> PaymentProvider:
    provider: PaymentProvider = ctx.request.app.state.payment_provider
    return provider


# -- helpers ---------------------------------------------------------------------------------


def _read(payment: Payment) -> dict[str, Any]:
    return PaymentRead.model_validate(payment).model_dump(mode="json")


async def _for_order(session: AsyncSession, order_id: uuid.UUID) -> Payment | None:
    query = sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at)
    # As the database has it now: another request may have moved it since it was loaded.
    return (await session.scalars(query.execution_options(populate_existing=True))).first()


async def _move(session: AsyncSession, payment: Payment, *when: Any, **values: Any) -> bool:
    """Compare-and-set: change the payment only if it still is as `when` says."""
    moved = await session.execute(
        sa.update(Payment)
        .where(Payment.id == payment.id, *when)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(moved.rowcount == 1)  # type: ignore[attr-defined]


def _open_outcome() -> sa.ColumnElement[bool]:
    """Payments whose charge has no known outcome yet: not made, in progress, timed out."""
    return sa.or_(
        Payment.status.in_(("pending", "processing")),
        sa.and_(Payment.status == "failed", Payment.failure_reason == TIMED_OUT),
    )


def _settled(payment: Payment) -> bool:
    return payment.status in ("completed", "refunded") or (
        payment.status == "failed" and payment.failure_reason != TIMED_OUT
    )


async def _open(ctx: Context, body: ChargeRequest) -> Payment:
    """The order's payment, opened (pending) if nobody opened it yet."""
    payment = await _for_order(ctx.session, body.order_id)
    if payment is not None:
        return payment
    payment = Payment(
        order_id=body.order_id,
        user_id=body.user_id,
        amount=body.total_amount,
        currency=body.currency,
        status="pending",
        idempotency_key=f"charge:{body.order_id}",
    )
    ctx.session.add(payment)
    try:
        await ctx.session.flush()
    except IntegrityError:
        # order.created's consumer (or another attempt) opened it a moment ago: use that one.
        await ctx.session.rollback()
        payment = await _for_order(ctx.session, body.order_id)
        if payment is None:
            raise
        return payment
    await publish(ctx.session, "payment.initiated", _initiated(payment))
    return payment


async def _charge(ctx: Context, body: ChargeRequest) -> Payment:
    """Charge once per order: a repeated request gets the first outcome back. One whose
    outcome is still open (in progress, or timed out: a retry after a crash, or a concurrent
    attempt) asks the provider again under the same idempotency key."""
    session = ctx.session
    payment = await _open(ctx, body)
    if _settled(payment):
        return payment
    provider = _provider(ctx)
    claimed = await _move(
        session,
        payment,
        _open_outcome(),
        status="processing",
        failure_reason=None,
        payment_method=body.payment_method.type,
        gateway=provider.name,
    )
    await session.commit()  # the attempt is on record before the provider is asked
    if not claimed:  # settled (or cancelled) meanwhile
        await session.refresh(payment)
        return payment
    try:
        result = await asyncio.wait_for(
            provider.charge(
                body.total_amount,
                body.currency,
                body.payment_method.token,
                payment.idempotency_key or "",
            ),
            PROVIDER_TIMEOUT,
        )
    except TimeoutError:
        result = ProviderResult(False, None, TIMED_OUT)
    return await _settle(ctx, payment, result)


async def _settle(ctx: Context, payment: Payment, result: ProviderResult) -> Payment:
    """Record the provider's answer if the charge is still open: an approval settles a charge
    in progress or timed out; a refusal or a timeout only one in progress. Otherwise the
    answer came too late and the payment stays as the first answer left it."""
    session = ctx.session
    values: dict[str, Any]
    if result.approved:
        values = {
            "status": "completed",
            "transaction_id": result.transaction_id,
            "failure_reason": None,
        }
        still_open = _open_outcome()
    else:
        values = {"status": "failed", "failure_reason": result.reason}
        still_open = Payment.status == "processing"
    settled = (
        await session.execute(
            sa.update(Payment)
            .where(Payment.id == payment.id, still_open)
            .values(**values)
            .returning(Payment.refund_requested_at)
            .execution_options(synchronize_session=False)
        )
    ).first()
    if settled is None:
        await session.rollback()
        await session.refresh(payment)
        return payment
    if result.approved:
        data = {
            "payment_id": payment.id,
            "order_id": payment.order_id,
            "amount": payment.amount,
            "currency": payment.currency,
        }
        await publish(session, "payment.completed", data)
    else:
        await publish(
            session,
            "payment.failed",
            {
                "payment_id": payment.id,
                "order_id": payment.order_id,
                "user_id": payment.user_id,
                "reason": result.reason,
            },
        )
    await session.commit()
    await session.refresh(payment)
    if result.approved and settled.refund_requested_at is not None:
        # The order was cancelled while the provider was charging: give the money back now.
        payment = await _refund(ctx, payment)
    return payment


async def _refund(ctx: Context, payment: Payment) -> Payment:
    """Refund a completed charge (the provider's refund is idempotent by key)."""
    session = ctx.session
    await _provider(ctx).refund(
        payment.transaction_id or "", payment.amount, f"refund:{payment.order_id}"
    )
    if await _move(session, payment, Payment.status == "completed", status="refunded"):
        await publish(
            session,
            "payment.refunded",
            {"payment_id": payment.id, "order_id": payment.order_id, "amount": payment.amount},
        )
    await session.commit()
    await session.refresh(payment)
    return payment


async def _cancelled(ctx: Context, payment: Payment) -> bool:
    """A payment nobody has charged yet ends failed, so no late charge can be made."""
    if not await _move(
        ctx.session,
        payment,
        Payment.status == "pending",
        status="failed",
        failure_reason=CANCELLED,
    ):
        return False
    await publish(
        ctx.session,
        "payment.failed",
        {
            "payment_id": payment.id,
            "order_id": payment.order_id,
            "user_id": payment.user_id,
            "reason": CANCELLED,
        },
    )
    return True


def _initiated(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "order_id": payment.order_id,
        "amount": payment.amount,
        "currency": payment.currency,
    }


def _outcome(payment: Payment) -> Any:
    if payment.status == "refunded" or payment.failure_reason == CANCELLED:
        # Whoever still waits for this charge must not go on as if it were paid.
        raise Problem(
            409,
            title="Payment cancelled",
            detail="the order was cancelled: the charge was refunded or never made",
            type="/problems/payment-cancelled",
            payment_id=str(payment.id),
        )
    if payment.status == "failed":
        timed_out = payment.failure_reason == TIMED_OUT
        raise Problem(
            504 if timed_out else 402,
            title="Payment timed out" if timed_out else "Payment declined",
            detail=payment.failure_reason or "the payment was not approved",
            type="/problems/payment-failed",
            payment_id=str(payment.id),
        )
    return _read(payment)


# -- routes ----------------------------------------------------------------------------------


async def charge(ctx: Context) -> Any:
    """POST /internal/payments/charges (service): the order saga's charge step."""
    body = await ctx.body(ChargeRequest)
    return _outcome(await _charge(ctx, body))


async def refund(ctx: Context) -> Any:
    """POST /internal/payments/charges/{order_id}/refund (service): undo a charge. A
    completed charge is refunded; one still processing is refunded as soon as it completes;
    one not made yet never will be. The saga's compensation sends its data as the body."""
    order_id = ctx.path_uuid("order_id")
    session = ctx.session
    answer: dict[str, Any] = {"order_id": str(order_id), "refunded": False}
    for _ in range(5):
        payment = await _for_order(session, order_id)
        if payment is None:
            if await _open_cancelled(ctx, order_id):
                await session.commit()
                return answer
            if await _for_order(session, order_id) is None:
                return answer  # nothing was charged, nor can be from what we know
            continue
        if payment.status == "completed":
            payment = await _refund(ctx, payment)
        if payment.status == "refunded":
            return {**answer, "refunded": True, "payment": _read(payment)}
        if _settled(payment):  # failed: nothing was charged
            return {**answer, "payment": _read(payment)}
        if payment.status == "pending" and await _cancelled(ctx, payment):
            await session.commit()
            await session.refresh(payment)
            return {**answer, "payment": _read(payment)}
        # In progress or timed out: the money may still move; if it does, it goes back.
        if payment.status != "pending" and await _move(
            session,
            payment,
            _open_outcome(),
            Payment.status != "pending",
            refund_requested_at=datetime.now(UTC),
        ):
            await session.commit()
            return {**answer, "refund_pending": True}
        await session.rollback()  # it moved meanwhile: look again
    raise Problem(409, detail="the payment keeps changing; try the refund again")


async def _open_cancelled(ctx: Context, order_id: uuid.UUID) -> bool:
    """No payment yet, but the saga's charge may still be on its way: record one that is
    cancelled already, from the saga's data (when the caller sent it)."""
    if not (await ctx.request.body()).strip():
        return False
    data = await ctx.body(RefundRequest)
    if data.order_id != order_id:
        raise Problem(422, detail="the body's order_id is not the path's")
    payment = Payment(
        order_id=order_id,
        user_id=data.user_id,
        amount=data.total_amount,
        currency=data.currency,
        status="failed",
        failure_reason=CANCELLED,
        idempotency_key=f"charge:{order_id}",
    )
    ctx.session.add(payment)
    try:
        await ctx.session.flush()
    except IntegrityError:
        await ctx.session.rollback()  # a charge opened it meanwhile
        return False
    await publish(ctx.session, "payment.initiated", _initiated(payment))
    await publish(
        ctx.session,
        "payment.failed",
        {
            "payment_id": payment.id,
            "order_id": order_id,
            "user_id": payment.user_id,
            "reason": CANCELLED,
        },
    )
    return True


async def pay_order(ctx: Context) -> Any:
    """POST /api/payments (authenticated): the owner pays a pending order."""
    body = await ctx.body(PayRequest)
    clients: ServiceClients = ctx.request.app.state.service_clients
    try:
        # On the customer's behalf: the order service checks that the order is theirs.
        order = await clients.call(
            "order",
            "GET",
            f"/api/orders/{body.order_id}",
            headers={"Authorization": ctx.request.headers.get("authorization", "")},
        )
    except ServiceCallError as error:
        if error.status == 404:
            raise Problem(404, detail="no such order") from None
        raise Problem(503, detail=f"the order service is unavailable: {error.detail}") from None
    if order.get("user_id") != ctx.user.subject and not ctx.user.is_admin:
        raise Problem(404, detail="no such order")
    if order.get("status") != "pending":
        raise Problem(409, detail=f"the order is {order.get('status')}, not pending")
    request = ChargeRequest(
        order_id=body.order_id,
        user_id=uuid.UUID(order["user_id"]),
        total_amount=Decimal(str(order["total_amount"])),
        currency=order.get("currency") or "USD",
        payment_method=body.payment_method,
    )
    return created(_outcome(await _charge(ctx, request)))


async def get_payment(ctx: Context) -> Any:
    """GET /api/payments/{id} (authenticated): the owner's payment, or any for an admin."""
    payment_id = ctx.path_uuid("id")
    payment = await ctx.session.get(Payment, payment_id)
    if payment is None or (str(payment.user_id) != ctx.user.subject and not ctx.user.is_admin):
        raise Problem(404, detail="no such payment")
    return _read(payment)


# -- events and lifecycle --------------------------------------------------------------------


async def on_order_created(ctx: EventContext) -> None:
    """Open a pending payment for a new order (once), so every order has a payment record
    from the start, whichever comes first: this event or the saga's charge."""
    data = ctx.event.data
    order_id = uuid.UUID(str(data["order_id"]))
    if await _for_order(ctx.session, order_id) is not None:
        return
    payment = Payment(
        order_id=order_id,
        user_id=uuid.UUID(str(data["user_id"])),
        amount=Decimal(str(data["total_amount"])),
        currency="USD",
        status="pending",
        idempotency_key=f"charge:{order_id}",
    )
    ctx.session.add(payment)
    await ctx.session.flush()
    await ctx.publish("payment.initiated", _initiated(payment))


async def startup(app: FastAPI) -> None:
    try:
        app.state.payment_provider = load_provider(production=app.state.settings.is_production)
    except ProviderConfigError as error:
        logger.critical("%s", error)  # one plain line before uvicorn's traceback
        raise
    app.state.service_clients = ServiceClients(app.state.settings, tracer=app.state.tracer)


async def shutdown(app: FastAPI) -> None:
    await app.state.service_clients.close()
