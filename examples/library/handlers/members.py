"""Members: registration, login, and the keys that verify the library's tokens.

The members service is the spec's token issuer (`auth.issuer`): it signs RS256 tokens
carrying the member's role (`member`, `librarian` or `admin`) and serves the public half of
its key as a JWKS, which the gateway and the other services read. Anyone may register as a
`member`; an admin adds librarians (and other admins). The first admin comes from the
environment (CLOUDRETAIL_ADMIN_EMAIL / CLOUDRETAIL_ADMIN_PASSWORD, which `cloudretail up`
sets), created at start-up when absent and never made from an existing account.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import anyio.to_thread
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cloudretail.runtime.auth import start_issuing, token_issuer
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.handlers import Context, created
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, EmailStr, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.members.events import publish
from generated.services.members.models import Member
from generated.services.members.schemas import MemberRead

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Checked when the email is unknown, so "no such member" and "wrong password" take as long.
_DUMMY_HASH = _hasher.hash("a password that matches no account")


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=255)
    password: str = Field(min_length=8, max_length=128)
    name: str = Field(min_length=1, max_length=200)


class StaffMember(Registration):
    """What an admin sends to add a librarian (or another admin)."""

    role: Literal["librarian", "admin"] = "librarian"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=255)
    password: str = Field(max_length=128)


# -- helpers -------------------------------------------------------------------------------


async def _hash(password: str) -> str:
    return await anyio.to_thread.run_sync(_hasher.hash, password)


async def _verify(hashed: str, password: str) -> bool:
    try:
        return bool(await anyio.to_thread.run_sync(_hasher.verify, hashed, password))
    except (VerificationError, InvalidHashError):
        return False


def _read(member: Member) -> dict[str, Any]:
    return MemberRead.model_validate(member).model_dump(mode="json")


async def _by_email(session: AsyncSession, email: str) -> Member | None:
    query = sa.select(Member).where(sa.func.lower(Member.email) == email.strip().lower())
    return (await session.scalars(query)).first()


async def _insert(
    session: AsyncSession, *, email: str, password: str, name: str, role: str
) -> Member:
    if await _by_email(session, email) is not None:
        raise Problem(409, detail="an account with this email already exists")
    member = Member(email=email.lower(), password=await _hash(password), name=name, role=role)
    session.add(member)
    try:
        await session.flush()
    except IntegrityError:
        raise Problem(409, detail="an account with this email already exists") from None
    await publish(
        session,
        "member.registered",
        {"member_id": member.id, "email": member.email, "role": role},
    )
    return member


# -- routes --------------------------------------------------------------------------------


async def register(ctx: Context) -> Any:
    """POST /api/members/register (public): a new member account."""
    body = await ctx.body(Registration)
    member = await _insert(
        ctx.session, email=body.email, password=body.password, name=body.name, role="member"
    )
    await ctx.session.commit()
    return created(_read(member), headers={"Location": "/api/members/me"})


async def add_staff(ctx: Context) -> Any:
    """POST /api/members/staff (admin): a librarian or an admin."""
    body = await ctx.body(StaffMember)
    member = await _insert(
        ctx.session, email=body.email, password=body.password, name=body.name, role=body.role
    )
    await ctx.session.commit()
    return created(_read(member))


async def login(ctx: Context) -> Any:
    """POST /api/members/login (public): a bearer token for the right email and password."""
    body = await ctx.body(Credentials)
    member = await _by_email(ctx.session, body.email)
    hashed = member.password if member is not None else _DUMMY_HASH
    if not await _verify(hashed, body.password) or member is None:
        raise Problem(401, title="Invalid credentials", detail="the email or password is wrong")
    issuer = token_issuer(ctx.request.app)
    token = issuer.issue(str(member.id), member.role, email=member.email, name=member.name)
    return {"access_token": token, "token_type": "bearer", "expires_in": issuer.ttl}


async def me(ctx: Context) -> Any:
    """GET /api/members/me (authenticated): the caller's account."""
    member = await ctx.session.get(Member, ctx.user.user_id)
    if member is None:
        raise Problem(404, detail="this account no longer exists")
    return _read(member)


async def jwks(ctx: Context) -> Any:
    """GET /api/members/.well-known/jwks.json (public): the keys that verify our tokens."""
    return token_issuer(ctx.request.app).jwks()


async def revocations(ctx: Context) -> Any:
    """GET /api/members/.well-known/revocations.json (public): verifiers read this beside
    the JWKS. The library revokes no token before it expires, so the list is empty."""
    return {"revoked": []}


# -- start-up ------------------------------------------------------------------------------


async def _ensure_admin(app: FastAPI) -> None:
    """Create the bootstrap admin when both variables are set and the email is free; an
    existing account of that email is left as it is (never promoted)."""
    settings: ServiceSettings = app.state.settings
    email = (settings.cloudretail_admin_email or "").strip().lower()
    secret = settings.cloudretail_admin_password
    password = secret.get_secret_value() if secret is not None else ""
    if not email or not password:
        return
    async with app.state.database.session() as session:
        existing = await _by_email(session, email)
        if existing is not None:
            if existing.role != "admin":
                logger.error(
                    "CLOUDRETAIL_ADMIN_EMAIL names an existing account that is not an admin; "
                    "it is not promoted",
                    extra={"email": email},
                )
            return
        try:
            await _insert(
                session, email=email, password=password, name="Library admin", role="admin"
            )
        except Problem:  # made meanwhile by another replica
            await session.rollback()
            return
        await session.commit()
        logger.info("created the bootstrap admin", extra={"email": email})


async def startup(app: FastAPI) -> None:
    start_issuing(app)
    await _ensure_admin(app)
