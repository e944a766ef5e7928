"""The shop's invariants, checked against the services' own databases (and the broker's
dead-letter topics): run it after any concurrency, fault or load test, and after benchmarks.

- stock: for every product, `0 <= reserved <= quantity`, `reserved` equals the units held by
  its open reservations, and, when the initial stock is known, initial = available +
  reserved + sold (sold = committed reservations);
- orders and stock: a confirmed (or later) order has every line committed; a cancelled one
  holds nothing;
- orders and payments: a confirmed (or later) order has exactly one completed payment, of
  its total; a cancelled order's payment is refunded or was never taken; no payment is
  completed for an order that does not exist;
- sagas: no order is pending past its saga's deadline (plus a grace period);
- events: no dead-letter topic holds an event (unless the caller expects some).

`python -m handlers.invariants --data-dir .cloudretail` checks a stack that `cloudretail up
--detach` runs; exit status 0 when every invariant holds, 1 with one line per violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cloudretail.runtime.db import normalize_database_url
from sqlalchemy.ext.asyncio import create_async_engine

from generated.services.inventory.models import Inventory, InventoryReservation
from generated.services.order.models import Order
from generated.services.payment.models import Payment

SETTLED = ("confirmed", "processing", "shipped", "delivered")
# How long an order may stay pending: the saga's deadline, plus time for recovery to run.
PENDING_GRACE = timedelta(seconds=60)
# The spec's database of each service checked here.
DATABASES = {
    "inventory": "cloudretail_inventory",
    "order": "cloudretail_orders",
    "payment": "cloudretail_payments",
}


@dataclass
class Report:
    checked: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        if self.ok:
            return f"invariants hold ({counts})"
        return "\n".join(
            [f"{len(self.violations)} invariant violations ({counts}):"]
            + [f"  - {line}" for line in self.violations]
        )


async def _rows(url: str, query: Any) -> list[Any]:
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as connection:
            return list((await connection.execute(query)).all())
    finally:
        await engine.dispose()


async def check(
    urls: Mapping[str, str],
    *,
    initial_stock: Mapping[str, int] | None = None,
    bootstrap: str | None = None,
    expected_dead_letters: int = 0,
    now: datetime | None = None,
) -> Report:
    """Check every invariant; `urls` maps service name (inventory, order, payment) to its
    database URL. `initial_stock` maps product id to the stock it started with."""
    report = Report()
    now = now or datetime.now(UTC)
    stock, reservations, orders, payments = await asyncio.gather(
        _rows(
            urls["inventory"],
            sa.select(Inventory.product_id, Inventory.quantity, Inventory.reserved),
        ),
        _rows(
            urls["inventory"],
            sa.select(
                InventoryReservation.order_id,
                InventoryReservation.product_id,
                InventoryReservation.quantity,
                InventoryReservation.status,
            ),
        ),
        _rows(
            urls["order"],
            sa.select(Order.id, Order.status, Order.items, Order.total_amount, Order.created_at),
        ),
        _rows(urls["payment"], sa.select(Payment.order_id, Payment.status, Payment.amount)),
    )
    report.checked = {
        "products": len(stock),
        "reservations": len(reservations),
        "orders": len(orders),
        "payments": len(payments),
    }
    bad = report.violations

    held: dict[uuid.UUID, int] = defaultdict(int)
    sold: dict[uuid.UUID, int] = defaultdict(int)
    by_order: dict[uuid.UUID, dict[str, dict[uuid.UUID, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int))
    )
    for order_id, product_id, quantity, status in reservations:
        by_order[order_id][status][product_id] += quantity
        if status == "reserved":
            held[product_id] += quantity
        elif status == "committed":
            sold[product_id] += quantity
    for product_id, quantity, reserved in stock:
        reserved = reserved or 0
        if not 0 <= reserved <= quantity:
            bad.append(f"product {product_id}: reserved {reserved} outside 0..{quantity}")
        if reserved != held[product_id]:
            bad.append(
                f"product {product_id}: reserved {reserved} but open reservations hold "
                f"{held[product_id]}"
            )
        if initial_stock is not None and str(product_id) in initial_stock:
            start = initial_stock[str(product_id)]
            available = quantity - reserved
            if start != available + reserved + sold[product_id]:
                bad.append(
                    f"product {product_id}: initial {start} != available {available} + "
                    f"reserved {reserved} + sold {sold[product_id]}"
                )

    paid: dict[uuid.UUID, list[tuple[str, Decimal]]] = defaultdict(list)
    for order_id, status, amount in payments:
        paid[order_id].append((status, Decimal(amount)))
    known = set()
    for order_id, status, items, total, created_at in orders:
        known.add(order_id)
        held_now = by_order[order_id]
        completed = [amount for state, amount in paid[order_id] if state == "completed"]
        if status in SETTLED:
            wanted: dict[uuid.UUID, int] = defaultdict(int)
            for line in items or []:
                wanted[uuid.UUID(str(line["product_id"]))] += int(line["quantity"])
            if dict(held_now["committed"]) != dict(wanted):
                bad.append(
                    f"order {order_id} is {status} but its committed stock is "
                    f"{dict(held_now['committed'])}, not {dict(wanted)}"
                )
            if len(completed) != 1:
                bad.append(
                    f"order {order_id} is {status} with {len(completed)} completed payments, not 1"
                )
            elif completed[0] != Decimal(total):
                bad.append(f"order {order_id}: paid {completed[0]}, total {total}")
        elif status == "cancelled":
            for state in ("reserved", "committed"):
                if held_now[state]:
                    bad.append(f"order {order_id} is cancelled but still has {state} stock")
            if completed:
                bad.append(
                    f"order {order_id} is cancelled but its payment is completed, not refunded"
                )
        elif status == "pending" and created_at is not None:
            created = created_at if created_at.tzinfo else created_at.replace(tzinfo=UTC)
            if now - created > PENDING_GRACE:
                bad.append(f"order {order_id} is still pending after {now - created}")
    for order_id, states in paid.items():
        if order_id not in known and any(state == "completed" for state, _ in states):
            bad.append(f"payment completed for order {order_id}, which does not exist")

    if bootstrap is not None:
        dead = await dead_letters(bootstrap)
        report.checked["dead letters"] = sum(dead.values())
        if sum(dead.values()) > expected_dead_letters:
            for topic, count in sorted(dead.items()):
                if count:
                    bad.append(f"dead-letter topic {topic} holds {count} events")
    return report


async def dead_letters(bootstrap: str) -> dict[str, int]:
    """How many records each `*.dlq` topic holds."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = [t for t in await consumer.topics() if t.endswith(".dlq")]
        counts: dict[str, int] = {}
        for topic in topics:
            partitions = [
                TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
            ]
            if not partitions:
                counts[topic] = 0
                continue
            start = await consumer.beginning_offsets(partitions)
            end = await consumer.end_offsets(partitions)
            counts[topic] = sum(end[tp] - start[tp] for tp in partitions)
        return counts
    finally:
        await consumer.stop()


def stack_urls(data_dir: Path) -> tuple[dict[str, str], str]:
    """The database URLs and the bootstrap of a stack `cloudretail up --detach` runs."""
    plan_file = data_dir / "stack.json"
    if not plan_file.exists():
        raise SystemExit(
            f"{plan_file} not found: start the stack with `cloudretail up --detach --data-dir "
            f"{data_dir}`, or give --database-url-template"
        )
    plan: dict[str, Any] = json.loads(plan_file.read_text())["plan"]
    return {d["name"]: d["url"] for d in plan["databases"]}, str(plan["bootstrap"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handlers.invariants", description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path(".cloudretail"))
    parser.add_argument("--database-url-template", help="e.g. postgresql://host/{database}")
    parser.add_argument("--bootstrap", help="Kafka bootstrap for the dead-letter check")
    args = parser.parse_args(argv)
    if args.database_url_template:
        urls = {
            service: args.database_url_template.format(database=database)
            for service, database in DATABASES.items()
        }
        bootstrap = args.bootstrap
    else:
        urls, bootstrap = stack_urls(args.data_dir)
        bootstrap = args.bootstrap or bootstrap
    report = asyncio.run(check(urls, bootstrap=bootstrap))
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
