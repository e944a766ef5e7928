"""Payments: charges and refunds through a provider, idempotent by key.

The provider sits behind a small interface; the built-in simulated one answers by card
token (`tok_visa` pays, `tok_declined` is declined, `tok_timeout` never answers in time).
A real provider plugs in by implementing `PaymentProvider` and naming its class in
`PAYMENT_PROVIDER` (module:Class).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.payment.events import publish
from generated.services.payment.models import Payment
from generated.services.payment.schemas import PaymentRead
from runtime.errors import Problem
from runtime.events.consumer import EventContext
from runtime.handlers import Context, created
from runtime.http import ServiceCallError, ServiceClients

PROVIDER_TIMEOUT = float(os.environ.get("PAYMENT_PROVIDER_TIMEOUT", "4"))
TIMED_OUT = "the payment provider did not answer in time"


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

    async def charge(
        self, amount: Decimal, currency: str, token: str, idempotency_key: str
    ) -> ProviderResult:
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


def load_provider() -> PaymentProvider:
    spec = os.environ.get("PAYMENT_PROVIDER", "")
    if not spec:
        return SimulatedProvider()
    module, _, name = spec.partition(":")
    provider: PaymentProvider = getattr(importlib.import_module(module), name)()
    return provider


def _provider(ctx: Context) -> PaymentProvider:
    provider: PaymentProvider = ctx.request.app.state.payment_provider
    return provider


# -- helpers ---------------------------------------------------------------------------------


def _read(payment: Payment) -> dict[str, Any]:
    return PaymentRead.model_validate(payment).model_dump(mode="json")


async def _for_order(session: AsyncSession, order_id: uuid.UUID) -> Payment | None:
    query = sa.select(Payment).where(Payment.order_id == order_id).order_by(Payment.created_at)
    return (await session.scalars(query)).first()


async def _charge(ctx: Context, body: ChargeRequest) -> Payment:
    """Charge once per order: a repeated request gets the first outcome back."""
    payment = await _for_order(ctx.session, body.order_id)
    if payment is not None and payment.status in ("completed", "failed", "refunded"):
        return payment
    if payment is None:
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
            # order.created's consumer opened it a moment ago: carry on with that one.
            await ctx.session.rollback()
            payment = await _for_order(ctx.session, body.order_id)
            if payment is None:
                raise
        else:
            await publish(ctx.session, "payment.initiated", _initiated(payment))
        if payment.status in ("completed", "failed", "refunded"):
            return payment
    payment.status = "processing"
    payment.payment_method = body.payment_method.type
    provider = _provider(ctx)
    payment.gateway = provider.name
    await ctx.session.commit()  # the attempt is on record before the provider is asked
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
    payment.transaction_id = result.transaction_id
    data = {
        "payment_id": payment.id,
        "order_id": payment.order_id,
        "amount": payment.amount,
        "currency": payment.currency,
    }
    if result.approved:
        payment.status = "completed"
        await publish(ctx.session, "payment.completed", data)
    else:
        payment.status = "failed"
        payment.failure_reason = result.reason
        await publish(
            ctx.session,
            "payment.failed",
            {"payment_id": payment.id, "order_id": payment.order_id, "reason": result.reason},
        )
    await ctx.session.commit()
    return payment


def _initiated(payment: Payment) -> dict[str, Any]:
    return {
        "payment_id": payment.id,
        "order_id": payment.order_id,
        "amount": payment.amount,
        "currency": payment.currency,
    }


def _outcome(payment: Payment) -> Any:
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
    """POST /internal/payments/charges/{order_id}/refund (service): undo a charge; a
    payment that never completed has nothing to refund."""
    order_id = uuid.UUID(ctx.path("order_id"))
    payment = await _for_order(ctx.session, order_id)
    if payment is None or payment.status != "completed":
        return {"order_id": str(order_id), "refunded": False}
    await _provider(ctx).refund(
        payment.transaction_id or "", payment.amount, f"refund:{payment.order_id}"
    )
    payment.status = "refunded"
    await publish(
        ctx.session,
        "payment.refunded",
        {"payment_id": payment.id, "order_id": payment.order_id, "amount": payment.amount},
    )
    await ctx.session.commit()
    return {"order_id": str(order_id), "refunded": True, "payment": _read(payment)}


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
    try:
        payment_id = uuid.UUID(ctx.path("id"))
    except ValueError:
        raise Problem(422, detail="id must be a UUID") from None
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
    app.state.payment_provider = load_provider()
    app.state.service_clients = ServiceClients(app.state.settings)


async def shutdown(app: FastAPI) -> None:
    await app.state.service_clients.close()
