"""Orders and the order saga: pending + `order.created` -> reserve stock -> charge ->
commit stock -> `confirmed` + `order.confirmed`; a failed step undoes the earlier ones and
the order ends `cancelled`. Prices come from the product service, never from the client.

Names and prices come from a read model of the catalog, `product_snapshots`, kept from the
product events (event-carried state transfer): each row is refreshed by every event about
its product, and an event older than the row's values is ignored (a redelivery or a replay
never rolls a newer price back). An order prices a line from its row while the row is
fresher than PRODUCT_SNAPSHOT_MAX_AGE (seconds, default 300: the time since an event or a
call last showed the catalog holding those values); otherwise it asks the product service,
as for a product it has never heard of, and the answer refreshes the row. A product deleted
or not for sale in a fresh row is refused without asking. So the price a customer pays may
be up to PRODUCT_SNAPSHOT_MAX_AGE older than the catalog's newest price change when product
events are delayed (`product.price_changed` normally arrives within about a second); `0`
asks the product service for every order. An event's time is read on the product
service's clock, so skew between the two services' clocks adds to the bound.

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
import logging
import math
import os
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, cast

import sqlalchemy as sa
from cloudretail.runtime.db import upsert_newest
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.events.envelope import Event
from cloudretail.runtime.handlers import Context, created
from cloudretail.runtime.http import ServiceCallError, ServiceClients
from cloudretail.runtime.saga import SagaRunner, start_sagas, stop_sagas
from cloudretail.runtime.types import utc_now
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.order.events import publish
from generated.services.order.models import Order, OrderEvent, ProductSnapshot
from generated.services.order.sagas import PLACE_ORDER

logger = logging.getLogger(__name__)

# Before shipping, once placed; a pending order belongs to its saga until it settles.
MAX_OFFSET = 2**63 - 1
CANCELLABLE = ("confirmed", "processing")
TRANSITIONS = {"confirmed": "processing", "processing": "shipped", "shipped": "delivered"}
STATUS_EVENTS = {"shipped": "order.shipped", "delivered": "order.delivered"}
# What the saga's failure becomes for the client.
FAILURE_STATUS = {"rejected": None, "timeout": 504, "unavailable": 503, "unreachable": 503}
# How long a product snapshot prices orders without asking the product service (seconds).
SNAPSHOT_MAX_AGE_VARIABLE = "PRODUCT_SNAPSHOT_MAX_AGE"
DEFAULT_SNAPSHOT_MAX_AGE = 300.0
LONGEST_SNAPSHOT_MAX_AGE = 86400.0


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


async def _prices(
    session: AsyncSession, clients: ServiceClients, max_age: timedelta, lines: list[OrderLine]
) -> list[dict[str, Any]]:
    """Each line with its product's name and price: from the product's snapshot while it is
    fresh, else from the product service. One SELECT for all lines; the answers of the calls
    refresh the snapshots in a transaction of their own, committed before the order's."""
    wanted = list(dict.fromkeys(line.product_id for line in lines))
    rows = await session.scalars(
        sa.select(ProductSnapshot).where(ProductSnapshot.product_id.in_(wanted))
    )
    snapshots = {row.product_id: row for row in rows}
    now = utc_now()
    catalog: dict[uuid.UUID, tuple[str | None, Decimal]] = {}
    answers: list[dict[str, Any]] = []
    problem: Problem | None = None
    for product_id in wanted:
        snapshot = snapshots.get(product_id)
        if snapshot is not None and snapshot.deleted:
            # A deleted product stays deleted: its id is never sold again.
            problem = Problem(422, detail=f"product {product_id} does not exist")
            break
        if snapshot is not None and now - snapshot.refreshed_at <= max_age:
            if snapshot.is_active is False:
                problem = Problem(422, detail=f"product {product_id} is not for sale")
                break
            if snapshot.is_active and snapshot.name is not None and snapshot.price is not None:
                catalog[product_id] = (snapshot.name, snapshot.price)
                continue
        asked_at = utc_now()
        try:
            product = await clients.call("product", "GET", f"/api/products/{product_id}")
        except ServiceCallError as error:
            if error.status == 404:
                problem = Problem(422, detail=f"product {product_id} does not exist")
            else:
                problem = Problem(503, detail="the product catalog is unavailable")
            break
        answers.append(_answered(product_id, product, asked_at))
        if product.get("is_active") is False:
            problem = Problem(422, detail=f"product {product_id} is not for sale")
            break
        catalog[product_id] = (product.get("name"), Decimal(str(product["price"])))
    if answers:
        await _refresh(session, answers)
    if problem is not None:
        raise problem
    priced = []
    for line in lines:
        name, price = catalog[line.product_id]
        priced.append(
            {
                "product_id": str(line.product_id),
                "name": name,
                "quantity": line.quantity,
                "unit_price": str(price),
                "line_total": str(price * line.quantity),
            }
        )
    return priced


