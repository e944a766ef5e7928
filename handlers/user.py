"""Identity: registration, login (with TOTP when enabled), profile, GDPR export and erasure.

Tokens are RS256 JWTs signed with the service's private key; the public half is served as a
JWKS so the gateway and the other services verify tokens without calling back.

Login guessing is bounded twice, by counters in the cache (Redis when configured):

* per (account, client): `CLIENT_POLICY.limit` failures lock that client out of that
  account; each further lock within a day lasts twice as long. Someone guessing elsewhere
  does not lock the owner out.
* per account: `ACCOUNT_POLICY.limit` failures from any clients lock the account for every
  client except those it logged in from recently ("known" clients), with the same backoff.

The client is `request.client.host`: the TCP peer, or the X-Forwarded-For address when the
peer is a trusted proxy (uvicorn's FORWARDED_ALLOW_IPS, default 127.0.0.1 where the local
gateway runs; set it to the gateway's addresses where the gateway runs elsewhere, or every
caller looks like the gateway). Each attempt is counted atomically before its password is
hashed, and a cache that does not answer refuses logins (503) rather than allowing
unlimited guesses. argon2 runs at most once per core at a time, with a short queue: beyond
it, 503 with Retry-After, so a flood cannot make every login wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import anyio
import anyio.to_thread
import pyotp
import pyotp.utils
import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cloudretail.runtime.auth import RevocationList, start_issuing, token_issuer
from cloudretail.runtime.cache import Cache, CacheUnavailableError
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.handlers import Context, created
from cloudretail.runtime.http import ServiceClients
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from generated.services.user.events import publish
from generated.services.user.models import TokenRevocation, User
from generated.services.user.personal_data import PERSONAL_DATA
from generated.services.user.schemas import UserRead

logger = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Checked when the email is unknown, so "no such user" and "wrong password" take as long.
_DUMMY_HASH = _hasher.hash("placeholder password that matches nothing")
_BAD_CREDENTIALS = "the email or the password is wrong"

T = TypeVar("T")


@dataclass(frozen=True)
class LockPolicy:
    """`limit` failures within `window` seconds lock for `lock` seconds, doubled for each
    earlier lock of the same scope in the last `memory` seconds, up to `max_lock`."""

    scope: str
    limit: int
    window: float
    lock: float
    max_lock: float
    memory: float = 86_400


CLIENT_POLICY = LockPolicy("client", limit=5, window=900, lock=900, max_lock=86_400)
ACCOUNT_POLICY = LockPolicy("account", limit=20, window=900, lock=900, max_lock=14_400)
# A client the account logged in from this recently is spared the account-wide lock.
KNOWN_CLIENT_SECONDS = 30 * 86_400
# What a login answers while the cache holding the counters does not.
COUNTERS_DOWN_RETRY_SECONDS = 30
# TOTP codes are accepted this many time steps either side of now (clock drift).
TOTP_DRIFT_STEPS = 1


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


class HashingLimiter:
    """argon2 is slow on purpose: at most `slots` computations at a time (one per core) and
    `max_waiting` callers queued; a caller beyond that gets 503 with Retry-After at once."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self._limiter = anyio.CapacityLimiter(slots)
        self._capacity = slots + max_waiting
        self._admitted = 0

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """A place among those hashing or queued, held for the block; 503 when all are taken.

        Taken before a login's database lookup, so a flood holds no connections either.
        """
        if self._admitted >= self._capacity:
            raise Problem(
                503,
                title="Busy",
                detail="too many password checks at once; try again in a moment",
                headers={"Retry-After": "1"},
            )
        self._admitted += 1  # no await since the check: atomic on the event loop
        try:
            yield
        finally:
            self._admitted -= 1

    async def compute(self, function: Callable[..., T], *args: Any) -> T:
        """Run `function` in a thread once a slot is free (call inside `admitted`)."""
        # Off the event loop, so other requests keep moving while a thread hashes.
        return await anyio.to_thread.run_sync(function, *args, limiter=self._limiter)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        async with self.admitted():
            return await self.compute(function, *args)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _hashing(app: FastAPI) -> HashingLimiter:
    """The app's limiter, made on first use (inside the app's event loop)."""
    limiter = getattr(app.state, "password_hashing", None)
    if not isinstance(limiter, HashingLimiter):
        cores = _cores()
        limiter = HashingLimiter(slots=cores, max_waiting=2 * cores)
        app.state.password_hashing = limiter
    return limiter


async def _hash(app: FastAPI, password: str) -> str:
    return await _hashing(app).run(_hasher.hash, password)


