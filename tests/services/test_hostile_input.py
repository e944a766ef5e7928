"""Hostile input on public routes: every one is a 422 problem naming what is wrong, never a 500.

Each test runs on SQLite and on a real PostgreSQL (the `database_url` fixture), because the
two fail differently when a value does not fit (SQLite's integers, PostgreSQL's NUL bytes).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from cloudretail.runtime.auth import TokenIssuer

from tests.services.conftest import service_client

PROBLEM = "application/problem+json"


@pytest.fixture(autouse=True)
def isolated_keys(tmp_path, monkeypatch) -> None:
    # The user service makes a signing key in development; keep it out of the checkout.
    monkeypatch.setenv("CLOUDRETAIL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_EMAIL", raising=False)
    monkeypatch.delenv("CLOUDRETAIL_ADMIN_PASSWORD", raising=False)


def assert_422_at(
    response: httpx.Response, location: list[Any], *, prefix: bool = False
) -> dict[str, Any]:
    """A 422 problem with an error at `location` (or, with `prefix`, somewhere below it)."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == 422
    locations = [error["loc"] for error in body["errors"]]
    if prefix:
        assert any(found[: len(location)] == location for found in locations), locations
    else:
        assert location in locations, locations
    assert "Traceback" not in response.text
    return body


def person(**fields: Any) -> dict[str, Any]:
    return {
        "email": "ada@example.com",
        "password": "correct horse battery",
        "first_name": "Ada",
        "last_name": "Lovelace",
        "gdpr_consent": True,
        **fields,
    }


@pytest.mark.parametrize(
    ("params", "location"),
    [
        ({"offset": "99999999999999999999"}, ["query", "offset"]),  # beyond BIGINT
        ({"offset": str(2**63)}, ["query", "offset"]),
        ({"min_price": "1e999999"}, ["query", "min_price"]),
        ({"max_price": "-1e999999"}, ["query", "max_price"]),
        ({"min_price": "123456789"}, ["query", "min_price"]),  # beyond NUMERIC(10,2)
        ({"min_price": "NaN"}, ["query", "min_price"]),
        ({"min_price": "Infinity"}, ["query", "min_price"]),
        ({"q": "steel\x00"}, ["query", "q"]),
        ({"category": "\x00tools"}, ["query", "category"]),
    ],
)
async def test_hostile_query_is_a_422_naming_the_parameter(
    database_url: str, issuer: TokenIssuer, params: dict[str, str], location: list[str]
) -> None:
    async with service_client("product", database_url, issuer) as client:
        response = await client.get("/api/products", params=params)
        # The service is still fine afterwards.
        assert (await client.get("/api/products")).status_code == 200
    assert_422_at(response, location)


async def test_largest_offset_and_price_that_fit_still_work(
    database_url: str, issuer: TokenIssuer
) -> None:
    async with service_client("product", database_url, issuer) as client:
        far = await client.get("/api/products", params={"offset": str(2**63 - 1)})
        priced = await client.get(
            "/api/products", params={"min_price": "99999999.99", "max_price": "-99999999.99"}
        )
    assert far.status_code == 200, far.text
    assert far.json()["items"] == []
    assert priced.status_code == 200, priced.text


@pytest.mark.parametrize("offset", ["99999999999999999999", "-1", "x"])
async def test_a_hand_written_list_bounds_its_offset_too(
    database_url: str, issuer: TokenIssuer, customer: dict[str, str], offset: str
) -> None:
    async with service_client("order", database_url, issuer) as client:
        response = await client.get("/api/orders", params={"offset": offset}, headers=customer)
        assert (await client.get("/api/orders", headers=customer)).status_code == 200
    assert_422_at(response, ["query", "offset"])


