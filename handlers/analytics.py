"""Analytics: business figures from the events of every topic, kept as aggregates in the
service's own tables and served to admins by `GET /api/analytics/summary`.

Every figure comes from events, so the tables can be rebuilt from the topics
(`cloudretail replay analytics --database-url URL`). A rebuild equals the original whatever
order the topics' events arrive in, because:
- each event is applied once (the consumer claims its id in the handler's transaction), and
  each fact about an order, a product or an account is recorded once, by the first event
  that brings it;
- what needs several events is counted by whichever of them arrives last, once, under a
  lock on the order's row: an order's revenue needs its confirmation and the currency of its
  payment, its sales per product its lines as well;
- what two events may both set (a product's name, its latest stock alert) goes to the
  later event by timestamp, with a fixed tie-break.

Events of one order on one topic arrive in order (they share a key); across topics nothing
is ordered: `order.confirmed` may come before `payment.completed` or `order.created`.
Hours are event timestamps truncated to the hour, in UTC.

Conversion from product views to orders is not measured: the platform publishes no view
events. The summary gives what the events do measure: how many created orders were
confirmed, how many new accounts ordered.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from cloudretail.runtime.db import insert_skipping_duplicates
from cloudretail.runtime.events.consumer import EventContext
from cloudretail.runtime.handlers import Context
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from generated.events import (
    InventoryLowStock,
    OrderCancelled,
    OrderConfirmed,
    OrderCreated,
    PaymentCompleted,
    ProductCreated,
    ProductDeleted,
    ProductUpdated,
    UserCreated,
)
from generated.services.analytics.models import (
    CustomerFact,
    HourlyCount,
    HourlyRevenue,
    OrderFact,
    ProductFact,
    ProductSale,
)

# The order topic keeps 30 days of events; a longer window would show hours a rebuild lacks.
MAX_HOURS = 720
DEFAULT_HOURS = 24
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
COUNTERS = (
    "orders_created",
    "orders_confirmed",
    "orders_cancelled",
    "payments_failed",
    "registrations",
    "low_stock_alerts",
)
NO_VIEW_EVENTS = (
    "view-to-order conversion needs product-view events, which the platform does not publish"
)

Payload = TypeVar("Payload", bound=BaseModel)
Fact = TypeVar("Fact", OrderFact, ProductFact, CustomerFact)


class Line(BaseModel):
    """One line of `order.created`'s items, as the order service priced it."""

    model_config = ConfigDict(extra="ignore")

    product_id: uuid.UUID
    quantity: int = Field(gt=0)
    line_total: Decimal
    name: str | None = None


# -- helpers -----------------------------------------------------------------------------------


def _payload(ctx: EventContext, model: type[Payload]) -> Payload:
    """The event's payload as the registry parsed it (the model of its type)."""
    if not isinstance(ctx.payload, model):
        raise TypeError(f"{ctx.event.type} carries {type(ctx.payload).__name__}, not {model}")
    return ctx.payload


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _lines(items: Any) -> list[Line]:
    return [Line.model_validate(item) for item in items or ()]


def _earliest(known: datetime | None, moment: datetime) -> datetime:
    return moment if known is None else min(known, moment)


def _table(model: type[Any]) -> sa.Table:
    return cast(sa.Table, model.__table__)


def _insert(session: AsyncSession, model: type[Any]) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(_table(model))
    if dialect == "sqlite":
        return sqlite.insert(_table(model))
    raise ValueError(f"no INSERT ... ON CONFLICT for {dialect}")


async def _add(
    session: AsyncSession,
    model: type[Any],
    keys: Mapping[str, Any],
    amounts: Mapping[str, int | Decimal],
) -> None:
    """Add `amounts` to the counters of the row `keys` names, making it first if need be.
    One statement, so replicas adding to the same hour at once never lose an addition."""
    table = _table(model)
    statement = _insert(session, model).values({**keys, **amounts})
    statement = statement.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + statement.excluded[name] for name in amounts},
    )
    await session.execute(statement)


async def _count(session: AsyncSession, moment: datetime, counter: str) -> None:
    await _add(session, HourlyCount, {"hour": _hour(moment)}, {counter: 1})


