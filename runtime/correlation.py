"""Correlation ids: one id per request, shared by its logs, its errors and its outgoing calls."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CORRELATION_HEADER = "X-Correlation-ID"
# Kept in the ASGI scope as well as the contextvar: Starlette's outermost error middleware
# runs after this middleware has returned, where only the scope still carries the id.
SCOPE_KEY = "cloudretail.correlation_id"

# Client-supplied ids end up in every log line, so anything that is not a short token
# (newlines, JSON fragments, megabytes) is replaced rather than trusted.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)


def new_correlation_id() -> str:
    return str(uuid.uuid4())


def get_correlation_id() -> str | None:
    """The id of the request being handled in this context, or None outside a request."""
    return correlation_id_var.get()


def correlation_id_from_scope(scope: Scope) -> str | None:
    value = scope.get(SCOPE_KEY)
    return value if isinstance(value, str) else correlation_id_var.get()


def correlation_headers() -> dict[str, str]:
    """Headers to add to a call to another service so its logs join this request's."""
    current = correlation_id_var.get()
    return {CORRELATION_HEADER: current} if current else {}


def _incoming_id(scope: Scope) -> str | None:
    wanted = CORRELATION_HEADER.lower().encode("latin-1")
    for name, value in scope.get("headers", ()):
        if name.lower() == wanted:
            text = value.decode("latin-1").strip()
            return text if _ACCEPTABLE_ID.fullmatch(text) else None
    return None


class CorrelationIdMiddleware:
    """Pure ASGI middleware: BaseHTTPMiddleware would add a task and a body copy per request."""

    def __init__(self, app: ASGIApp, header_name: str = CORRELATION_HEADER) -> None:
        self.app = app
        self.header_name = header_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        correlation_id = _incoming_id(scope) or new_correlation_id()
        scope[SCOPE_KEY] = correlation_id
        token = correlation_id_var.set(correlation_id)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                # An error response built outside this middleware may already carry it.
                if self.header_name not in headers:
                    headers.append(self.header_name, correlation_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            correlation_id_var.reset(token)
