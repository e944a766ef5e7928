"""Orders and the order saga: pending + `order.created` -> reserve stock -> charge ->
commit stock -> `confirmed` + `order.confirmed`; a failed step undoes the earlier ones and
the order ends `cancelled`. Prices come from the product service, never from the client.

The saga owns a pending order: only its end hooks settle it, and a cancel waits (409) until
it has. An Idempotency-Key names one request: the order keeps a fingerprint of the body it
came with, so the key reused with another body is refused (422), and reused while the first
request is still in flight is told so (409), as the IETF Idempotency-Key draft says.

Each order keeps a timeline (`order_events`) built from the events about it: its own and
the ones it consumes, in the order they happened.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.order.events import publish
from generated.services.order.models import Order, OrderEvent
from generated.services.order.sagas import PLACE_ORDER
from runtime.errors import Problem
from runtime.events.consumer import EventContext
from runtime.events.envelope import Event
from runtime.handlers import Context, created
from runtime.http import ServiceCallError, ServiceClients
from runtime.saga import SagaRunner, start_sagas, stop_sagas

# Before shipping, once placed; a pending order belongs to its saga until it settles.
MAX_OFFSET = 2**63 - 1
CANCELLABLE = ("confirmed", "processing")
TRANSITIONS = {"confirmed": "processing", "processing": "shipped", "shipped": "delivered"}
STATUS_EVENTS = {"shipped": "order.shipped", "delivered": "order.delivered"}
# What the saga's failure becomes for the client.
FAILURE_STATUS = {"rejected": None, "timeout": 504, "unavailable": 503, "unreachable": 503}
# Who an order belongs to once its customer's account is erased (GDPR): nobody.
ERASED_USER = uuid.UUID(int=0)
ERASED_ADDRESS_FIELDS = ("line1", "line2", "city", "postal_code")


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    product_id: uuid.UUID
    quantity: int = Field(gt=0, le=1000)


class Address(BaseModel):
    model_config = ConfigDict(extra="forbid")

    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2)


class PaymentMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["card"]
    token: str = Field(min_length=1, max_length=100)


class NewOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OrderLine] = Field(min_length=1, max_length=100)
    shipping_address: Address
    payment_method: PaymentMethod


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["processing", "shipped", "delivered"]


# -- reading ---------------------------------------------------------------------------------


async def _timeline(session: AsyncSession, order_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = await session.scalars(
        sa.select(OrderEvent)
        .where(OrderEvent.order_id == order_id)
        .order_by(OrderEvent.occurred_at, OrderEvent.id)
    )
    return [
        {"type": row.event_type, "at": row.occurred_at.isoformat(), "data": row.data}
        for row in rows
    ]


def _view(order: Order) -> dict[str, Any]:
    return {
        "id": str(order.id),
        "user_id": str(order.user_id),
        "status": order.status,
        "items": order.items,
        "total_amount": str(order.total_amount),
        "currency": order.currency,
        "shipping_address": order.shipping_address,
        "payment_id": str(order.payment_id) if order.payment_id else None,
        "created_at": order.created_at.isoformat() if order.created_at else None,
        "updated_at": order.updated_at.isoformat() if order.updated_at else None,
    }


async def _full(session: AsyncSession, order: Order) -> dict[str, Any]:
    return {**_view(order), "timeline": await _timeline(session, order.id)}


async def _own(ctx: Context, *, lock: bool = False) -> Order:
    """The order of the path, if the caller owns it or is an admin (or a service); else 404,
    so nobody learns which order ids exist. `lock` holds its row (PostgreSQL) until the
    transaction ends, so a change decided on its status is made on that same status."""
    order_id = ctx.path_uuid("id")
    order = await ctx.session.get(Order, order_id, with_for_update=lock or None)
    caller = ctx.principal
    owner = str(order.user_id) if order is not None else None
    if order is None or caller is None or not (caller.is_admin or owner == caller.subject):
        raise Problem(404, detail="no such order")
    return order


# -- writing, with the timeline ---------------------------------------------------------------


async def _record(session: AsyncSession, event: Event, order_id: uuid.UUID) -> None:
    session.add(
        OrderEvent(
            order_id=order_id,
            event_id=event.id,
            event_type=event.type,
            occurred_at=event.timestamp,
            data=event.data,
        )
    )


async def _emit(session: AsyncSession, kind: str, order: Order, **extra: Any) -> None:
    data = {"order_id": order.id, "user_id": order.user_id, **extra}
    event = await publish(session, kind, data)
    await _record(session, event, order.id)


async def _prices(clients: ServiceClients, lines: list[OrderLine]) -> list[dict[str, Any]]:
    priced = []
    for line in lines:
        try:
            product = await clients.call("product", "GET", f"/api/products/{line.product_id}")
        except ServiceCallError as error:
            if error.status == 404:
                raise Problem(422, detail=f"product {line.product_id} does not exist") from None
            raise Problem(503, detail="the product catalog is unavailable") from None
        if product.get("is_active") is False:
            raise Problem(422, detail=f"product {line.product_id} is not for sale")
        price = Decimal(str(product["price"]))
        priced.append(
            {
                "product_id": str(line.product_id),
                "name": product.get("name"),
                "quantity": line.quantity,
                "unit_price": str(price),
                "line_total": str(price * line.quantity),
            }
        )
    return priced


# -- saga ends ---------------------------------------------------------------------------------


async def placed(session: AsyncSession, saga_id: uuid.UUID, data: dict[str, Any]) -> None:
    order = await session.get(Order, saga_id, with_for_update=True)
    if order is None or order.status != "pending":
        return
    charge = data.get("charge_payment") or {}
    order.status = "confirmed"
    order.payment_id = uuid.UUID(charge["id"]) if charge.get("id") else None
    await _emit(
        session,
        "order.confirmed",
        order,
        payment_id=order.payment_id,
        total_amount=order.total_amount,
    )


async def not_placed(
    session: AsyncSession, saga_id: uuid.UUID, data: dict[str, Any], error: dict[str, Any]
) -> None:
    order = await session.get(Order, saga_id, with_for_update=True)
    if order is None or order.status != "pending":
        return
    order.status = "cancelled"
    reason = f"{error.get('step')}: {error.get('detail')}"
    await _emit(session, "order.cancelled", order, reason=reason[:250])


def _failure_problem(error: dict[str, Any] | None, order: dict[str, Any]) -> Problem:
    error = error or {}
    status = FAILURE_STATUS.get(error.get("kind", ""), 503) or error.get("status") or 409
    problem = error.get("problem") or {}
    return Problem(
        int(status),
        title=problem.get("title") or "Order not placed",
        detail=str(error.get("detail") or "the order could not be completed"),
        type=problem.get("type", "about:blank"),
        order=order,
    )


# -- routes ------------------------------------------------------------------------------------


def _fingerprint(body: NewOrder) -> str:
    """SHA-256 of the request as validated: the same request however its JSON is written."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _by_key(ctx: Context, key: str) -> Order | None:
    query = sa.select(Order).where(
        Order.user_id == uuid.UUID(ctx.user.subject), Order.idempotency_key == key
    )
    return (await ctx.session.scalars(query.execution_options(populate_existing=True))).first()


