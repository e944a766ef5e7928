"""JWT authentication and role checks: RS256 tokens, verified locally against a key set.

The user service signs tokens with its private key and publishes the public half as a
JWKS. Everyone else verifies with the JWKS (cached; fetched again when a token names an
unknown `kid`), so verifying never costs a call per request. Only RS256 is accepted: the
key objects are RSA public keys, so neither `alg: none` nor an HS256 token signed with the
public key as a secret can pass.

Revocation: the issuer also publishes, for as long as the tokens it issued may live, the
subjects whose earlier tokens are void (a password or two-factor change, a deleted
account) with the moment before which their tokens no longer count. Verifiers keep that
list and fetch it again at most every couple of seconds, so a revoked token stops working
everywhere within that interval. When the list cannot be fetched, the last one known keeps
applying (a key-server outage must not stop every authenticated request).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.httpclient import UpstreamError, exchange, pool_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from cloudretail.runtime.config import ServiceSettings

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and role, plus every claim for handlers."""

    subject: str
    role: str
    claims: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def user_id(self) -> uuid.UUID | None:
        try:
            return uuid.UUID(self.subject)
        except ValueError:
            return None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def generate_private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


DEV_KEY_NAME = "jwt-signing-key.pem"


def signing_key(settings: ServiceSettings) -> str:
    """The PEM a token issuer signs with: JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE, or in
    development one made once under CLOUDRETAIL_DATA_DIR/keys/ and kept."""
    if settings.jwt_private_key is not None:
        return settings.jwt_private_key.get_secret_value()
    if settings.jwt_private_key_file:
        return Path(settings.jwt_private_key_file).read_text()
    if settings.is_production:
        raise RuntimeError("set JWT_PRIVATE_KEY or JWT_PRIVATE_KEY_FILE: production signs tokens")
    path = Path(os.environ.get("CLOUDRETAIL_DATA_DIR", ".cloudretail")) / "keys" / DEV_KEY_NAME
    if not path.exists():
        logger.warning("made a development signing key", extra={"path": str(path)})
    return kept_private_key(path).read_text()


def kept_private_key(path: Path) -> Path:
    """`path`, holding a private key PEM: made (readable by its owner only) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_private_key_pem())
        path.chmod(0o600)
    return path


def _private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the JWT signing key must be an RSA private key")
    return key


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """A stable `kid`: the RFC 7638 thumbprint of the public key."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class TokenIssuer:
    """Signs access tokens (the user service holds one)."""

    def __init__(self, private_key_pem: str, *, issuer: str, audience: str, ttl: int = 3600):
        self._key = _private_key(private_key_pem)
        public = self._key.public_key()
        self.kid = _thumbprint(json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public)))
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl

    def issue(self, subject: str, role: str, **claims: Any) -> str:
        now = time.time()
        payload = {
            **claims,
            "sub": subject,
            "role": role,
            "iss": self.issuer,
            "aud": self.audience,
            # To the millisecond, rounded down (RFC 7519 allows fractions): a token issued
            # right before a revocation must never look issued after it.
            "iat": math.floor(now * 1000) / 1000,
            "nbf": int(now),
            "exp": int(now) + self.ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(payload, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}]}


JwksFetcher = Callable[[], Awaitable[Mapping[str, Any]]]
# The issuer's revocations: subject -> the time (epoch seconds) before which its tokens are void.
RevocationFetcher = Callable[[], Awaitable[Mapping[str, float]]]


class RevocationList:
    """The issuer's revoked subjects, fetched again at most every `interval` seconds."""

    def __init__(self, fetch: RevocationFetcher, *, interval: float = 2.0) -> None:
        self._fetch = fetch
        self.interval = interval
        self._entries: dict[str, float] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.failing = False

    async def not_before(self, subject: str) -> float | None:
        """The time before which `subject`'s tokens are void, if it has one."""
        if time.monotonic() - self._fetched_at >= self.interval:
            async with self._lock:
                if time.monotonic() - self._fetched_at >= self.interval:
                    await self._refresh()
        return self._entries.get(subject)

    async def _refresh(self) -> None:
        try:
            entries = await self._fetch()
        except Exception as error:
            if not self.failing:
                logger.warning(
                    "cannot fetch token revocations; the last list known still applies",
                    extra={"error": repr(error)},
                )
            self.failing = True
        else:
            self._entries = {str(k): float(v) for k, v in entries.items()}
            self.failing = False
        self._fetched_at = time.monotonic()

    async def check(self, claims: Mapping[str, Any]) -> None:
        """401 when the token was issued before its subject's revocation."""
        cutoff = await self.not_before(str(claims.get("sub", "")))
        if cutoff is not None and float(claims.get("iat", 0)) < cutoff:
            raise Problem(401, title="Invalid token", detail="the token has been revoked")


