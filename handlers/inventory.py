"""Hand-written logic of the inventory service's routes.

Each function handles one route of the spec; `cloudretail generate` adds a stub here for a
route it cannot find and never changes what is already written.
"""

from __future__ import annotations

from typing import Any

from runtime.handlers import Context, not_implemented


async def get_stock(ctx: Context) -> Any:
    """GET /api/inventory/{product_id} (public)."""
    raise not_implemented("inventory", "get_stock")


async def set_stock(ctx: Context) -> Any:
    """PUT /api/inventory/{product_id} (admin: admin)."""
    raise not_implemented("inventory", "set_stock")


async def reserve(ctx: Context) -> Any:
    """POST /internal/inventory/reservations (service)."""
    raise not_implemented("inventory", "reserve")


async def release(ctx: Context) -> Any:
    """POST /internal/inventory/reservations/{order_id}/release (service)."""
    raise not_implemented("inventory", "release")


async def commit(ctx: Context) -> Any:
    """POST /internal/inventory/reservations/{order_id}/commit (service)."""
    raise not_implemented("inventory", "commit")
