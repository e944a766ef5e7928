"""Hand-written logic of the payment service's routes.

Each function handles one route of the spec; `cloudretail generate` adds a stub here for a
route it cannot find and never changes what is already written.
"""

from __future__ import annotations

from typing import Any

from runtime.handlers import Context, not_implemented


async def pay_order(ctx: Context) -> Any:
    """POST /api/payments (authenticated)."""
    raise not_implemented("payment", "pay_order")


async def get_payment(ctx: Context) -> Any:
    """GET /api/payments/{id} (authenticated)."""
    raise not_implemented("payment", "get_payment")


async def charge(ctx: Context) -> Any:
    """POST /internal/payments/charges (service)."""
    raise not_implemented("payment", "charge")


async def refund(ctx: Context) -> Any:
    """POST /internal/payments/charges/{order_id}/refund (service)."""
    raise not_implemented("payment", "refund")
