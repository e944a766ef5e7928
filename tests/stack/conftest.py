"""The whole platform as `cloudretail up --detach` runs it: real processes on the spec's
ports, the embedded Kafka-protocol broker, SQLite files or PostgreSQL + Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.exceptions import RedisError

from tests.servers import REDIS_TEST_URL, database_dsn, ensure_database, unreachable

ROOT = Path(__file__).resolve().parents[2]
ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CLOUDRETAIL_ADMIN_EMAIL": "", "CLOUDRETAIL_ADMIN_PASSWORD": ""},
    )


@dataclass
class Stack:
    data_dir: Path
    gateway: str
    admin_email: str
    admin_password: str

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway, timeout=30.0)

    def state(self) -> dict[str, Any]:
        return json.loads((self.data_dir / "state.json").read_text())

    def login(self, email: str, password: str) -> dict[str, str]:
        with self.client() as client:
            response = client.post("/api/users/login", json={"email": email, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def admin(self) -> dict[str, str]:
        return self.login(self.admin_email, self.admin_password)

    def customer(self) -> tuple[str, dict[str, str]]:
        email = f"shopper-{uuid.uuid4().hex[:8]}@cloudretail.example"
        with self.client() as client:
            response = client.post(
                "/api/users/register",
                json={
                    "email": email,
                    "password": "correct horse battery",
                    "first_name": "Test",
                    "last_name": "Shopper",
                    "gdpr_consent": True,
                },
            )
        assert response.status_code == 201, response.text
        return email, self.login(email, "correct horse battery")


def order_body(product_id: str, quantity: int = 1, token: str = "tok_visa") -> dict[str, Any]:
    return {
        "items": [{"product_id": product_id, "quantity": quantity}],
        "shipping_address": ADDRESS,
        "payment_method": {"type": "card", "token": token},
    }


def new_product(stack: Stack, admin: dict[str, str], stock: int, price: str = "10.00") -> str:
    with stack.client() as client:
        made = client.post(
            "/api/products",
            json={"name": "Test item", "price": price, "sku": f"T-{uuid.uuid4().hex[:10]}"},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        product_id: str = made.json()["id"]
        stocked = client.put(
            f"/api/inventory/{product_id}", json={"quantity": stock}, headers=admin
        )
        assert stocked.status_code == 200, stocked.text
    return product_id


def stock_of(stack: Stack, product_id: str) -> tuple[int, int]:
    with stack.client() as client:
        level = client.get(f"/api/inventory/{product_id}").json()
    return level["quantity"], level["reserved"]


def start(data_dir: Path, *extra: str) -> Stack:
    result = cli("up", "--detach", "--data-dir", str(data_dir), "--reset", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    secrets = json.loads((data_dir / "secrets.json").read_text())
    return Stack(
        data_dir, "http://127.0.0.1:8080", "admin@cloudretail.example", secrets["admin_password"]
    )


def stop(stack: Stack) -> subprocess.CompletedProcess[str]:
    return cli("down", "--data-dir", str(stack.data_dir))


@pytest.fixture(scope="module")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start(tmp_path_factory.mktemp("stack"))
    try:
        yield stack
    finally:
        stop(stack)


def require_postgres_and_redis() -> None:
    """Skip (saying why) when PostgreSQL or Redis is down; with CLOUDRETAIL_REQUIRE_SERVICES, fail."""
    ensure_database("cloudretail_stack_probe")
    try:
        Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2).ping()
    except RedisError as error:
        unreachable(f"Redis not reachable at {REDIS_TEST_URL}", error)


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_postgres_and_redis()
    template = database_dsn("cloudretail_stack_{database}")
    stack = start(
        tmp_path_factory.mktemp("pgstack"),
        "--database-url-template",
        template,
        "--redis-url",
        REDIS_TEST_URL,
    )
    try:
        yield stack
    finally:
        stop(stack)


def assert_invariants(stack: Stack, initial_stock: dict[str, int] | None = None) -> None:
    """The shop's invariants over the stack's databases and dead-letter topics."""
    from handlers.invariants import check, stack_urls
    from tests.servers import run_in_own_loop

    urls, bootstrap = stack_urls(stack.data_dir)
    report = run_in_own_loop(lambda: check(urls, initial_stock=initial_stock, bootstrap=bootstrap))
    assert report.ok, str(report)
