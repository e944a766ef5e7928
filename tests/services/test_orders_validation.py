"""What an order request must be (issue 11, defect 20): JSON integers for quantities (no
`true`, no `"2"`), and an Idempotency-Key that names one request: reused with another
body it is 422, reused while the first request is in flight it is 409, as the IETF
Idempotency-Key draft says."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudretail.runtime.auth import TokenIssuer

from generated.services.order.models import Order
from tests.services.commerce import Shop, eventually, order_body, running_shop


@pytest.fixture(params=["sqlite", "postgres"])
async def shop(
    request: pytest.FixtureRequest, tmp_path: Path, issuer: TokenIssuer
) -> AsyncIterator[Shop]:
    async with running_shop(request.param, tmp_path, issuer) as started:
        yield started


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def _orders(shop: Shop) -> list[dict[str, Any]]:
    return await shop.rows("order", Order.__table__)


@pytest.mark.parametrize("quantity", [True, "2", 2.0, 2.5])
async def test_a_quantity_must_be_a_json_integer(shop: Shop, quantity: Any) -> None:
    product_id = await shop.new_product(stock=10)
    async with shop.client("order") as client:
        refused = await client.post(
            "/api/orders", json=order_body(product_id, quantity), headers=shop.bearer()
        )
    problem = _problem(refused, 422)
    assert [error["loc"] for error in problem["errors"]] == [["body", "items", 0, "quantity"]]
    assert await _orders(shop) == []
    assert await shop.stock(product_id) == (10, 0)


async def test_strict_bodies_still_take_uuid_strings_and_integers(shop: Shop) -> None:
    product_id = await shop.new_product(stock=10)
    async with shop.client("order") as client:
        placed = await client.post(
            "/api/orders", json=order_body(product_id, 2), headers=shop.bearer()
        )
    assert placed.status_code == 201, placed.text
    assert placed.json()["items"][0]["quantity"] == 2
    # Every hand-written body is strict, not only the order's: stock levels too.
    async with shop.client("inventory") as client:
        refused = await client.put(
            f"/api/inventory/{product_id}", json={"quantity": "5"}, headers=shop.admin
        )
    assert _problem(refused, 422)["errors"][0]["loc"] == ["body", "quantity"]


async def test_a_reused_idempotency_key_with_another_body_is_422(shop: Shop) -> None:
    product_id = await shop.new_product(stock=10)
    headers = {**shop.bearer(), "Idempotency-Key": "checkout-1"}
    async with shop.client("order") as client:
        first = await client.post("/api/orders", json=order_body(product_id, 1), headers=headers)
        other = await client.post("/api/orders", json=order_body(product_id, 3), headers=headers)
        # The same request again, written differently (key order, spacing): the same order.
        same = json.dumps(order_body(product_id, 1), sort_keys=True, indent=2)
        repeated = await client.post(
            "/api/orders",
            content=same,
            headers={**headers, "Content-Type": "application/json"},
        )
    assert first.status_code == 201, first.text
    problem = _problem(other, 422)
    assert "Idempotency-Key" in problem["detail"]
    assert repeated.status_code == 201, repeated.text
    assert repeated.json()["id"] == first.json()["id"]
    assert len(await _orders(shop)) == 1
    assert await shop.stock(product_id) == (9, 0)


async def test_a_reused_idempotency_key_while_the_first_is_in_flight_is_409(shop: Shop) -> None:
    product_id = await shop.new_product(stock=10)
    headers = {**shop.bearer(), "Idempotency-Key": "checkout-2"}
    body = order_body(product_id, 1, "tok_slow")
    async with shop.client("order") as client:
        first = asyncio.create_task(client.post("/api/orders", json=body, headers=headers))

        async def pending() -> bool:
            return any(row["status"] == "pending" for row in await _orders(shop))

        await eventually(pending, 10, "the first order to be in flight")
        during = await client.post("/api/orders", json=body, headers=headers)
        placed = await first
        after = await client.post("/api/orders", json=body, headers=headers)
    problem = _problem(during, 409)
    assert "in flight" in problem["detail"] and "Idempotency-Key" in problem["detail"]
    assert placed.status_code == after.status_code == 201, (placed.text, after.text)
    assert after.json()["id"] == placed.json()["id"]
    assert len(await _orders(shop)) == 1


async def test_simultaneous_requests_with_one_key_place_one_order(shop: Shop) -> None:
    product_id = await shop.new_product(stock=10)
    headers = {**shop.bearer(), "Idempotency-Key": "checkout-3"}
    body = order_body(product_id, 1, "tok_slow")
    async with shop.client("order") as client:
        answers = await asyncio.gather(
            *(client.post("/api/orders", json=body, headers=headers) for _ in range(2))
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201, 409], [answer.text for answer in answers]
    conflict = next(answer for answer in answers if answer.status_code == 409)
    assert "Idempotency-Key" in _problem(conflict, 409)["detail"]
    assert len(await _orders(shop)) == 1
    assert await shop.stock(product_id) == (9, 0)
