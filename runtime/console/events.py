"""The platform's events for the console, from the event bus's admin API: the stored ones
(filtered by correlation id) and the live stream (server-sent events, passed on as they
come).

That API wants an admin's token. `cloudretail up` gives every process the stack's own
signing key (JWT_PRIVATE_KEY_FILE), so the console signs a short-lived token for the
subject "dev-console" with the admin role, as the platform's issuer would: no password is
stored or asked for. A platform whose tokens come from an outside issuer gets a 401 from
the event bus, which the console shows as the reason it has no events.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cloudretail.runtime.auth import TokenIssuer
from cloudretail.runtime.httpclient import ConnectionPool, UpstreamError, exchange, pool_for

SUBJECT = "dev-console"
ADMIN_ROLE = "admin"  # the role the route table's `admin` rule requires
_TOKEN_TTL = 300
_TIMEOUT = 5.0


class EventsUnavailableError(Exception):
    """The event bus cannot be asked: no URL, no key, unreachable, or it refused."""


def admin_tokens(key_file: str | None, issuer: str, audience: str) -> Callable[[], str]:
    """A source of admin tokens signed with the stack's key, each reused until it is near
    its expiry."""
    signer: TokenIssuer | None = None
    current = ("", 0.0)

    def token() -> str:
        nonlocal signer, current
        if not key_file:
            raise EventsUnavailableError(
                "no signing key (JWT_PRIVATE_KEY_FILE) to sign the event bus's admin token"
            )
        if signer is None:
            try:
                pem = Path(key_file).read_text()
            except OSError as error:
                raise EventsUnavailableError(f"cannot read {key_file}: {error}") from None
            signer = TokenIssuer(pem, issuer=issuer, audience=audience, ttl=_TOKEN_TTL)
        value, expires = current
        if time.monotonic() > expires:
            value = signer.issue(SUBJECT, ADMIN_ROLE)
            current = (value, time.monotonic() + _TOKEN_TTL - 60)
        return value

    return token


class EventsClient:
    def __init__(self, url: str | None, token: Callable[[], str]) -> None:
        self.url = url
        self._token = token
        self._pool: ConnectionPool | None = None
        self._path = ""

    def _target(self) -> tuple[ConnectionPool, str]:
        if not self.url:
            raise EventsUnavailableError("no event bus URL (GATEWAY_CONSOLE_EVENTS_URL)")
        if self._pool is None:  # made inside the running loop, on first use
            self._pool, self._path = pool_for(self.url, connect_timeout=2.0)
        return self._pool, self._path

    async def recent(self, correlation_id: str | None, limit: int) -> dict[str, Any]:
        """The stored events, newest first (the event bus's `GET` with its filters)."""
        pool, path = self._target()
        query = {"limit": str(limit)}
        if correlation_id:
            query["correlationId"] = correlation_id
        headers = [("authorization", f"Bearer {self._token()}"), ("accept", "application/json")]
        try:
            target = f"{path}?{urlencode(query)}"
            reply = await exchange(pool, "GET", target, headers, b"", _TIMEOUT)
        except (UpstreamError, TimeoutError) as error:
            raise EventsUnavailableError(f"the event bus at {self.url}: {error}") from None
        if reply.status != 200:
            raise EventsUnavailableError(_refusal(reply.status, reply.body))
        found: dict[str, Any] = json.loads(reply.body)
        return found

    async def stream(self) -> AsyncIterator[bytes]:
        """The event bus's live stream, as the bytes of its server-sent events."""
        pool, path = self._target()
        head = (
            f"GET {path}/stream HTTP/1.1\r\nhost: {pool.host}:{pool.port}\r\n"
            f"authorization: Bearer {self._token()}\r\naccept: text/event-stream\r\n\r\n"
        ).encode("latin-1")
        try:
            connection = await pool.acquire()
        except UpstreamError as error:
            raise EventsUnavailableError(f"the event bus at {self.url}: {error}") from None
        try:
            connection.start(head, head_only=False, timeout=_TIMEOUT)
            await connection.response_head()
            if connection.status != 200:
                body = b"".join([chunk async for chunk in connection.body()])
                raise EventsUnavailableError(_refusal(connection.status, body))
            async for chunk in connection.body():
                yield chunk
        except UpstreamError as error:
            raise EventsUnavailableError(f"the event bus's stream: {error}") from None
        finally:
            # A stream ends when its reader goes: the connection cannot be reused.
            connection.abort()


def _refusal(status: int, body: bytes) -> str:
    try:
        detail = json.loads(body).get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    return f"the event bus answered {status}" + (f": {detail}" if detail else "")
