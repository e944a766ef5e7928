"""The inventory service's saga routes, called as the order saga calls them: what each
answers and what it leaves in stock, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

from cloudretail.runtime.auth import SERVICE_TOKEN_HEADER, TokenIssuer

from tests.services.conftest import SERVICE_TOKEN, service_client

SERVICE = {SERVICE_TOKEN_HEADER: SERVICE_TOKEN}
RESERVATIONS = "/internal/inventory/reservations"


async def test_reserve_then_commit_or_release(
    database_url: str, issuer: TokenIssuer, admin: dict[str, str]
) -> None:
    product = str(uuid.uuid4())
    async with service_client("inventory", database_url, issuer) as client:
        stocked = await client.put(
            f"/api/inventory/{product}", json={"quantity": 10}, headers=admin
        )
        assert stocked.status_code == 200, stocked.text

        async def reserve(quantity: int) -> str:
            order = str(uuid.uuid4())
            body = {"order_id": order, "items": [{"product_id": product, "quantity": quantity}]}
            held = await client.post(RESERVATIONS, json=body, headers=SERVICE)
            assert held.status_code == 200, held.text
            assert held.json()["items"] == [
                {"product_id": product, "quantity": quantity, "status": "reserved"}
            ]
            again = await client.post(RESERVATIONS, json=body, headers=SERVICE)
            assert again.json() == held.json()  # a repeated call: the same answer
            return order

        async def level() -> tuple[int, int]:
            answer = (await client.get(f"/api/inventory/{product}")).json()
            return answer["quantity"], answer["reserved"]

        paid, dropped = await reserve(3), await reserve(2)
        assert await level() == (10, 5)

        committed = await client.post(f"{RESERVATIONS}/{paid}/commit", headers=SERVICE)
        assert committed.status_code == 200, committed.text
        assert [item["status"] for item in committed.json()["items"]] == ["committed"]
        assert await level() == (7, 2)

        released = await client.post(f"{RESERVATIONS}/{dropped}/release", headers=SERVICE)
        assert [item["status"] for item in released.json()["items"]] == ["released"]
        assert await level() == (7, 0)

        # Committing again changes nothing and answers the same.
        again = await client.post(f"{RESERVATIONS}/{paid}/commit", headers=SERVICE)
        assert again.json() == committed.json()
        assert await level() == (7, 0)
