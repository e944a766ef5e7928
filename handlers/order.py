"""Hand-written logic of the order service's routes.

Each function handles one route of the spec; `cloudretail generate` adds a stub here for a
route it cannot find and never changes what is already written.
"""

from __future__ import annotations

from typing import Any

from runtime.handlers import Context, not_implemented


async def place_order(ctx: Context) -> Any:
    """POST /api/orders (authenticated)."""
    raise not_implemented("order", "place_order")


async def list_orders(ctx: Context) -> Any:
    """GET /api/orders (authenticated)."""
    raise not_implemented("order", "list_orders")


async def get_order(ctx: Context) -> Any:
    """GET /api/orders/{id} (authenticated)."""
    raise not_implemented("order", "get_order")


async def cancel_order(ctx: Context) -> Any:
    """POST /api/orders/{id}/cancel (authenticated)."""
    raise not_implemented("order", "cancel_order")


async def update_status(ctx: Context) -> Any:
    """PATCH /api/orders/{id}/status (admin: admin)."""
    raise not_implemented("order", "update_status")