async def _repeated(ctx: Context, earlier: Order, fingerprint: str) -> Any:
    """The answer to a request whose Idempotency-Key an earlier order carries."""
    if earlier.request_fingerprint not in (None, fingerprint):
        raise Problem(
            422,
            title="Idempotency-Key reused",
            detail="this Idempotency-Key was already used with a different request body; "
            "use a new key for a new order",
            type="/problems/idempotency-key-reused",
        )
    if earlier.status == "pending":
        raise Problem(
            409,
            title="Request in flight",
            detail="a request with this Idempotency-Key is still in flight; "
            "retry once it has been answered",
            type="/problems/idempotency-key-in-flight",
            headers={"Retry-After": "1"},
        )
    return await _answer(ctx, earlier)


async def place_order(ctx: Context) -> Any:
    """POST /api/orders (authenticated): place an order; the same Idempotency-Key gives the
    same answer and one order."""
    body = await ctx.body(NewOrder)
    user = ctx.user
    key = ctx.request.headers.get("Idempotency-Key")
    if key is not None and len(key) > 255:
        raise Problem(422, detail="Idempotency-Key is longer than 255 characters")
    fingerprint = _fingerprint(body)
    if key:
        earlier = await _by_key(ctx, key)
        if earlier is not None:
            return await _repeated(ctx, earlier, fingerprint)
    state = ctx.request.app.state
    items = await _prices(state.service_clients, body.items)
    total = sum((Decimal(line["line_total"]) for line in items), Decimal("0"))
    order = Order(
        user_id=uuid.UUID(user.subject),
        items=items,
        total_amount=total,
        status="pending",
        shipping_address=body.shipping_address.model_dump(),
        currency="USD",
        idempotency_key=key,
        request_fingerprint=fingerprint if key else None,
    )
    ctx.session.add(order)
    try:
        await ctx.session.flush()
    except IntegrityError:
        # The same key, at the same moment, in another request: that one placed the order.
        await ctx.session.rollback()
        earlier = await _by_key(ctx, key) if key else None
        if earlier is None:
            raise
        return await _repeated(ctx, earlier, fingerprint)
    await _emit(ctx.session, "order.created", order, items=items, total_amount=total)
    runner: SagaRunner = state.sagas
    await runner.begin(
        ctx.session,
        PLACE_ORDER.name,
        order.id,
        {
            "order_id": str(order.id),
            "user_id": str(order.user_id),
            "items": items,
            "total_amount": str(total),
            "currency": order.currency,
            "payment_method": body.payment_method.model_dump(),
        },
    )
    await ctx.session.commit()
    await runner.run(order.id)
    await ctx.session.refresh(order)
    return await _answer(ctx, order)