def _answered(product_id: uuid.UUID, product: dict[str, Any], asked_at: datetime) -> dict[str, Any]:
    """The snapshot row of the product service's answer, asked at `asked_at`."""
    changed_at = asked_at
    if product.get("updated_at"):
        # Event times carry milliseconds: one of this same change must not look older.
        updated = datetime.fromisoformat(str(product["updated_at"]))
        updated = updated.replace(tzinfo=UTC) if updated.tzinfo is None else updated
        changed_at = updated.replace(microsecond=updated.microsecond // 1000 * 1000)
    return {
        "product_id": product_id,
        "name": product.get("name"),
        "price": Decimal(str(product["price"])),
        "is_active": product.get("is_active") is not False,
        "deleted": False,
        "changed_at": changed_at,
        "refreshed_at": asked_at,
    }


async def _refresh(session: AsyncSession, answers: list[dict[str, Any]]) -> None:
    """Write the answers into the snapshots and commit (the session holds nothing else yet),
    so no row stays locked while the order is placed. In product id order, so two orders
    writing the same rows lock them in the same order (no deadlock). A write that fails
    costs only a later call."""
    try:
        await _upsert(session, sorted(answers, key=lambda row: row["product_id"]))
        await session.commit()
    except DBAPIError as error:
        await session.rollback()
        logger.warning("product snapshots not refreshed", extra={"error": str(error)})


async def _upsert(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    table = cast(sa.Table, ProductSnapshot.__table__)
    dialect = session.get_bind().dialect.name
    await session.execute(
        upsert_newest(
            table, dialect, "product_id", rows, version="changed_at", ascending=("refreshed_at",)
        )
    )


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
    items = await _prices(
        ctx.session, state.service_clients, state.product_snapshot_max_age, body.items
    )
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
    limit = ctx.query_int("limit", 20, 1, 100)
    offset = ctx.query_int("offset", 0, 0, MAX_OFFSET)
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


async def _snapshot(ctx: EventContext, **values: Any) -> None:
    """The product's snapshot with `values`, as of the event's time, unless it already holds
    something newer; a product not seen before gets a row with what the event tells."""
    at = ctx.event.timestamp
    row = {
        "product_id": uuid.UUID(str(ctx.event.data["product_id"])),
        **values,
        "changed_at": at,
        "refreshed_at": at,
    }
    await _upsert(ctx.session, [row])


async def on_product_created(ctx: EventContext) -> None:
    """A new product: its name and price; whether it is for sale when the event says (events
    from before `is_active` was in the payload leave it unknown, so the first order asks)."""
    data = ctx.event.data
    values: dict[str, Any] = {"name": data["name"], "price": Decimal(str(data["price"]))}
    if "is_active" in data:
        values["is_active"] = data["is_active"] is not False
    await _snapshot(ctx, **values, deleted=False)


async def on_product_updated(ctx: EventContext) -> None:
    """The changed columns (`fields`) that a snapshot keeps; any update confirms the rest."""
    fields = ctx.event.data.get("fields")
    changed = fields if isinstance(fields, dict) else {}
    values: dict[str, Any] = {}
    if isinstance(changed.get("name"), str):
        values["name"] = changed["name"]
    if changed.get("price") is not None:
        values["price"] = Decimal(str(changed["price"]))
    if "is_active" in changed:
        values["is_active"] = changed["is_active"] is not False
    await _snapshot(ctx, **values)


async def on_product_price_changed(ctx: EventContext) -> None:
    await _snapshot(ctx, price=Decimal(str(ctx.event.data["new_price"])))


async def on_product_deleted(ctx: EventContext) -> None:
    """Gone from the catalog: orders for it are refused from now on, without asking."""
    await _snapshot(ctx, deleted=True)


class SnapshotConfigError(ValueError):
    """PRODUCT_SNAPSHOT_MAX_AGE that is not a number of seconds in range."""


def snapshot_max_age() -> timedelta:
    """PRODUCT_SNAPSHOT_MAX_AGE from the environment (seconds), or the default."""
    raw = os.environ.get(SNAPSHOT_MAX_AGE_VARIABLE, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_SNAPSHOT_MAX_AGE)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= LONGEST_SNAPSHOT_MAX_AGE:
        raise SnapshotConfigError(
            f"{SNAPSHOT_MAX_AGE_VARIABLE}={raw!r} is not a number of seconds from 0 to "
            f"{LONGEST_SNAPSHOT_MAX_AGE:.0f}"
        )
    return timedelta(seconds=seconds)


async def startup(app: FastAPI) -> None:
    try:
        app.state.product_snapshot_max_age = snapshot_max_age()
    except SnapshotConfigError as error:
        logger.critical("%s", error)  # one plain line before uvicorn's traceback
        raise
    await start_sagas(app, PLACE_ORDER.bind(on_completed=placed, on_failed=not_placed))


async def shutdown(app: FastAPI) -> None:
    await stop_sagas(app)
