"""Hand-written logic of the user service's routes.

Each function handles one route of the spec; `cloudretail generate` adds a stub here for a
route it cannot find and never changes what is already written.
"""

from __future__ import annotations

from typing import Any

from runtime.handlers import Context, not_implemented


async def register(ctx: Context) -> Any:
    """POST /api/users/register (public)."""
    raise not_implemented("user", "register")


async def login(ctx: Context) -> Any:
    """POST /api/users/login (public)."""
    raise not_implemented("user", "login")


async def get_profile(ctx: Context) -> Any:
    """GET /api/users/profile (authenticated)."""
    raise not_implemented("user", "get_profile")


async def update_profile(ctx: Context) -> Any:
    """PATCH /api/users/profile (authenticated)."""
    raise not_implemented("user", "update_profile")


async def delete_profile(ctx: Context) -> Any:
    """DELETE /api/users/profile (authenticated)."""
    raise not_implemented("user", "delete_profile")


async def export_profile(ctx: Context) -> Any:
    """GET /api/users/profile/export (authenticated)."""
    raise not_implemented("user", "export_profile")


async def setup_2fa(ctx: Context) -> Any:
    """POST /api/users/2fa/setup (authenticated)."""
    raise not_implemented("user", "setup_2fa")


async def enable_2fa(ctx: Context) -> Any:
    """POST /api/users/2fa/enable (authenticated)."""
    raise not_implemented("user", "enable_2fa")


async def jwks(ctx: Context) -> Any:
    """GET /api/users/.well-known/jwks.json (public)."""
    raise not_implemented("user", "jwks")


async def create_user(ctx: Context) -> Any:
    """POST /api/users (admin: admin)."""
    raise not_implemented("user", "create_user")