class FetchError(Exception):
    """A key or revocation document could not be fetched."""


async def fetch_json(url: str, timeout: float) -> Any:
    """GET a JSON document over the platform's HTTP client (no httpx in services: it loads
    its command-line tool, with rich and click, on import)."""
    try:
        pool, target = pool_for(url, connect_timeout=timeout)
    except ValueError as error:
        raise FetchError(str(error)) from None
    try:
        reply = await exchange(
            pool, "GET", target or "/", [("accept", "application/json")], b"", timeout
        )
    except UpstreamError as error:
        raise FetchError(f"GET {url}: {error}") from None
    finally:
        pool.close()
    if not 200 <= reply.status < 300:
        raise FetchError(f"GET {url} answered {reply.status}")
    try:
        return json.loads(reply.body)
    except ValueError:
        raise FetchError(f"GET {url}: not JSON") from None


def http_revocations_fetcher(url: str, timeout: float = 2.0) -> RevocationFetcher:
    """Reads `{"revoked": [{"sub": ..., "not_before": epoch seconds}, ...]}` from `url`."""

    async def fetch() -> Mapping[str, float]:
        document = await fetch_json(url, timeout)
        return {str(item["sub"]): float(item["not_before"]) for item in document["revoked"]}

    return fetch


def revocations_url_for(jwks_url: str) -> str:
    """Where an issuer publishes its revocations: beside its JWKS."""
    return jwks_url.rsplit("/", 1)[0] + "/revocations.json"


def http_jwks_fetcher(url: str, timeout: float = 3.0) -> JwksFetcher:
    async def fetch() -> Mapping[str, Any]:
        body: Mapping[str, Any] = await fetch_json(url, timeout)
        return body

    return fetch


def static_jwks(jwks: Mapping[str, Any]) -> JwksFetcher:
    async def fetch() -> Mapping[str, Any]:
        return jwks

    return fetch