async def _fact(session: AsyncSession, model: type[Fact], key: uuid.UUID) -> Fact:
    """The row of `model` whose primary key is `key` (made empty when new), locked until the
    transaction ends: events of another topic about the same order or product, applied at
    the same moment by another replica, wait and then see what this one wrote."""
    table = _table(model)
    [column] = table.primary_key.columns
    dialect = session.get_bind().dialect.name
    await session.execute(
        insert_skipping_duplicates(table, dialect, column.name).values({column.name: key})
    )
    row = await session.scalar(
        sa.select(model)
        .where(column == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise LookupError(f"{table.name} {key} vanished after it was made")
    return row


async def _name(
    session: AsyncSession, product_id: uuid.UUID, name: str, moment: datetime, *, catalog: bool
) -> None:
    """Keep the product's name: the catalog's beats an order line's, a later one an earlier,
    and on a tie the greater text, so the order events arrive in does not matter."""
    product = await _fact(session, ProductFact, product_id)
    name = name[:255]
    known = (product.name_from_catalog, product.name_at, product.name)
    if known[1] is not None and known[2] is not None and (catalog, moment, name) <= known:
        return
    product.name, product.name_at, product.name_from_catalog = name, moment, catalog


async def _settle(session: AsyncSession, order: OrderFact) -> None:
    """Count what the order's events known so far allow and was not counted yet."""
    if order.confirmed_at is None or order.currency is None or order.amount is None:
        return
    if not order.revenue_counted:
        order.revenue_counted = True
        await _add(
            session,
            HourlyRevenue,
            {"hour": _hour(order.confirmed_at), "currency": order.currency},
            {"orders": 1, "revenue": order.amount},
        )
    if order.items is not None and not order.sales_counted:
        order.sales_counted = True
        sold: dict[uuid.UUID, tuple[int, Decimal]] = {}
        for line in _lines(order.items):
            units, revenue = sold.get(line.product_id, (0, Decimal(0)))
            sold[line.product_id] = (units + line.quantity, revenue + line.line_total)
        for product_id, (units, revenue) in sorted(sold.items()):
            await _add(
                session,
                ProductSale,
                {"product_id": product_id, "currency": order.currency},
                {"units": units, "orders": 1, "revenue": revenue},
            )


# -- events ------------------------------------------------------------------------------------


async def on_order_created(ctx: EventContext) -> None:
    """An order, its lines (for sales per product, once confirmed and paid) and the
    customer's first order; line names stand in for products the catalog events missed."""
    event = _payload(ctx, OrderCreated)
    lines = _lines(event.items)
    moment = ctx.event.timestamp
    order = await _fact(ctx.session, OrderFact, event.order_id)
    if order.created_at is not None:
        return
    order.created_at = moment
    order.items = [line.model_dump(mode="json") for line in lines]
    customer = await _fact(ctx.session, CustomerFact, event.user_id)
    customer.first_order_at = _earliest(customer.first_order_at, moment)
    for line in sorted(lines, key=lambda line: line.product_id):
        if line.name:
            await _name(ctx.session, line.product_id, line.name, moment, catalog=False)
    await _count(ctx.session, moment, "orders_created")
    await _settle(ctx.session, order)


async def on_order_confirmed(ctx: EventContext) -> None:
    """A confirmed order and its amount; its revenue once its payment's currency is known."""
    event = _payload(ctx, OrderConfirmed)
    order = await _fact(ctx.session, OrderFact, event.order_id)
    if order.confirmed_at is not None:
        return
    order.confirmed_at = ctx.event.timestamp
    order.amount = event.total_amount
    await _count(ctx.session, ctx.event.timestamp, "orders_confirmed")
    await _settle(ctx.session, order)


async def on_order_cancelled(ctx: EventContext) -> None:
    event = _payload(ctx, OrderCancelled)
    order = await _fact(ctx.session, OrderFact, event.order_id)
    if order.cancelled_at is not None:
        return
    order.cancelled_at = ctx.event.timestamp
    await _count(ctx.session, ctx.event.timestamp, "orders_cancelled")


async def on_payment_completed(ctx: EventContext) -> None:
    """The currency the order was paid in: the last thing its revenue may wait for."""
    event = _payload(ctx, PaymentCompleted)
    order = await _fact(ctx.session, OrderFact, event.order_id)
    if order.currency is not None:
        return
    order.currency = event.currency.upper()
    await _settle(ctx.session, order)


async def on_payment_failed(ctx: EventContext) -> None:
    await _count(ctx.session, ctx.event.timestamp, "payments_failed")


async def on_user_created(ctx: EventContext) -> None:
    """A new account (any role), counted once."""
    event = _payload(ctx, UserCreated)
    customer = await _fact(ctx.session, CustomerFact, event.user_id)
    if customer.registered_at is not None:
        return
    customer.registered_at = ctx.event.timestamp
    await _count(ctx.session, ctx.event.timestamp, "registrations")


async def on_product_created(ctx: EventContext) -> None:
    event = _payload(ctx, ProductCreated)
    await _name(ctx.session, event.product_id, event.name, ctx.event.timestamp, catalog=True)


async def on_product_updated(ctx: EventContext) -> None:
    """A renamed product (the other changed fields do not matter here)."""
    event = _payload(ctx, ProductUpdated)
    fields = event.fields if isinstance(event.fields, dict) else {}
    name = fields.get("name")
    if isinstance(name, str) and name:
        await _name(ctx.session, event.product_id, name, ctx.event.timestamp, catalog=True)


async def on_product_deleted(ctx: EventContext) -> None:
    event = _payload(ctx, ProductDeleted)
    product = await _fact(ctx.session, ProductFact, event.product_id)
    product.deleted_at = _earliest(product.deleted_at, ctx.event.timestamp)


async def on_inventory_low_stock(ctx: EventContext) -> None:
    """One more alert for the product; the level of the latest one (the lower level when
    two carry the same time)."""
    event = _payload(ctx, InventoryLowStock)
    moment = ctx.event.timestamp
    product = await _fact(ctx.session, ProductFact, event.product_id)
    product.low_stock_alerts += 1
    last_at, last_level = product.low_stock_at, product.available
    if last_at is None or last_level is None or (moment, -event.available) > (last_at, -last_level):
        product.available = event.available
        product.reorder_level = event.reorder_level
        product.low_stock_at = moment
    await _count(ctx.session, moment, "low_stock_alerts")


# -- the summary -------------------------------------------------------------------------------


def _money(amounts: Mapping[str, Decimal]) -> dict[str, str]:
    return {currency: str(amount) for currency, amount in sorted(amounts.items())}


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def _series(session: AsyncSession, since: datetime) -> list[dict[str, Any]]:
    """Per hour since `since`, oldest first; hours without events are left out."""
    hours: dict[datetime, dict[str, Any]] = {}
    counts = await session.scalars(sa.select(HourlyCount).where(HourlyCount.hour >= since))
    for row in counts:
        hours[row.hour] = {name: getattr(row, name) for name in COUNTERS}
    revenue: dict[datetime, dict[str, Decimal]] = {}
    sums = await session.scalars(sa.select(HourlyRevenue).where(HourlyRevenue.hour >= since))
    for sum_row in sums:
        revenue.setdefault(sum_row.hour, {})[sum_row.currency] = sum_row.revenue
    return [
        {
            "hour": hour.isoformat(),
            **hours.get(hour, dict.fromkeys(COUNTERS, 0)),
            "revenue": _money(revenue.get(hour, {})),
        }
        for hour in sorted(hours.keys() | revenue.keys())
    ]


def _window_totals(series: list[dict[str, Any]]) -> dict[str, Any]:
    revenue: dict[str, Decimal] = {}
    for hour in series:
        for currency, amount in hour["revenue"].items():
            revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(amount)
    return {
        **{name: sum(hour[name] for hour in series) for name in COUNTERS},
        "revenue": _money(revenue),
    }


async def _all_time(session: AsyncSession) -> dict[str, Any]:
    sums = (
        await session.execute(
            sa.select(
                *(sa.func.coalesce(sa.func.sum(getattr(HourlyCount, n)), 0) for n in COUNTERS)
            )
        )
    ).one()
    revenue = await session.execute(
        sa.select(HourlyRevenue.currency, sa.func.sum(HourlyRevenue.revenue)).group_by(
            HourlyRevenue.currency
        )
    )
    return {
        **{name: int(value) for name, value in zip(COUNTERS, sums, strict=True)},
        "revenue": _money({currency: amount for currency, amount in revenue}),
    }


async def _names(session: AsyncSession, ids: list[uuid.UUID]) -> dict[uuid.UUID, ProductFact]:
    rows = await session.scalars(sa.select(ProductFact).where(ProductFact.product_id.in_(ids)))
    return {row.product_id: row for row in rows}


async def _top_products(session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    """The products sold most (units of confirmed orders), most first."""
    units = sa.func.sum(ProductSale.units).label("units")
    orders = sa.func.sum(ProductSale.orders).label("orders")
    top = (
        await session.execute(
            sa.select(ProductSale.product_id, units, orders)
            .group_by(ProductSale.product_id)
            .order_by(units.desc(), ProductSale.product_id)
            .limit(limit)
        )
    ).all()
    ids = [row.product_id for row in top]
    revenue: dict[uuid.UUID, dict[str, Decimal]] = {}
    for sale in await session.scalars(
        sa.select(ProductSale).where(ProductSale.product_id.in_(ids))
    ):
        revenue.setdefault(sale.product_id, {})[sale.currency] = sale.revenue
    names = await _names(session, ids)
    return [
        {
            "product_id": str(row.product_id),
            "name": names[row.product_id].name if row.product_id in names else None,
            "deleted": row.product_id in names and names[row.product_id].deleted_at is not None,
            "units": int(row.units),
            "orders": int(row.orders),
            "revenue": _money(revenue.get(row.product_id, {})),
        }
        for row in top
    ]


async def _low_stock(session: AsyncSession, limit: int) -> list[dict[str, Any]]:
    """Products with low-stock alerts, the most recently alerted first."""
    rows = await session.scalars(
        sa.select(ProductFact)
        .where(ProductFact.low_stock_alerts > 0)
        .order_by(ProductFact.low_stock_at.desc(), ProductFact.product_id)
        .limit(limit)
    )
    return [
        {
            "product_id": str(row.product_id),
            "name": row.name,
            "alerts": row.low_stock_alerts,
            "available": row.available,
            "reorder_level": row.reorder_level,
            "last_alert_at": row.low_stock_at.isoformat() if row.low_stock_at else None,
        }
        for row in rows
    ]


async def _number(session: AsyncSession, model: type[Any], *where: Any) -> int:
    return int(
        await session.scalar(sa.select(sa.func.count()).select_from(model).where(*where)) or 0
    )


async def _conversion(session: AsyncSession, since: datetime) -> dict[str, Any]:
    """Of the orders created in the window, how many were confirmed (or cancelled) since;
    of the accounts created in the window, how many have ordered."""
    created = OrderFact.created_at >= since
    orders = await _number(session, OrderFact, created)
    confirmed = await _number(session, OrderFact, created, OrderFact.confirmed_at.is_not(None))
    cancelled = await _number(session, OrderFact, created, OrderFact.cancelled_at.is_not(None))
    registered = CustomerFact.registered_at >= since
    accounts = await _number(session, CustomerFact, registered)
    ordered = await _number(
        session, CustomerFact, registered, CustomerFact.first_order_at.is_not(None)
    )
    return {
        "orders_created": orders,
        "confirmed": confirmed,
        "cancelled": cancelled,
        "confirmed_share": _share(confirmed, orders),
        "registrations": accounts,
        "ordered": ordered,
        "ordered_share": _share(ordered, accounts),
        "view_to_order": None,
        "note": NO_VIEW_EVENTS,
    }


async def summary(ctx: Context) -> Any:
    """GET /api/analytics/summary (admin): totals and hourly series of the last `hours`,
    the `limit` top products and low-stock products, and conversion."""
    hours = ctx.query_int("hours", DEFAULT_HOURS, 1, MAX_HOURS)
    limit = ctx.query_int("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    until = _hour(datetime.now(UTC)) + timedelta(hours=1)
    since = until - timedelta(hours=hours)
    session = ctx.session
    series = await _series(session, since)
    unpaid = await _number(
        session,
        OrderFact,
        OrderFact.confirmed_at.is_not(None),
        OrderFact.revenue_counted.is_(False),
    )
    return {
        "window": {"hours": hours, "from": since.isoformat(), "until": until.isoformat()},
        "totals": _window_totals(series),
        "all_time": await _all_time(session),
        # Confirmed orders whose payment event has not arrived: their revenue waits for it.
        "confirmed_awaiting_payment": unpaid,
        "hourly": series,
        "top_products": await _top_products(session, limit),
        "low_stock": await _low_stock(session, limit),
        "conversion": await _conversion(session, since),
    }
