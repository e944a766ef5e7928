"""Cancelling an order while its saga is charging the card: the customer is never left with
a cancelled order and a completed, unrefunded payment (issue 11, defect 3).

The four services run as real servers on loopback ports (tests/services/commerce.py); the
simulated provider approves `tok_slow` after 3 s, long enough to act during the charge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cloudretail.runtime.auth import TokenIssuer

from tests.services.commerce import Shop, eventually, order_body, running_shop


@pytest.fixture(params=["sqlite", "postgres"])
async def shop(
    request: pytest.FixtureRequest, tmp_path: Path, issuer: TokenIssuer
) -> AsyncIterator[Shop]:
    async with running_shop(request.param, tmp_path, issuer) as started:
        yield started


async def _charging(shop: Shop) -> dict[str, Any]:
    """The payment row, once the provider has been asked for the money."""
    from generated.services.payment.models import Payment

    async def processing() -> dict[str, Any] | None:
        table = Payment.__table__
        rows = await shop.rows("payment", table, table.c.status == "processing")
        return rows[0] if rows else None

    found: dict[str, Any] = await eventually(processing, 10, "a charge in progress")
    return found


async def _settled(shop: Shop, order_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The order and its payment once neither is in flight any more."""

    async def done() -> tuple[dict[str, Any], dict[str, Any]] | None:
        order = await shop.order(order_id)
        payment = await shop.payment(order_id)
        if order["status"] == "pending" or payment is None:
            return None
        if payment["status"] in ("pending", "processing"):
            return None
        if payment["status"] == "completed" and payment.get("refund_requested_at"):
            return None  # approved after its refund was asked for: the refund follows
        return order, payment

    settled: tuple[dict[str, Any], dict[str, Any]] = await eventually(done, 15, "settled")
    return settled


def _never_paid_and_cancelled(order: dict[str, Any], payment: dict[str, Any]) -> None:
    assert not (order["status"] == "cancelled" and payment["status"] == "completed"), (
        f"order {order['status']}, payment {payment['status']} (never refunded)"
    )


async def test_cancel_during_the_charge_never_leaves_a_paid_cancelled_order(shop: Shop) -> None:
    product_id = await shop.new_product(stock=5)
    customer = shop.bearer()
    async with shop.client("order") as client:
        placing = asyncio.create_task(
            client.post("/api/orders", json=order_body(product_id, 2, "tok_slow"), headers=customer)
        )
        payment = await _charging(shop)
        order_id = str(payment["order_id"])
        cancel = await client.post(f"/api/orders/{order_id}/cancel", headers=customer)
        placed = await placing
        order, payment = await _settled(shop, order_id)
        _never_paid_and_cancelled(order, payment)

        # The saga owns the order until it settles: the cancel is refused, saying why.
        assert cancel.status_code == 409, cancel.text
        assert cancel.headers["content-type"] == "application/problem+json"
        assert "still being placed" in cancel.json()["detail"]
        assert placed.status_code == 201, placed.text
        assert (order["status"], payment["status"]) == ("confirmed", "completed")
        assert await shop.stock(product_id) == (3, 0)

        # Once settled, the cancel goes through: refund and stock back.
        again = await client.post(f"/api/orders/{order_id}/cancel", headers=customer)
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "cancelled"
    payment_after = await shop.payment(order_id)
    assert payment_after is not None and payment_after["status"] == "refunded"
    assert await shop.stock(product_id) == (5, 0)
    assert (await shop.outbox_types("payment")).count("payment.refunded") == 1


async def test_a_charge_that_completes_after_the_saga_gave_up_is_refunded(shop: Shop) -> None:
    """The saga's charge call times out while the provider is still working; its
    compensation asks for a refund of a charge still processing. When the provider approves
    a moment later, the refund is made then."""
    shop.app("order").state.sagas.clients.timeout = 1.0
    product_id = await shop.new_product(stock=5)
    async with shop.client("order") as client:
        placed = await client.post(
            "/api/orders", json=order_body(product_id, 2, "tok_slow"), headers=shop.bearer()
        )
    assert placed.status_code == 504, placed.text
    order_id = placed.json()["order"]["id"]
    assert placed.json()["order"]["status"] == "cancelled"
    order, payment = await _settled(shop, order_id)
    _never_paid_and_cancelled(order, payment)
    assert payment["status"] == "refunded"
    assert payment["transaction_id"], payment  # the money moved, and the record says so
    types = await shop.outbox_types("payment")
    assert types.count("payment.completed") == types.count("payment.refunded") == 1
    assert await shop.stock(product_id) == (5, 0)
    # A repeated charge from the saga (a retry after a crash, say) is not a fresh charge.
    async with shop.client("payment") as client:
        repeated = await client.post(
            "/internal/payments/charges",
            json={
                "order_id": order_id,
                "user_id": str(order["user_id"]),
                "total_amount": "20.00",
                "payment_method": {"type": "card", "token": "tok_visa"},
            },
            headers={"X-Service-Token": "test-service-token"},
        )
    assert repeated.status_code == 409, repeated.text
    assert (await shop.payment(order_id) or {})["status"] == "refunded"