@pytest.mark.parametrize(
    ("route", "body", "location"),
    [
        ("/api/users/register", person(first_name="Ada\x00"), ["body", "first_name"]),
        ("/api/users/register", person(email="ada\x00@example.com"), ["body", "email"]),
        ("/api/users/login", {"email": "ada@example.com\x00", "password": "x"}, ["body", "email"]),
        ("/api/users/login", {"email": "a@b.c", "password": "pass\x00word"}, ["body", "password"]),
        ("/api/users/login", {"email": "a@b.c", "password": "x", "\x00": 1}, ["body", "\x00"]),
    ],
)
async def test_nul_in_a_json_body_is_a_422_naming_the_field(
    database_url: str, route: str, body: dict[str, Any], location: list[str]
) -> None:
    async with service_client("user", database_url, None) as client:
        response = await client.post(route, json=body)
        assert (await client.get("/health/ready")).status_code == 200
    assert_422_at(response, location)


async def test_nul_in_a_crud_body_is_a_422_naming_the_field(
    database_url: str, issuer: TokenIssuer, admin: dict[str, str]
) -> None:
    body = {"name": "Saw\x00", "sku": "SKU-1", "price": "1.00"}
    async with service_client("product", database_url, issuer) as client:
        response = await client.post("/api/products", json=body, headers=admin)
        count = (await client.get("/api/products")).json()["total"]
    assert_422_at(response, ["body", "name"])
    assert count == 0


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
async def test_deeply_nested_json_is_a_422(database_url: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    raw = '{"email": ' + nested + ', "password": "x"}'
    async with service_client("user", database_url, None) as client:
        response = await client.post(
            "/api/users/login", content=raw, headers={"Content-Type": "application/json"}
        )
    # The error points into the field, also past what the JSON parser itself can nest.
    body = assert_422_at(response, ["body", "email"], prefix=True)
    assert "nested" in json.dumps(body["errors"])


async def test_nesting_within_the_limit_is_left_to_the_route(
    database_url: str, issuer: TokenIssuer, admin: dict[str, str]
) -> None:
    # 20 levels is fine for the guard; the route's own validation then answers.
    nested: Any = "x"
    for _ in range(20):
        nested = [nested]
    body = {"name": nested, "sku": "SKU-1", "price": "1.00"}
    async with service_client("product", database_url, issuer) as client:
        response = await client.post("/api/products", json=body, headers=admin)
    assert_422_at(response, ["body", "name"])
    assert "nested" not in response.text


HANDLER_KEYS = [
    ("inventory", "GET", "/api/inventory/{}", "product_id"),
    ("inventory", "PUT", "/api/inventory/{}", "product_id"),
    ("inventory", "POST", "/internal/inventory/reservations/{}/release", "order_id"),
    ("inventory", "POST", "/internal/inventory/reservations/{}/commit", "order_id"),
    ("order", "GET", "/api/orders/{}", "id"),
    ("order", "POST", "/api/orders/{}/cancel", "id"),
    ("order", "PATCH", "/api/orders/{}/status", "id"),
    ("payment", "GET", "/api/payments/{}", "id"),
    ("payment", "POST", "/internal/payments/charges/{}/refund", "order_id"),
]


@pytest.mark.parametrize(("service", "method", "path", "name"), HANDLER_KEYS)
async def test_a_key_that_is_not_a_uuid_is_a_422_naming_it(
    service: str,
    method: str,
    path: str,
    name: str,
    database_url: str,
    issuer: TokenIssuer,
    admin: dict[str, str],
) -> None:
    headers = {**admin, "X-Service-Token": "test-service-token"}
    body = {"PUT": {"quantity": 1}, "PATCH": {"status": "shipped"}}.get(method)
    async with service_client(service, database_url, issuer) as client:
        for key in ("0", "not-a-uuid"):
            response = await client.request(method, path.format(key), headers=headers, json=body)
            assert_422_at(response, ["path", name])
        # A NUL byte is refused before any route sees the path.
        response = await client.request(method, path.format("%00"), headers=headers, json=body)
        assert_422_at(response, ["path"], prefix=True)
