"""Stock: levels per product, and reservations that hold stock for an order's lines.

Stock never goes negative and is never oversold: a reservation is one conditional UPDATE
per line (`... WHERE quantity - reserved >= :wanted`), all lines in one transaction, in
product order so concurrent orders take row locks in the same order. Every service-facing
operation is idempotent by order id, so a saga may repeat it after a crash.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.handlers import Context
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.inventory.events import publish
from generated.services.inventory.models import Inventory, InventoryReservation

HELD = ("reserved", "committed")


class StockLevel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quantity: int = Field(ge=0)
    warehouse_location: str | None = Field(default=None, max_length=100)
    reorder_level: int | None = Field(default=None, ge=0)
    reorder_quantity: int | None = Field(default=None, ge=0)


class Line(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_id: uuid.UUID
    quantity: int = Field(gt=0)


class ReservationRequest(BaseModel):
    """The saga's data; only the order id and its lines matter here."""

    model_config = ConfigDict(extra="ignore")

    order_id: uuid.UUID
    items: list[Line] = Field(min_length=1)


def _level(row: Inventory) -> dict[str, Any]:
    return {
        "product_id": str(row.product_id),
        "quantity": row.quantity,
        "reserved": row.reserved or 0,
        "available": row.quantity - (row.reserved or 0),
        "warehouse_location": row.warehouse_location,
        "reorder_level": row.reorder_level,
        "reorder_quantity": row.reorder_quantity,
    }


def _product_id(ctx: Context) -> uuid.UUID:
    return ctx.path_uuid("product_id")


async def _by_product(
    session: AsyncSession, product_id: uuid.UUID, *, fresh: bool = False
) -> Inventory | None:
    """The product's stock row; `fresh` reads it again even if this session holds it (its
    columns may have been changed by UPDATE statements in this transaction)."""
    query = sa.select(Inventory).where(Inventory.product_id == product_id)
    if fresh:
        query = query.execution_options(populate_existing=True)
    return (await session.scalars(query)).first()


async def _after_change(session: AsyncSession, row: Inventory, *, fresh: bool = False) -> None:
    """`inventory.updated` always; `inventory.low_stock` when availability hits the level.
    A row not read `fresh` after the change is read again first."""
    if not fresh:
        await session.refresh(row)
    reserved = row.reserved or 0
    await publish(
        session,
        "inventory.updated",
        {"product_id": row.product_id, "quantity": row.quantity, "reserved": reserved},
    )
    available = row.quantity - reserved
    level = row.reorder_level if row.reorder_level is not None else 0
    if available <= level:
        await publish(
            session,
            "inventory.low_stock",
            {"product_id": row.product_id, "available": available, "reorder_level": level},
        )


async def _reservations(session: AsyncSession, order_id: uuid.UUID) -> list[InventoryReservation]:
    query = (
        sa.select(InventoryReservation)
        .where(InventoryReservation.order_id == order_id)
        .order_by(InventoryReservation.product_id)
        # Statuses may have been changed by UPDATE statements in this transaction.
        .execution_options(populate_existing=True)
    )
    return list((await session.scalars(query)).all())


def _summary(order_id: uuid.UUID, rows: list[InventoryReservation]) -> dict[str, Any]:
    return {
        "order_id": str(order_id),
        "items": [
            {"product_id": str(r.product_id), "quantity": r.quantity, "status": r.status}
            for r in rows
        ],
    }


# -- public routes -------------------------------------------------------------------------


async def get_stock(ctx: Context) -> Any:
    """GET /api/inventory/{product_id} (public)."""
    row = await _by_product(ctx.session, _product_id(ctx))
    if row is None:
        raise Problem(404, detail="no stock is recorded for this product")
    return _level(row)


async def set_stock(ctx: Context) -> Any:
    """PUT /api/inventory/{product_id} (admin): set the stock level, creating the row."""
    product_id = _product_id(ctx)
    body = await ctx.body(StockLevel)
    row = await _by_product(ctx.session, product_id)
    if row is None:
        row = Inventory(product_id=product_id, quantity=body.quantity, reserved=0)
        ctx.session.add(row)
    elif body.quantity < (row.reserved or 0):
        raise Problem(
            409, detail=f"{row.reserved} units are reserved; quantity cannot go below that"
        )
    row.quantity = body.quantity
    for name in ("warehouse_location", "reorder_level", "reorder_quantity"):
        value = getattr(body, name)
        if value is not None:
            setattr(row, name, value)
    await ctx.session.flush()
    await _after_change(ctx.session, row)
    await ctx.session.commit()
    return _level(row)


# -- service routes (the order saga) ---------------------------------------------------------