async def _verify(app: FastAPI, hashed: str, password: str, *, admitted: bool = False) -> bool:
    limiter = _hashing(app)
    run = limiter.compute if admitted else limiter.run
    try:
        return await run(_hasher.verify, hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def _counters_down() -> Problem:
    return Problem(
        503,
        title="Login unavailable",
        detail="the store that counts failed logins does not answer, so logins are paused; "
        "try again shortly",
        headers={"Retry-After": str(COUNTERS_DOWN_RETRY_SECONDS)},
    )


def _locked_out(seconds: float | None, policy: LockPolicy) -> Problem:
    wait = policy.window if seconds is None or seconds == float("inf") else seconds
    return Problem(
        429,
        detail="too many failed logins for this account; try again later",
        headers={"Retry-After": str(max(1, round(wait)))},
    )


class _Throttle:
    """One scope's failure counter and lock. Every method may raise CacheUnavailableError."""

    def __init__(self, cache: Cache, policy: LockPolicy, subject: str) -> None:
        self.cache = cache
        self.policy = policy
        # Hashed: no email addresses in cache keys, and a bounded key length.
        digest = hashlib.sha256(subject.encode()).hexdigest()[:32]
        self.key = f"login:{policy.scope}:{digest}"
        self.count = 0

    async def reserve(self) -> None:
        """Count this attempt before its password is checked; 429 if the scope is locked."""
        lock = await self.cache.remaining(f"{self.key}:lock")
        if lock is not None:
            raise _locked_out(lock, self.policy)
        failures = f"{self.key}:failures"
        count = await self.cache.incr(failures, ttl=self.policy.window)
        if count > self.policy.limit:
            # Refused unchecked: no guess was made, so it takes no slot.
            await self.cache.incr(failures, -1, ttl=self.policy.window)
            raise _locked_out(await self.cache.remaining(failures), self.policy)
        self.count = count

    async def give_back(self) -> None:
        """The attempt was no wrong guess (checked right, or never checked)."""
        await self.cache.incr(f"{self.key}:failures", -1, ttl=self.policy.window)

    async def reset(self) -> None:
        await self.cache.delete(f"{self.key}:failures")

    async def failed(self) -> None:
        """The attempt was wrong and stays counted; the one that fills the window locks."""
        if self.count < self.policy.limit:
            return
        strikes = await self.cache.incr(f"{self.key}:strikes", ttl=self.policy.memory)
        seconds = min(self.policy.lock * 2 ** (strikes - 1), self.policy.max_lock)
        await self.cache.add(f"{self.key}:lock", b"1", ttl=seconds)
        # The lock holds them off now; after it, a new window of `limit` tries.
        await self.cache.delete(f"{self.key}:failures")
        logger.warning("login locked", extra={"scope": self.policy.scope, "lock_seconds": seconds})


class _LoginGuard:
    """The throttles one login attempt goes through, from before hashing to its outcome."""

    def __init__(self, cache: Cache, email: str, client: str) -> None:
        self.cache = cache
        self.known_key = "login:known:" + hashlib.sha256(f"{email}\0{client}".encode()).hexdigest()
        self.throttles = [_Throttle(cache, CLIENT_POLICY, f"{email}\0{client}")]
        self.account = _Throttle(cache, ACCOUNT_POLICY, email)
        self.reserved: list[_Throttle] = []

    async def reserve(self) -> None:
        # A best-effort read: when the cache is down it says "not known", the safe answer.
        if await self.cache.get(self.known_key) is None:
            self.throttles.append(self.account)
        try:
            for throttle in self.throttles:
                await throttle.reserve()
                self.reserved.append(throttle)
        except BaseException:
            await self.give_back()
            raise

    async def give_back(self) -> None:
        for throttle in self.reserved:
            # If the cache is down the window still ends on its own: one extra count at worst.
            with contextlib.suppress(CacheUnavailableError):
                await throttle.give_back()
        self.reserved = []

    async def failed(self) -> None:
        for throttle in self.reserved:
            await throttle.failed()

    async def succeeded(self) -> None:
        # The owner proved itself from this client: its failures there are forgiven. The
        # account-wide count keeps others' failures; this attempt just was not one.
        for throttle in self.reserved:
            if throttle is self.account:
                await throttle.give_back()
            else:
                await throttle.reset()
        await self.cache.set(self.known_key, b"1", ttl=KNOWN_CLIENT_SECONDS)


def _client_address(ctx: Context) -> str:
    client = ctx.request.client
    return client.host if client is not None else "unknown"


async def _accept_totp(cache: Cache, user: User, code: str) -> bool:
    """The code is right for now (give or take the drift) and was not accepted before.

    Each accepted time step is claimed once per user (set-if-absent, kept while a code of
    that step could still be valid), at login and at enable alike: a replay is refused.
    """
    totp = pyotp.TOTP(user.two_factor_secret or "")
    now = totp.timecode(time.time())
    for step in range(now - TOTP_DRIFT_STEPS, now + TOTP_DRIFT_STEPS + 1):
        if pyotp.utils.strings_equal(code, totp.generate_otp(step)):
            ttl = (2 * TOTP_DRIFT_STEPS + 1) * totp.interval
            return await cache.add(f"totp-used:{user.id}:{step}", b"1", ttl=ttl)
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
        password=await _hash(ctx.request.app, body.password),
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


async def _revoke_tokens(ctx: Context, user_id: Any) -> None:
    """Void every token issued to the account until now (the caller's included): verifiers
    learn it from /.well-known/revocations.json within seconds."""
    now = datetime.now(UTC)
    ttl = timedelta(seconds=token_issuer(ctx.request.app).ttl)
    await ctx.session.merge(TokenRevocation(subject=user_id, not_before=now, expires_at=now + ttl))


async def _revoked_since(session: AsyncSession) -> dict[str, float]:
    rows = await session.scalars(
        sa.select(TokenRevocation).where(TokenRevocation.expires_at > datetime.now(UTC))
    )
    return {str(row.subject): row.not_before.timestamp() for row in rows}


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
    guard = _LoginGuard(ctx.cache, body.email.strip().lower(), _client_address(ctx))
    try:
        user = await _check_credentials(ctx, guard, body)
    except CacheUnavailableError:
        # Fail closed: without the counters there is no limit on guessing.
        raise _counters_down() from None
    issuer = token_issuer(ctx.request.app)
    token = issuer.issue(str(user.id), user.role or "customer", email=user.email)
    await publish(
        ctx.session,
        "user.login",
        {"user_id": user.id, "two_factor": bool(user.two_factor_enabled)},
    )
    await ctx.session.commit()
    return {"access_token": token, "token_type": "bearer", "expires_in": issuer.ttl}


async def _check_credentials(ctx: Context, guard: _LoginGuard, body: Credentials) -> User:
    """The user the credentials prove, or a problem; every attempt is counted first."""
    await guard.reserve()
    try:
        async with _hashing(ctx.request.app).admitted():
            user = await _by_email(ctx.session, body.email)
            # An unknown email is checked against a dummy hash: it looks and takes alike.
            hashed = user.password if user is not None else _DUMMY_HASH
            valid = await _verify(ctx.request.app, hashed, body.password, admitted=True)
    except BaseException:
        await guard.give_back()  # shed or cancelled: no guess was checked
        raise
    if user is None or not valid or user.is_active is False:
        await guard.failed()
        raise Problem(401, title="Invalid credentials", detail=_BAD_CREDENTIALS)
    if user.two_factor_enabled:
        if not body.totp_code:
            await guard.give_back()
            raise Problem(401, title="Two-factor code required", detail="send totp_code")
        if not await _accept_totp(ctx.cache, user, body.totp_code):
            await guard.failed()
            raise Problem(
                401,
                title="Invalid credentials",
                detail="the two-factor code is wrong or was used already",
            )
    await guard.succeeded()
    return user


async def get_profile(ctx: Context) -> Any:
    """GET /api/users/profile (authenticated)."""
    return _read(await _current(ctx))


async def update_profile(ctx: Context) -> Any:
    """PATCH /api/users/profile (authenticated); a new password or email needs the current
    password (a stolen token alone must not take the account over)."""
    body = await ctx.body(ProfileChange)
    user = await _current(ctx)
    app = ctx.request.app
    changed: dict[str, Any] = {}
    new_email = body.email is not None and body.email.lower() != user.email
    sensitive = []
    if body.password is not None:
        sensitive.append("password")
    if new_email:
        sensitive.append("email")
    if sensitive and (
        not body.current_password or not await _verify(app, user.password, body.current_password)
    ):
        raise Problem(
            403, detail=f"changing the {' and the '.join(sensitive)} needs the current password"
        )
    if body.password is not None:
        user.password = await _hash(app, body.password)
        changed["password"] = "changed"
    if body.email is not None and new_email:
        if await _by_email(ctx.session, body.email) is not None:
            raise Problem(409, detail="an account with this email already exists")
        user.email = body.email.lower()
        changed["email"] = user.email
    for name in ("first_name", "last_name"):
        value = getattr(body, name)
        if value is not None and value != getattr(user, name):
            setattr(user, name, value)
            changed[name] = value
    if sensitive:
        await _revoke_tokens(ctx, user.id)
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
    # What the spec says of the account's tables (`users`: `erasure: delete`); every other
    # service erases its part when it consumes `user.deleted`.
    await PERSONAL_DATA.erase(ctx.session, user_id)
    await _revoke_tokens(ctx, user_id)
    await publish(ctx.session, "user.deleted", {"user_id": user_id})
    await ctx.session.commit()
    return {"deleted": True, "user_id": str(user_id)}


async def export_profile(ctx: Context) -> Any:
    """GET /api/users/profile/export (authenticated): everything the platform holds of the
    caller. `data` has the rows of every service holding personal data (spec: a table's
    `subject`), per service and table, asked for over their internal routes; secret columns
    (the password hash, the 2FA secret) are never in it. A service that does not answer
    makes it a 503, never an export with a part missing."""
    user = await _current(ctx)
    clients: ServiceClients = ctx.request.app.state.service_clients
    data = await PERSONAL_DATA.gather(ctx.session, user.id, clients)
    return {
        "exported_at": datetime.now(UTC).isoformat(),
        "user": _read(user),
        "consent": {
            "gdpr_consent": user.gdpr_consent,
            "given_at": user.gdpr_consent_at.isoformat() if user.gdpr_consent_at else None,
        },
        "security": {"two_factor_enabled": bool(user.two_factor_enabled)},
        "data": data,
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
    try:
        accepted = await _accept_totp(ctx.cache, user, body.code)
    except CacheUnavailableError:
        raise Problem(
            503,
            detail="the store that remembers used codes does not answer; try again shortly",
            headers={"Retry-After": str(COUNTERS_DOWN_RETRY_SECONDS)},
        ) from None
    if not accepted:
        raise Problem(
            422, detail="the code does not match or was used already; check the device's clock"
        )
    user.two_factor_enabled = True
    await _revoke_tokens(ctx, user.id)  # tokens from before the second factor no longer do
    await ctx.session.flush()
    await publish(
        ctx.session, "user.updated", {"user_id": user.id, "fields": {"two_factor_enabled": True}}
    )
    await ctx.session.commit()
    return {"two_factor_enabled": True}


async def jwks(ctx: Context) -> Any:
    """GET /api/users/.well-known/jwks.json (public): the keys that verify our tokens."""
    return token_issuer(ctx.request.app).jwks()


async def revocations(ctx: Context) -> Any:
    """GET /api/users/.well-known/revocations.json (public): accounts whose tokens issued
    before `not_before` (epoch seconds) are void, while such tokens may still be unexpired."""
    revoked = await _revoked_since(ctx.session)
    return {"revoked": [{"sub": sub, "not_before": at} for sub, at in sorted(revoked.items())]}


# -- start-up ------------------------------------------------------------------------------


async def _ensure_admin(app: FastAPI) -> None:
    """Create the operator's admin account (CLOUDRETAIL_ADMIN_EMAIL / _PASSWORD) if absent.

    Never promotes an account that exists: anyone may have registered that email first,
    with a password of their own. Such an account is left as it is and the refusal logged.
    """
    settings: ServiceSettings = app.state.settings
    email = (settings.cloudretail_admin_email or "").strip().lower()
    secret = settings.cloudretail_admin_password
    password = secret.get_secret_value() if secret is not None else ""
    if not email or not password:
        return
    async with app.state.database.session() as session:
        existing = await _by_email(session, email)
        if existing is None:
            user = User(
                email=email,
                password=await _hash(app, password),
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
                # Made meanwhile: by another replica, or by a registration. Check which.
                await session.rollback()
                existing = await _by_email(session, email)
            else:
                await publish(
                    session, "user.created", {"user_id": user.id, "email": email, "role": "admin"}
                )
                logger.info("created the bootstrap admin", extra={"email": email})
                return
        if existing is None:
            return
        if existing.role != "admin":
            logger.error(
                "CLOUDRETAIL_ADMIN_EMAIL names an existing account that is not an admin; "
                "refusing to promote it (whoever registered the email first would get admin "
                "rights with their own password). It is left as it is: choose another "
                "CLOUDRETAIL_ADMIN_EMAIL, or check that account and change its role yourself",
                extra={"email": email, "role": existing.role},
            )
        elif not await _verify(app, existing.password, password):
            logger.warning(
                "the bootstrap admin exists with another password than "
                "CLOUDRETAIL_ADMIN_PASSWORD; its password is left unchanged",
                extra={"email": email},
            )
        else:
            logger.info("the bootstrap admin exists", extra={"email": email})


async def startup(app: FastAPI) -> None:
    # The user service keeps the revocations; it reads them from its own database.
    async def revoked() -> dict[str, float]:
        async with app.state.database.session() as session:
            return await _revoked_since(session)

    start_issuing(app, revocations=RevocationList(revoked, interval=1.0))
    app.state.service_clients = ServiceClients(app.state.settings)  # the export's calls
    await _ensure_admin(app)


async def shutdown(app: FastAPI) -> None:
    await app.state.service_clients.close()