async def _answer(ctx: Context, order: Order) -> Any:
    view = await _full(ctx.session, order)
    if order.status == "cancelled":
        runner: SagaRunner = ctx.request.app.state.sagas
        result = await runner.run(order.id)
        raise _failure_problem(result.error, view)
    if order.status == "pending":
        raise Problem(
            503,
            title="Order not settled",
            detail="the order is still being processed; it settles or is cancelled shortly",
            order=view,
        )
    return created(view, headers={"Location": f"/api/orders/{order.id}"})


async def list_orders(ctx: Context) -> Any:
    """GET /api/orders (authenticated): the caller's orders; an admin sees all."""
    params = ctx.request.query_params
    limit = _bounded(params.get("limit"), "limit", 20, 1, 100)
    offset = _bounded(params.get("offset"), "offset", 0, 0, MAX_OFFSET)
    query = sa.select(Order)
    if not ctx.user.is_admin:
        query = query.where(Order.user_id == uuid.UUID(ctx.user.subject))
    if status := params.get("status"):
        query = query.where(Order.status == status)
    total = await ctx.session.scalar(sa.select(sa.func.count()).select_from(query.subquery()))
    rows = await ctx.session.scalars(
        query.order_by(Order.created_at.desc(), Order.id).limit(limit).offset(offset)
    )
    return {
        "items": [_view(order) for order in rows],
        "total": int(total or 0),
        "limit": limit,
        "offset": offset,
    }


