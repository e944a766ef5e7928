"""The same stack on PostgreSQL (a database per service, created by `up`) and Redis."""

from __future__ import annotations

from tests.stack.conftest import Stack
from tests.stack.test_commerce import concurrent_orders
from tests.stack.test_up_down import status_then_down, walk


def test_concurrent_orders_never_oversell_postgres(postgres_stack: Stack) -> None:
    concurrent_orders(postgres_stack)


def test_order_status_and_down_on_postgres_and_redis(postgres_stack: Stack) -> None:
    walk(postgres_stack)
    status_then_down(postgres_stack)
