"""Responses the gateway writes itself, straight to ASGI: problem+json and plain JSON.

Starlette's Response objects are fine for services; on the gateway a flood of 401s or 429s
is exactly when each response should cost least, so these build bytes and send directly.
The problem body has the same members as cloudretail.runtime.errors.problem_response writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cloudretail.runtime.errors import PROBLEM_MEDIA_TYPE, status_title
from cloudretail.runtime.gateway.headers import GATEWAY_HEADERS
from starlette.types import Send

Headers = Iterable[tuple[bytes, bytes]]
_PROBLEM_TYPE = PROBLEM_MEDIA_TYPE.encode()
_JSON_TYPE = b"application/json"


def problem_body(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    correlation_id: str | None = None,
    instance: str | None = None,
) -> bytes:
    body: dict[str, Any] = {"type": "about:blank", "title": title or status_title(status)}
    body["status"] = status
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    body["correlation_id"] = correlation_id
    return json.dumps(body, separators=(",", ":")).encode()


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Headers = (),
    *,
    head_only: bool = False,
    security: Headers = GATEWAY_HEADERS,
) -> None:
    """One complete response with the gateway's own security headers (`security`: a page
    that loads files, the docs, brings its own Content-Security-Policy)."""
    response_headers = [*security, *headers]
    if status not in (204, 304):  # these may carry neither a body nor its length
        response_headers[:0] = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
        ]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def send_problem(
    send: Send,
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    correlation_id: str | None = None,
    instance: str | None = None,
    headers: Headers = (),
) -> None:
    body = problem_body(
        status, title=title, detail=detail, correlation_id=correlation_id, instance=instance
    )
    await send_body(send, status, body, _PROBLEM_TYPE, headers)


async def send_json(send: Send, status: int, payload: Any, headers: Headers = ()) -> None:
    await send_body(send, status, json.dumps(payload).encode(), _JSON_TYPE, headers)
