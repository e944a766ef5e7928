"""The invariant checker finds each kind of broken state, and passes a consistent one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from generated.services.inventory.models import Inventory, InventoryReservation
from generated.services.order.models import Order
from generated.services.payment.models import Payment
from handlers.invariants import check
from tests.services.conftest import migrate

PRODUCT = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def urls(tmp_path: Path) -> Iterator[dict[str, str]]:
    made = {
        name: f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
        for name in ("inventory", "order", "payment")
    }
    for name, url in made.items():
        migrate(name, url)
    yield made


async def _insert(url: str, *rows: Any) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as connection:
        for row in rows:
            table = type(row).__table__
            values = {c.name: getattr(row, c.key) for c in type(row).__mapper__.columns}
            await connection.execute(
                table.insert().values(**{k: v for k, v in values.items() if v is not None})
            )
    await engine.dispose()


def _order(status: str, quantity: int = 2, total: str = "20.00", created: datetime = NOW) -> Order:
    return Order(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        items=[{"product_id": str(PRODUCT), "quantity": quantity, "unit_price": "10.00"}],
        total_amount=Decimal(total),
        status=status,
        shipping_address={"line1": "x"},
        currency="USD",
        created_at=created,
        updated_at=created,
    )


def _payment(order: Order, status: str, amount: str = "20.00") -> Payment:
    return Payment(
        id=uuid.uuid4(),
        order_id=order.id,
        user_id=order.user_id,
        amount=Decimal(amount),
        currency="USD",
        status=status,
        idempotency_key=f"charge:{order.id}:{uuid.uuid4()}",
    )


def _held(order: Order, status: str, quantity: int = 2) -> InventoryReservation:
    return InventoryReservation(
        id=uuid.uuid4(), order_id=order.id, product_id=PRODUCT, quantity=quantity, status=status
    )


def run(urls: dict[str, str], **kwargs: Any) -> Any:
    return asyncio.run(check(urls, now=NOW, **kwargs))


def test_a_consistent_shop_passes(urls: dict[str, str]) -> None:
    confirmed, cancelled, pending = _order("confirmed"), _order("cancelled"), _order("pending")
    asyncio.run(_insert(urls["order"], confirmed, cancelled, pending))
    asyncio.run(
        _insert(
            urls["payment"],
            _payment(confirmed, "completed"),
            _payment(cancelled, "refunded"),
            _payment(pending, "processing"),
        )
    )
    asyncio.run(
        _insert(
            urls["inventory"],
            Inventory(id=uuid.uuid4(), product_id=PRODUCT, quantity=8, reserved=2),
            _held(confirmed, "committed"),
            _held(cancelled, "returned"),
            _held(pending, "reserved"),
        )
    )
    report = run(urls, initial_stock={str(PRODUCT): 10})
    assert report.ok, str(report)
    assert report.checked == {"products": 1, "reservations": 3, "orders": 3, "payments": 3}


def test_each_kind_of_violation_is_found(urls: dict[str, str]) -> None:
    charged_but_cancelled = _order("cancelled")
    unpaid_confirmed = _order("confirmed")
    twice_paid = _order("confirmed")
    stuck = _order("pending", created=NOW - timedelta(minutes=10))
    asyncio.run(_insert(urls["order"], charged_but_cancelled, unpaid_confirmed, twice_paid, stuck))
    ghost = _order("confirmed")  # never stored: its payment has no order
    asyncio.run(
        _insert(
            urls["payment"],
            _payment(charged_but_cancelled, "completed"),
            _payment(twice_paid, "completed"),
            _payment(twice_paid, "completed"),
            _payment(ghost, "completed"),
        )
    )
    asyncio.run(
        _insert(
            urls["inventory"],
            Inventory(id=uuid.uuid4(), product_id=PRODUCT, quantity=5, reserved=3),
            _held(charged_but_cancelled, "reserved"),
            _held(twice_paid, "committed"),
        )
    )
    report = run(urls, initial_stock={str(PRODUCT): 10})
    text = "\n".join(report.violations)
    assert not report.ok
    assert f"order {charged_but_cancelled.id} is cancelled but its payment is completed" in text
    assert f"order {charged_but_cancelled.id} is cancelled but still has reserved stock" in text
    assert f"order {unpaid_confirmed.id} is confirmed with 0 completed payments" in text
    assert f"order {unpaid_confirmed.id} is confirmed but its committed stock is {{}}" in text
    assert f"order {twice_paid.id} is confirmed with 2 completed payments" in text
    assert f"order {stuck.id} is still pending" in text
    assert f"payment completed for order {ghost.id}, which does not exist" in text
    assert f"product {PRODUCT}: reserved 3 but open reservations hold 2" in text
    assert f"product {PRODUCT}: initial 10 != available 2 + reserved 3 + sold 2" in text
    assert len(report.violations) == 9, text
