"""Identity: registration, login (with TOTP when enabled), profile, GDPR export and erasure.

Tokens are RS256 JWTs signed with the service's private key; the public half is served as a
JWKS so the gateway and the other services verify tokens without calling back.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyotp
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.user.events import publish
from generated.services.user.models import User
from generated.services.user.schemas import UserRead
from runtime.auth import TokenIssuer, TokenVerifier, generate_private_key_pem, static_jwks
from runtime.config import ServiceSettings
from runtime.errors import Problem
from runtime.handlers import Context, created

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Checked when the email is unknown, so "no such user" and "wrong password" take as long.
_DUMMY_HASH = _hasher.hash("placeholder password that matches nothing")
_BAD_CREDENTIALS = "the email or the password is wrong"
MAX_LOGIN_FAILURES = 5
LOCKOUT_SECONDS = 900
DEV_KEY_NAME = "jwt-signing-key.pem"


class Registration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: EmailStr = Field(max_length=255)
    password: str = Field(min_length=8, max_length=128)
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(min_length=1, max_length=100)
    gdpr_consent: bool

    @field_validator("gdpr_consent")
    @classmethod
    def _consent_given(cls, value: bool) -> bool:
        if not value:
            raise ValueError("consent to the processing of personal data is required")
        return value


class NewUser(Registration):
    """What an admin sends to create a user of any role."""

    role: Literal["customer", "admin", "vendor"] = "customer"


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=255)
    password: str = Field(max_length=128)
    totp_code: str | None = Field(default=None, max_length=10)


class ProfileChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first_name: str | None = Field(default=None, min_length=1, max_length=100)
    last_name: str | None = Field(default=None, min_length=1, max_length=100)
    email: EmailStr | None = Field(default=None, max_length=255)
    password: str | None = Field(default=None, min_length=8, max_length=128)
    current_password: str | None = Field(default=None, max_length=128)


class TotpCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=6, max_length=10)


# -- helpers -------------------------------------------------------------------------------


async def _hash(password: str) -> str:
    # argon2 is deliberately slow; off the event loop so other requests keep moving.
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(hashed: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _read(user: User) -> dict[str, Any]:
    return UserRead.model_validate(user).model_dump(mode="json")


async def _by_email(session: AsyncSession, email: str) -> User | None:
    query = sa.select(User).where(sa.func.lower(User.email) == email.strip().lower())
    return (await session.scalars(query)).first()


async def _current(ctx: Context) -> User:
    user = await ctx.session.get(User, ctx.user.user_id)
    if user is None or user.is_active is False:
        raise Problem(404, detail="this account no longer exists")
    return user


async def _insert(ctx: Context, body: Registration, role: str) -> User:
    if await _by_email(ctx.session, body.email) is not None:
        raise Problem(409, detail="an account with this email already exists")
    now = datetime.now(UTC)
    user = User(
        email=body.email.lower(),
        password=await _hash(body.password),
        first_name=body.first_name,
        last_name=body.last_name,
        role=role,
        gdpr_consent=True,
        gdpr_consent_at=now,
    )
    ctx.session.add(user)
    await ctx.session.flush()
    await publish(
        ctx.session, "user.created", {"user_id": user.id, "email": user.email, "role": role}
    )
    return user


def _issuer(ctx: Context) -> TokenIssuer:
    issuer = getattr(ctx.request.app.state, "token_issuer", None)
    if not isinstance(issuer, TokenIssuer):
        raise Problem(503, detail="the token signing key is not loaded")
    return issuer


# -- routes --------------------------------------------------------------------------------


async def register(ctx: Context) -> Any:
    """POST /api/users/register (public): a new customer account."""
    body = await ctx.body(Registration)
    user = await _insert(ctx, body, "customer")
    await ctx.session.commit()
    return created(_read(user), headers={"Location": "/api/users/profile"})


async def create_user(ctx: Context) -> Any:
    """POST /api/users (admin): an account of any role."""
    body = await ctx.body(NewUser)
    user = await _insert(ctx, body, body.role)
    await ctx.session.commit()
    return created(_read(user))


async def login(ctx: Context) -> Any:
    """POST /api/users/login (public): a bearer token for the right email and password."""
    body = await ctx.body(Credentials)
    failures_key = f"login-failures:{body.email.strip().lower()}"
    failures = int(await ctx.cache.get(failures_key) or 0)
    if failures >= MAX_LOGIN_FAILURES:
        raise Problem(
            429,
            detail="too many failed logins for this account; try again later",
            headers={"Retry-After": str(LOCKOUT_SECONDS)},
        )
    user = await _by_email(ctx.session, body.email)
    valid = await _verify(user.password if user else _DUMMY_HASH, body.password)
    if user is None or not valid or user.is_active is False:
        await ctx.cache.set(failures_key, str(failures + 1), ttl=LOCKOUT_SECONDS)
        raise Problem(401, title="Invalid credentials", detail=_BAD_CREDENTIALS)
    if user.two_factor_enabled:
        if not body.totp_code:
            raise Problem(401, title="Two-factor code required", detail="send totp_code")
        if not pyotp.TOTP(user.two_factor_secret or "").verify(body.totp_code, valid_window=1):
            await ctx.cache.set(failures_key, str(failures + 1), ttl=LOCKOUT_SECONDS)
            raise Problem(401, title="Invalid credentials", detail="the two-factor code is wrong")
    await ctx.cache.delete(failures_key)
    issuer = _issuer(ctx)
    token = issuer.issue(str(user.id), user.role or "customer", email=user.email)
    await publish(
        ctx.session,
        "user.login",
        {"user_id": user.id, "two_factor": bool(user.two_factor_enabled)},
    )
    await ctx.session.commit()
    return {"access_token": token, "token_type": "bearer", "expires_in": issuer.ttl}


async def get_profile(ctx: Context) -> Any:
    """GET /api/users/profile (authenticated)."""
    return _read(await _current(ctx))


async def update_profile(ctx: Context) -> Any:
    """PATCH /api/users/profile (authenticated); a new password needs the current one."""
    body = await ctx.body(ProfileChange)
    user = await _current(ctx)
    changed: dict[str, Any] = {}
    if body.password is not None:
        if not body.current_password or not await _verify(user.password, body.current_password):
            raise Problem(403, detail="changing the password needs the current password")
        user.password = await _hash(body.password)
        changed["password"] = "changed"
    if body.email is not None and body.email.lower() != user.email:
        if await _by_email(ctx.session, body.email) is not None:
            raise Problem(409, detail="an account with this email already exists")
        user.email = body.email.lower()
        changed["email"] = user.email
    for name in ("first_name", "last_name"):
        value = getattr(body, name)
        if value is not None and value != getattr(user, name):
            setattr(user, name, value)
            changed[name] = value
    if changed:
        await ctx.session.flush()
        await publish(ctx.session, "user.updated", {"user_id": user.id, "fields": changed})
    await ctx.session.commit()
    await ctx.session.refresh(user)
    return _read(user)


async def delete_profile(ctx: Context) -> Any:
    """DELETE /api/users/profile (authenticated): GDPR erasure of the account."""
    user = await _current(ctx)
    user_id = user.id
    await ctx.session.delete(user)
    await publish(ctx.session, "user.deleted", {"user_id": user_id})
    await ctx.session.commit()
    return {"deleted": True, "user_id": str(user_id)}


async def export_profile(ctx: Context) -> Any:
    """GET /api/users/profile/export (authenticated): what the user service holds."""
    user = await _current(ctx)
    return {
        "exported_at": datetime.now(UTC).isoformat(),
        "user": _read(user),
        "consent": {
            "gdpr_consent": user.gdpr_consent,
            "given_at": user.gdpr_consent_at.isoformat() if user.gdpr_consent_at else None,
        },
        "security": {"two_factor_enabled": bool(user.two_factor_enabled)},
    }


async def setup_2fa(ctx: Context) -> Any:
    """POST /api/users/2fa/setup (authenticated): a new TOTP secret, not yet enabled."""
    user = await _current(ctx)
    if user.two_factor_enabled:
        raise Problem(409, detail="two-factor authentication is already enabled")
    secret = pyotp.random_base32()
    user.two_factor_secret = secret
    await ctx.session.commit()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name="CloudRetail")
    return {"secret": secret, "otpauth_uri": uri}


async def enable_2fa(ctx: Context) -> Any:
    """POST /api/users/2fa/enable (authenticated): turn TOTP on with a valid code."""
    body = await ctx.body(TotpCode)
    user = await _current(ctx)
    if not user.two_factor_secret:
        raise Problem(409, detail="call /api/users/2fa/setup first")
    if not pyotp.TOTP(user.two_factor_secret).verify(body.code, valid_window=1):
        raise Problem(422, detail="the code does not match; check the device's clock")
    user.two_factor_enabled = True
    await ctx.session.flush()
    await publish(
        ctx.session, "user.updated", {"user_id": user.id, "fields": {"two_factor_enabled": True}}
    )
    await ctx.session.commit()
    return {"two_factor_enabled": True}


async def jwks(ctx: Context) -> Any:
    """GET /api/users/.well-known/jwks.json (public): the keys that verify our tokens."""
    return _issuer(ctx).jwks()


# -- start-up ------------------------------------------------------------------------------


def signing_key(settings: ServiceSettings) -> str:
    """The PEM that signs tokens: configured, or (development only) made once and kept."""
    if settings.jwt_private_key is not None:
        return settings.jwt_private_key.get_secret_value()
    if settings.jwt_private_key_file:
        return Path(settings.jwt_private_key_file).read_text()
    if settings.is_production:
        raise RuntimeError("set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE: production signs tokens")
    path = Path(os.environ.get("CLOUDRETAIL_DATA_DIR", ".cloudretail")) / "keys" / DEV_KEY_NAME
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_private_key_pem())
        path.chmod(0o600)
        logger.warning("made a development signing key", extra={"path": str(path)})
    return path.read_text()


async def _ensure_admin(app: FastAPI) -> None:
    email = os.environ.get("CLOUDRETAIL_ADMIN_EMAIL", "").strip().lower()
    password = os.environ.get("CLOUDRETAIL_ADMIN_PASSWORD", "")
    if not email or not password:
        return
    async with app.state.database.session() as session:
        existing = await _by_email(session, email)
        if existing is not None:
            if existing.role != "admin":
                existing.role = "admin"
                logger.info("promoted the bootstrap admin", extra={"email": email})
            return
        user = User(
            email=email,
            password=await _hash(password),
            first_name="Platform",
            last_name="Admin",
            role="admin",
            gdpr_consent=True,
            gdpr_consent_at=datetime.now(UTC),
        )
        session.add(user)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()
            return  # another replica made it first
        await publish(
            session, "user.created", {"user_id": user.id, "email": email, "role": "admin"}
        )
    logger.info("created the bootstrap admin", extra={"email": email})


async def startup(app: FastAPI) -> None:
    settings: ServiceSettings = app.state.settings
    issuer = TokenIssuer(
        signing_key(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl=settings.access_token_ttl,
    )
    app.state.token_issuer = issuer
    if app.state.token_verifier is None:
        # The user service trusts its own keys; no need to fetch its own JWKS over HTTP.
        app.state.token_verifier = TokenVerifier(
            static_jwks(issuer.jwks()), issuer=issuer.issuer, audience=issuer.audience
        )
    await _ensure_admin(app)
