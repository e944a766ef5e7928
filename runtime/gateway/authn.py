"""Who is calling and may they: bearer tokens verified once per lifetime, then route rules.

An RS256 signature check costs tens of microseconds, more than the rest of the proxy path;
a client sends the same token with every request until it expires, so the result is cached
by token string until the token's `exp`. Only successes are cached: a forged token is
checked each time, and is rate limited like any other request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cloudretail.runtime.auth import Principal, TokenVerifier
from cloudretail.runtime.errors import Problem
from cloudretail.runtime.gateway.routing import Route

WWW_AUTHENTICATE = 'Bearer realm="cloudretail"'


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused request: 401 (who are you?) or 403 (you may not), or 503 (cannot tell)."""

    status: int
    title: str
    detail: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


class CachingVerifier:
    """TokenVerifier in front of a bounded cache of verified tokens."""

    def __init__(
        self,
        verifier: TokenVerifier,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.verifier = verifier
        self._max = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        """The token's principal; raises `Problem` (401 or 503) when refused."""
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if self._clock() < expires:
                if self.verifier.revocations is not None:
                    # A verified token is cached, its revocation is not: checked each time.
                    await self.verifier.revocations.check(principal.claims)
                return principal
            del self._cache[token]
        principal = await self.verifier.verify(token)
        expires = float(principal.claims.get("exp", 0))
        if len(self._cache) >= self._max:
            # Oldest first (dicts keep insertion order): cheap, and old entries are the
            # likeliest to have expired or been replaced by a refreshed token.
            for stale in list(self._cache)[: self._max // 10 or 1]:
                del self._cache[stale]
        self._cache[token] = (principal, expires)
        return principal


def bearer_token(header: bytes | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def invalid_token(problem: Problem) -> Denial:
    if problem.status != 401:
        return Denial(problem.status, problem.title, problem.detail or problem.title)
    detail = problem.detail or "the bearer token was refused"
    # RFC 6750 section 3: say why in the challenge too; quotes would end the parameter.
    description = detail.replace('"', "'").replace("\\", "/")
    challenge = f'{WWW_AUTHENTICATE}, error="invalid_token", error_description="{description}"'
    return Denial(401, problem.title, detail, ((b"www-authenticate", challenge.encode()),))


MISSING_TOKEN = Denial(
    401,
    "Authentication required",
    "send a bearer token in the Authorization header",
    ((b"www-authenticate", WWW_AUTHENTICATE.encode()),),
)


def authorize(route: Route, principal: Principal | None, failure: Denial | None) -> Denial | None:
    """Apply the route's rule. `failure` is why a presented token was refused, if it was.

    Public routes let everyone through, even with a refused token: their content does not
    depend on who asks, the service still sees the Authorization header and decides for
    itself, and an outage of the key server must not take the public catalogue down.
    """
    if route.auth == "public":
        return None
    if principal is None:
        return failure or MISSING_TOKEN
    if route.roles and principal.role not in route.roles:
        return Denial(403, "Forbidden", f"this needs the role {' or '.join(sorted(route.roles))}")
    return None