def _bounded(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """A paging parameter, or 422 naming it (a value beyond BIGINT must not reach SQL)."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        message = f"must be an integer from {low} to {high}"
        raise Problem(
            422,
            detail=f"{name} {message}",
            errors=[{"loc": ["query", name], "msg": message, "type": "value_error"}],
        )
    return value


async def get_order(ctx: Context) -> Any:
    """GET /api/orders/{id} (authenticated): the owner's order (or any, for an admin)."""
    return await _full(ctx.session, await _own(ctx))


async def cancel_order(ctx: Context) -> Any:
    """POST /api/orders/{id}/cancel (owner, before shipping): refund and give stock back.

    Not while the order is pending: its saga may be charging the card right now, and only
    the saga settles it (confirmed, or cancelled with everything undone); cancelling then
    would race the charge. The customer is told to try again once it has settled."""
    order = await _own(ctx, lock=True)
    if order.status == "cancelled":
        return await _full(ctx.session, order)
    if order.status == "pending":
        raise Problem(
            409,
            title="Order still being placed",
            detail="the order is still being placed (its payment may be in progress); "
            "cancel it once it is confirmed",
            type="/problems/order-in-progress",
            headers={"Retry-After": "5"},
        )
    if order.status not in CANCELLABLE:
        raise Problem(409, detail=f"an order that is {order.status} cannot be cancelled")
    clients: ServiceClients = ctx.request.app.state.service_clients
    try:
        await clients.call("payment", "POST", f"/internal/payments/charges/{order.id}/refund")
        await clients.call(
            "inventory", "POST", f"/internal/inventory/reservations/{order.id}/release"
        )
    except ServiceCallError as error:
        raise Problem(503, detail=f"cannot cancel right now: {error.detail}") from None
    order.status = "cancelled"
    await _emit(ctx.session, "order.cancelled", order, reason="cancelled by the customer")
    await ctx.session.commit()
    await ctx.session.refresh(order)
    return await _full(ctx.session, order)


async def update_status(ctx: Context) -> Any:
    """PATCH /api/orders/{id}/status (admin): processing, shipped, delivered, in order."""
    body = await ctx.body(StatusChange)
    order = await _own(ctx, lock=True)
    if TRANSITIONS.get(order.status or "") != body.status:
        raise Problem(409, detail=f"an order that is {order.status} cannot become {body.status}")
    order.status = body.status
    if body.status in STATUS_EVENTS:
        await _emit(ctx.session, STATUS_EVENTS[body.status], order)
    await ctx.session.commit()
    await ctx.session.refresh(order)
    return await _full(ctx.session, order)


# -- events and lifecycle ----------------------------------------------------------------------


async def _consumed(ctx: EventContext) -> None:
    order_id = uuid.UUID(str(ctx.event.data["order_id"]))
    if await ctx.session.get(Order, order_id) is not None:
        await _record(ctx.session, ctx.event, order_id)


async def on_payment_completed(ctx: EventContext) -> None:
    """Into the timeline; and an order paid outside the saga (POST /api/payments) learns
    its payment here."""
    await _consumed(ctx)
    order = await ctx.session.get(Order, uuid.UUID(str(ctx.event.data["order_id"])))
    if order is not None and order.payment_id is None:
        order.payment_id = uuid.UUID(str(ctx.event.data["payment_id"]))


async def on_inventory_reserved(ctx: EventContext) -> None:
    """Into the timeline: the stock for the order is held."""
    await _consumed(ctx)


async def startup(app: FastAPI) -> None:
    await start_sagas(app, PLACE_ORDER.bind(on_completed=placed, on_failed=not_placed))


async def shutdown(app: FastAPI) -> None:
    await stop_sagas(app)


def _without(value: Any, user_id: str) -> Any:
    """`value` (JSON) with every occurrence of the user's id replaced by the erased one."""
    if isinstance(value, dict):
        return {key: _without(item, user_id) for key, item in value.items()}
    if isinstance(value, list):
        return [_without(item, user_id) for item in value]
    return str(ERASED_USER) if value == user_id else value


async def on_user_deleted(ctx: EventContext) -> None:
    """GDPR erasure: the customer's orders keep what accounting needs (lines, amounts,
    statuses, the payment, the country of delivery) and lose the person: the address, the
    link to the account, the client's idempotency key; their timelines too. Applying it
    again finds nothing left to change."""
    user_id = uuid.UUID(str(ctx.event.data["user_id"]))
    orders = list(await ctx.session.scalars(sa.select(Order).where(Order.user_id == user_id)))
    for order in orders:
        address = dict(order.shipping_address or {})
        order.shipping_address = {
            **{name: None for name in ERASED_ADDRESS_FIELDS},
            "country": address.get("country"),
            "erased": True,
        }
        order.user_id = ERASED_USER
        order.idempotency_key = None
        order.request_fingerprint = None
    if not orders:
        return
    timeline = await ctx.session.scalars(
        sa.select(OrderEvent).where(OrderEvent.order_id.in_([order.id for order in orders]))
    )
    for entry in timeline:
        entry.data = _without(entry.data, str(user_id))
