"""What every request must pass before a route reads it.

- The body is at most `max_body_bytes`: a larger Content-Length is answered 413 before a
  byte of the body is read, and a chunked body is cut off with 413 as soon as it passes the
  limit. The service never holds more than the limit in memory.
- A request that carries a body must say it is JSON (`application/json` or `+json`),
  else 415: every route of a service takes JSON, generated CRUD and hand-written handlers
  alike, and neither may guess a text/plain body into JSON.
- JSON may not nest deeper than `max_json_depth` (deep nesting exhausts the parser's and
  the validators' recursion), and no string in it, key or value, may hold a NUL character
  (PostgreSQL text cannot store one; SQLite would, and then it differs from production).
  The query string and the path may not hold NUL either. Each is a 422 naming where it is.

A body that is not JSON at all passes: the route answers that in its own words.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl

from cloudretail.runtime.correlation import correlation_id_from_scope
from cloudretail.runtime.errors import problem_response, validation_problem
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_JSON_DEPTH = 32
# Enough to say what is wrong without echoing a hostile body back at length.
_MAX_ERRORS = 10
_NUL = "\x00"
_NUL_MESSAGE = "must not contain NUL (\\u0000) characters"

Location = list[str | int]


def is_json_media_type(content_type: str | None) -> bool:
    """`application/json`, or any `application/...+json`, with or without parameters."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def json_problems(value: Any, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> list[dict[str, Any]]:
    """Validation errors (FastAPI's shape) for nesting past `max_depth` and NUL in strings.

    Walks without recursion, so the walk itself cannot run out of stack.
    """
    errors: list[dict[str, Any]] = []
    depth_message = f"JSON nested deeper than {max_depth} levels"
    # (value, path, depth of the containers around it)
    stack: list[tuple[Any, Location, int]] = [(value, ["body"], 0)]
    while stack and len(errors) < _MAX_ERRORS:
        item, path, depth = stack.pop()
        key = path[-1]
        if isinstance(key, str) and _NUL in key and len(path) > 1:
            errors.append({"loc": path, "msg": f"field names {_NUL_MESSAGE}"})
        if isinstance(item, dict | list):
            if depth >= max_depth:
                errors.append({"loc": path, "msg": depth_message})
                continue
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            # Reversed, so errors come out in document order.
            stack.extend(reversed([(child, [*path, name], depth + 1) for name, child in pairs]))
        elif isinstance(item, str) and _NUL in item:
            errors.append({"loc": path, "msg": _NUL_MESSAGE})
    return errors[:_MAX_ERRORS]


# The tokens that give a JSON text its shape: strings (keys among them) and punctuation.
_SHAPE_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]')


def _too_deep_at(body: bytes, max_depth: int) -> Location:
    """Where `body` first nests deeper than `max_depth`, found by scanning its brackets.

    For bodies too deep for the parser itself; the scan stops at the first container past
    the limit, so it costs no more than the text before that point.
    """
    path: Location = ["body"]
    frames: list[list[Any]] = []  # [kind, key or index, expecting a key]
    for match in _SHAPE_TOKENS.finditer(body):
        token = match.group()
        if token in (b"{", b"["):
            if len(frames) >= max_depth:
                break
            frames.append([token, None if token == b"{" else 0, token == b"{"])
        elif token in (b"}", b"]"):
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif token == b",":
            frame = frames[-1]
            if frame[0] == b"[":
                frame[1] += 1
            else:
                frame[2] = True
        elif token == b":":
            frames[-1][2] = False
        elif frames[-1][0] == b"{" and frames[-1][2]:
            try:
                frames[-1][1] = json.loads(token)
            except ValueError:
                frames[-1][1] = None
    for frame in frames:
        if frame[1] is None:
            break
        path.append(frame[1])
    return path


def body_problems(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> list[dict[str, Any]]:
    try:
        value = json.loads(body)
    except RecursionError:
        # Deeper than the parser goes (about a thousand levels): find the place by scanning.
        message = f"JSON nested deeper than {max_depth} levels"
        return [{"loc": _too_deep_at(body, max_depth), "msg": message}]
    except ValueError:
        return []  # not JSON: the route says so in its own words
    return json_problems(value, max_depth)


def target_problems(scope: Scope) -> list[dict[str, Any]]:
    """NUL in the path or in a query parameter (name or value)."""
    errors: list[dict[str, Any]] = []
    if _NUL in str(scope.get("path", "")):
        errors.append({"loc": ["path"], "msg": _NUL_MESSAGE})
    # Decoded as Starlette decodes it for the routes.
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    if "%00" in query or _NUL in query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if _NUL in name or _NUL in value:
                errors.append({"loc": ["query", name], "msg": _NUL_MESSAGE})
    return errors[:_MAX_ERRORS]


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class RequestGuardMiddleware:
    """Pure ASGI: checks the request, then hands the app the body it already read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        correlation_id = correlation_id_from_scope(scope)
        errors = target_problems(scope)
        if errors:
            await validation_problem(errors, correlation_id)(scope, receive, send)
            return

        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await problem_response(
                    400, detail="Content-Length is not a number.", correlation_id=correlation_id
                )(scope, receive, send)
                return
            if length > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            has_body = length > 0
        else:
            has_body = chunked
        if not has_body:
            await self.app(scope, receive, send)
            return

        if not is_json_media_type(headers.get("content-type")):
            await problem_response(
                415,
                detail="Send the body as JSON, with Content-Type: application/json.",
                correlation_id=correlation_id,
            )(scope, receive, send)
            return

        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        except _ClientGone:
            return
        errors = body_problems(body, self.max_json_depth)
        if errors:
            await validation_problem(errors, correlation_id)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await problem_response(
            413,
            detail=f"The request body is larger than {self.max_body_bytes} bytes.",
            correlation_id=correlation_id_from_scope(scope),
            # The rest of the body is not read: the connection cannot carry another request.
            headers={"Connection": "close"},
        )(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body already read, then the client's next messages."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