class TokenVerifier:
    """Verifies bearer tokens against a JWKS; fetches it again when a `kid` is unknown."""

    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        leeway: float = 5.0,
        min_refresh_interval: float = 30.0,
        revocations: RevocationList | None = None,
        roles: Collection[str] | None = None,
    ) -> None:
        """`roles`: the roles a token may carry (the spec's `auth.roles`); None takes any."""
        self._fetch = fetch_jwks
        self.revocations = revocations
        self.roles = frozenset(roles) if roles is not None else None
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")
        self._min_refresh = min_refresh_interval
        self._lock = asyncio.Lock()

    async def _key_for(self, kid: str) -> Any:
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            # A flood of tokens with made-up kids must not become a flood of JWKS fetches.
            stale = time.monotonic() - self._fetched_at >= self._min_refresh
            if kid not in self._keys and (stale or not self._keys):
                await self._refresh()
        if kid not in self._keys:
            raise Problem(401, title="Invalid token", detail="the token's signing key is unknown")
        return self._keys[kid]

    async def _refresh(self) -> None:
        try:
            jwks = await self._fetch()
        except Exception as error:  # the key server being down is a 503, not a 500
            raise Problem(
                503, title="Authentication unavailable", detail="cannot load signing keys"
            ) from error
        keys: dict[str, Any] = {}
        for jwk in jwks.get("keys", []):
            if jwk.get("kty") == "RSA" and jwk.get("kid"):
                keys[str(jwk["kid"])] = jwt.algorithms.RSAAlgorithm.from_jwk(jwk)
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Problem(
                401, title="Invalid token", detail="the bearer token is malformed"
            ) from None
        if header.get("alg") != ALGORITHM:
            raise Problem(
                401, title="Invalid token", detail=f"only {ALGORITHM} tokens are accepted"
            )
        key = await self._key_for(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "nbf", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Problem(401, title="Invalid token", detail="the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Problem(401, title="Invalid token", detail="the token is not valid yet") from None
        except jwt.PyJWTError as error:
            raise Problem(401, title="Invalid token", detail=str(error)) from None
        role = claims.get("role")
        if (
            not isinstance(role, str)
            or not role
            or (self.roles is not None and role not in self.roles)
        ):
            raise Problem(401, title="Invalid token", detail="the token carries no known role")
        if self.revocations is not None:
            await self.revocations.check(claims)
        return Principal(subject=str(claims["sub"]), role=role, claims=claims)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def get_verifier(request: Request) -> TokenVerifier:
    verifier = getattr(request.app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise Problem(
            503, title="Authentication unavailable", detail="no token verifier is configured"
        )
    return verifier


# The caller of the request being handled, for code far from the route (event metadata).
current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)


def current_user_id() -> str | None:
    principal = current_principal.get()
    return principal.subject if principal is not None and principal.role != "service" else None


async def optional_principal(request: Request) -> Principal | None:
    """The caller when a valid token is present, None when there is none; 401 when it is bad."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(request)
    if token is None:
        return None
    principal = await get_verifier(request).verify(token)
    request.state.principal = principal
    current_principal.set(principal)
    return principal


# Declares the bearer scheme in the OpenAPI document of every route that needs a token (the
# token itself is read and verified by `optional_principal`, with problem+json errors).
BEARER_SCHEME = HTTPBearer(
    scheme_name="bearer",
    bearerFormat="JWT",
    description="An RS256 access token from the platform's login route.",
    auto_error=False,
)


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """Dependency: a valid token (401 otherwise) whose role is one of `roles` (403 otherwise).

    No roles means any authenticated caller.
    """

    async def dependency(
        principal: Annotated[Principal | None, Depends(optional_principal)],
        _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER_SCHEME)],
    ) -> Principal:
        if principal is None:
            raise Problem(
                401,
                title="Authentication required",
                detail="send a bearer token in the Authorization header",
                headers={"WWW-Authenticate": 'Bearer realm="cloudretail"'},
            )
        if roles and principal.role not in roles:
            raise Problem(
                403, title="Forbidden", detail=f"this needs the role {' or '.join(roles)}"
            )
        return principal

    return dependency


OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]


SERVICE_TOKEN_HEADER = "X-Service-Token"


async def require_service(request: Request) -> None:
    """Dependency of `auth: service` routes: the caller shows the platform's service token.

    Service-to-service routes are never routed by the gateway, and network policies only
    let the declared callers reach them; the shared token is the second lock.
    """
    settings = getattr(request.app.state, "settings", None)
    expected = settings.service_token.get_secret_value() if settings is not None else ""
    given = request.headers.get(SERVICE_TOKEN_HEADER, "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(
            401 if not given else 403,
            title="Service token required",
            detail=f"this route is for other services; send {SERVICE_TOKEN_HEADER}",
        )


def start_issuing(app: FastAPI, *, revocations: RevocationList | None = None) -> TokenIssuer:
    """Make the service the platform's token issuer: its signing key loaded into
    `app.state.token_issuer` and, unless a verifier is set already, its own keys trusted
    directly (no JWKS over HTTP), with `revocations` when it keeps any. Call it from the
    handlers' `startup`."""
    settings: ServiceSettings = app.state.settings
    issuer = TokenIssuer(
        signing_key(settings),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl=settings.access_token_ttl,
    )
    app.state.token_issuer = issuer
    if app.state.token_verifier is None:
        app.state.token_verifier = TokenVerifier(
            static_jwks(issuer.jwks()),
            issuer=issuer.issuer,
            audience=issuer.audience,
            revocations=revocations,
            roles=settings.token_roles,
        )
    return issuer


def token_issuer(app: FastAPI) -> TokenIssuer:
    """The issuer `start_issuing` loaded; a 503 problem while there is none."""
    issuer = getattr(app.state, "token_issuer", None)
    if not isinstance(issuer, TokenIssuer):
        raise Problem(503, detail="the token signing key is not loaded")
    return issuer
