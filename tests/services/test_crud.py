"""CRUD routes generated from the spec's tables: products (full CRUD, cached) and users."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.auth import TokenIssuer

from tests.services.conftest import service_client


def product(n: int, **fields: Any) -> dict[str, Any]:
    body = {"name": f"Product {n}", "price": f"{n}.50", "sku": f"SKU-{n:03d}", "category": "tools"}
    return {**body, **fields}


async def create(client: httpx.AsyncClient, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/products", json=fields, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()


async def test_create_get_update_replace_delete(database_url, issuer: TokenIssuer, admin):
    async with service_client("product", database_url, issuer) as client:
        made = await create(client, admin, **product(1, description="A fine tool"))
        assert made["price"] == "1.50"
        assert made["is_active"] is True
        uuid.UUID(made["id"])
        assert made["created_at"].endswith("Z") or "+00:00" in made["created_at"]

        got = await client.get(f"/api/products/{made['id']}")
        assert got.json() == made

        patched = await client.patch(
            f"/api/products/{made['id']}", json={"price": "2.25"}, headers=admin
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["price"] == "2.25"
        assert patched.json()["name"] == "Product 1"  # untouched

        replaced = await client.put(
            f"/api/products/{made['id']}", json=product(9, description=None), headers=admin
        )
        assert replaced.status_code == 200
        assert replaced.json()["sku"] == "SKU-009"
        assert replaced.json()["description"] is None

        deleted = await client.delete(f"/api/products/{made['id']}", headers=admin)
        assert deleted.status_code == 204
        gone = await client.get(f"/api/products/{made['id']}")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
        assert gone.json()["status"] == 404


async def test_decimal_precision_is_kept_end_to_end(database_url, issuer, admin):
    async with service_client("product", database_url, issuer) as client:
        exact = await create(client, admin, **product(1, price="12345678.99"))
        assert exact["price"] == "12345678.99"
        from_number = await create(client, admin, **product(2, price=0.1))
        assert from_number["price"] == "0.10"
        again = (await client.get(f"/api/products/{exact['id']}")).json()
        assert Decimal(again["price"]) == Decimal("12345678.99")
        too_fine = await client.post("/api/products", json=product(3, price="1.999"), headers=admin)
        assert too_fine.status_code == 422
        too_big = await client.post(
            "/api/products", json=product(4, price="123456789.00"), headers=admin
        )
        assert too_big.status_code == 422


async def test_pagination_filters_and_sorting(database_url, issuer, admin):
    async with service_client("product", database_url, issuer) as client:
        for n in range(1, 26):
            await create(
                client,
                admin,
                **product(
                    n,
                    category="garden" if n % 5 == 0 else "tools",
                    is_active=n != 7,
                    description="Stainless STEEL 100%" if n == 3 else None,
                ),
            )
        page = (await client.get("/api/products", params={"limit": 10, "offset": 20})).json()
        assert (page["total"], page["limit"], page["offset"], len(page["items"])) == (25, 10, 20, 5)

        garden = (await client.get("/api/products", params={"category": "garden"})).json()
        assert garden["total"] == 5
        assert {item["category"] for item in garden["items"]} == {"garden"}

        priced = await client.get(
            "/api/products", params={"min_price": "10", "max_price": "12.5", "sort": "-price"}
        )
        prices = [item["price"] for item in priced.json()["items"]]
        assert prices == ["12.50", "11.50", "10.50"]

        found = (await client.get("/api/products", params={"q": "steel"})).json()
        assert [item["sku"] for item in found["items"]] == ["SKU-003"]
        literal = (await client.get("/api/products", params={"q": "100%"})).json()
        assert literal["total"] == 1  # % matches itself, not "anything"

        inactive = (await client.get("/api/products", params={"is_active": "false"})).json()
        assert [item["sku"] for item in inactive["items"]] == ["SKU-007"]

        by_name = (await client.get("/api/products", params={"sort": "name", "limit": 3})).json()
        assert [item["name"] for item in by_name["items"]] == [
            "Product 1",
            "Product 10",
            "Product 11",
        ]


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 101}, ["query", "limit"]),
        ({"offset": -1}, ["query", "offset"]),
        ({"sort": "password"}, ["query", "sort"]),
        ({"min_price": "cheap"}, ["query", "min_price"]),
    ],
)
async def test_bad_query_is_a_422_problem(database_url, issuer, params, location):
    async with service_client("product", database_url, issuer) as client:
        response = await client.get("/api/products", params=params)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == location


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "sku": "S"},  # price missing
        {"name": "x", "sku": "S", "price": "-1"},  # CHECK price >= 0
        {"name": "x", "sku": "S", "price": "1", "colour": "red"},  # unknown field
        {"name": "x" * 256, "sku": "S", "price": "1"},  # VARCHAR(255)
        {"name": "x", "sku": "S", "price": "1", "id": str(uuid.uuid4())},  # ids are not chosen
    ],
)
async def test_bad_body_is_a_422_problem(database_url, issuer, admin, body):
    async with service_client("product", database_url, issuer) as client:
        response = await client.post("/api/products", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Unprocessable Content"


async def test_patch_cannot_null_a_not_null_column(database_url, issuer, admin):
    async with service_client("product", database_url, issuer) as client:
        made = await create(client, admin, **product(1))
        response = await client.patch(
            f"/api/products/{made['id']}", json={"name": None}, headers=admin
        )
        assert response.status_code == 422
        allowed = await client.patch(
            f"/api/products/{made['id']}", json={"category": None}, headers=admin
        )
        assert allowed.status_code == 200
        assert allowed.json()["category"] is None


async def test_duplicate_unique_value_is_a_409_problem(database_url, issuer, admin):
    async with service_client("product", database_url, issuer) as client:
        await create(client, admin, **product(1))
        response = await client.post("/api/products", json=product(1), headers=admin)
        count = (await client.get("/api/products")).json()["total"]
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert "SKU" not in response.text and "INSERT" not in response.text
    assert count == 1


async def test_auth_rules_of_the_spec(database_url, issuer, admin, customer):
    async with service_client("product", database_url, issuer) as client:
        anonymous = await client.post("/api/products", json=product(1))
        as_customer = await client.post("/api/products", json=product(1), headers=customer)
        bad_token = await client.post(
            "/api/products", json=product(1), headers={"Authorization": "Bearer x.y.z"}
        )
        public = await client.get("/api/products")
    assert anonymous.status_code == 401
    assert as_customer.status_code == 403
    assert bad_token.status_code == 401
    assert public.status_code == 200


async def test_reads_are_cached_and_writes_invalidate(database_url, issuer, admin):
    async with service_client("product", database_url, issuer) as client:
        made = await create(client, admin, **product(1))
        first = await client.get("/api/products", params={"category": "tools"})
        second = await client.get("/api/products", params={"category": "tools"})
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert first.json() == second.json()
        one = await client.get(f"/api/products/{made['id']}")
        assert one.headers["x-cache"] == "MISS"
        await client.patch(f"/api/products/{made['id']}", json={"price": "5.00"}, headers=admin)
        after = await client.get("/api/products", params={"category": "tools"})
        assert after.headers["x-cache"] == "MISS"
        assert after.json()["items"][0]["price"] == "5.00"
        fresh = await client.get(f"/api/products/{made['id']}")
        assert fresh.json()["price"] == "5.00"


async def test_secret_columns_never_leave_the_service(database_url, issuer, admin, customer):
    async with service_client("user", database_url, issuer) as client:
        app = client.app  # type: ignore[attr-defined]
        from generated.services.user.models import User

        async with app.state.database.session() as session:
            session.add(
                User(
                    email="ada@example.com",
                    password="$argon2id$v=19$secret-hash",
                    first_name="Ada",
                    last_name="Lovelace",
                    role="customer",
                    gdpr_consent=True,
                    two_factor_secret="JBSWY3DPEHPK3PXP",
                )
            )
        listed = await client.get("/api/users", headers=admin)
        refused = await client.get("/api/users", headers=customer)
        count = await _count_users(app)
    assert listed.status_code == 200
    (user,) = listed.json()["items"]
    assert user["email"] == "ada@example.com"
    assert "password" not in user and "two_factor_secret" not in user
    assert "argon2" not in listed.text and "JBSWY3DPEHPK3PXP" not in listed.text
    assert refused.status_code == 403
    assert count == 1


async def _count_users(app: Any) -> int:
    async with app.state.database.session() as session:
        return int(await session.scalar(sa.text("SELECT count(*) FROM users")))