async def reserve(ctx: Context) -> Any:
    """POST /internal/inventory/reservations (service): hold every line, or none."""
    body = await ctx.body(ReservationRequest)
    existing = await _reservations(ctx.session, body.order_id)
    if existing:
        return _summary(body.order_id, existing)  # a repeated call: same answer
    wanted: dict[uuid.UUID, int] = {}
    for line in body.items:
        wanted[line.product_id] = wanted.get(line.product_id, 0) + line.quantity
    short = []
    for product_id in sorted(wanted):
        taken = await ctx.session.execute(
            sa.update(Inventory)
            .where(Inventory.product_id == product_id)
            .where(
                Inventory.quantity - sa.func.coalesce(Inventory.reserved, 0) >= wanted[product_id]
            )
            .values(reserved=sa.func.coalesce(Inventory.reserved, 0) + wanted[product_id])
        )
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            short.append(str(product_id))
    if short:
        await ctx.session.rollback()
        raise Problem(
            409,
            title="Out of stock",
            detail="not enough stock for every line of the order",
            type="/problems/out-of-stock",
            products=short,
        )
    rows = [
        InventoryReservation(
            order_id=body.order_id, product_id=product_id, quantity=quantity, status="reserved"
        )
        for product_id, quantity in sorted(wanted.items())
    ]
    ctx.session.add_all(rows)
    await ctx.session.flush()
    summary = _summary(body.order_id, rows)
    await publish(ctx.session, "inventory.reserved", summary)
    for product_id in sorted(wanted):
        row = await _by_product(ctx.session, product_id, fresh=True)
        if row is not None:
            await _after_change(ctx.session, row, fresh=True)
    await ctx.session.commit()
    return summary


Emit = Callable[[str, dict[str, Any]], Awaitable[object]]


async def _move(
    session: AsyncSession, reservation: InventoryReservation, to: str, **stock: Any
) -> bool:
    """Move one reservation to `to` and adjust its product's stock, both atomically: the
    status changes only if nobody moved it first, and stock is changed in SQL, never
    read-modify-written, so concurrent orders cannot lose each other's updates."""
    moved = await session.execute(
        sa.update(InventoryReservation)
        .where(InventoryReservation.id == reservation.id)
        .where(InventoryReservation.status == reservation.status)
        .values(status=to)
    )
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        return False
    await session.execute(
        sa.update(Inventory).where(Inventory.product_id == reservation.product_id).values(**stock)
    )
    return True


async def _undo(
    session: AsyncSession, order_id: uuid.UUID, emit: Emit
) -> list[InventoryReservation]:
    """Give back what the order holds: reserved stock is freed, committed stock returned."""
    changed = []
    for reservation in await _reservations(session, order_id):
        quantity = reservation.quantity
        if reservation.status == "reserved":
            done = await _move(
                session, reservation, "released", reserved=Inventory.reserved - quantity
            )
        elif reservation.status == "committed":
            done = await _move(
                session, reservation, "returned", quantity=Inventory.quantity + quantity
            )
        else:
            continue
        if done:
            changed.append(reservation)
    if changed:
        await session.flush()
        for reservation in changed:
            await session.refresh(reservation)
        await emit("inventory.released", _summary(order_id, changed))
    return changed


async def release(ctx: Context) -> Any:
    """POST /internal/inventory/reservations/{order_id}/release (service): undo the order."""
    order_id = ctx.path_uuid("order_id")
    await _undo(ctx.session, order_id, lambda kind, data: publish(ctx.session, kind, data))
    answer = _summary(order_id, await _reservations(ctx.session, order_id))
    await ctx.session.commit()
    return answer


async def commit(ctx: Context) -> Any:
    """POST /internal/inventory/reservations/{order_id}/commit (service): the order is paid;
    reserved units leave the stock."""
    order_id = ctx.path_uuid("order_id")
    for reservation in await _reservations(ctx.session, order_id):
        if reservation.status != "reserved":
            continue
        quantity = reservation.quantity
        moved = await _move(
            ctx.session,
            reservation,
            "committed",
            quantity=Inventory.quantity - quantity,
            reserved=Inventory.reserved - quantity,
        )
        if moved:
            row = await _by_product(ctx.session, reservation.product_id, fresh=True)
            if row is not None:
                await _after_change(ctx.session, row, fresh=True)
    # The answer is read before the commit: after it, reading would cost a new transaction.
    answer = _summary(order_id, await _reservations(ctx.session, order_id))
    await ctx.session.commit()
    return answer


# -- events ----------------------------------------------------------------------------------


async def on_order_created(ctx: EventContext) -> None:
    """Nothing to hold yet: the order saga reserves stock by calling `reserve` directly,
    which answers the customer at once; the event only confirms the order exists."""


async def on_order_cancelled(ctx: EventContext) -> None:
    """Converge: whatever an order that ended cancelled still holds is given back, even when
    the synchronous release was lost."""
    order_id = uuid.UUID(str(ctx.event.data["order_id"]))
    await _undo(ctx.session, order_id, ctx.publish)
