"""RFC 9457 problem details: every error a service returns has one JSON shape."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from cloudretail.runtime.correlation import CORRELATION_HEADER, correlation_id_from_scope
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# RFC 9110 names; Python before 3.13 still says "Unprocessable Entity" and the like, and the
# title should not change with the interpreter.
_TITLES = {413: "Content Too Large", 422: "Unprocessable Content"}
_RESERVED_MEMBERS = frozenset({"type", "title", "status", "detail", "instance", "correlation_id"})


def status_title(status: int) -> str:
    if status in _TITLES:
        return _TITLES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type: str = "about:blank",
    instance: str | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProblemResponse:
    """Build a problem+json response; members left as None are omitted, as RFC 9457 allows."""
    body: dict[str, Any] = {"type": type, "title": title or status_title(status), "status": status}
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update({key: value for key, value in extra.items() if key not in _RESERVED_MEMBERS})
    body["correlation_id"] = correlation_id
    response_headers = dict(headers or {})
    if correlation_id:
        # The error may be rendered outside the correlation middleware (see fallback below).
        response_headers.setdefault(CORRELATION_HEADER, correlation_id)
    return ProblemResponse(
        jsonable_encoder(body), status_code=status, headers=response_headers or None
    )


class Problem(Exception):
    """Raise from a handler to answer with a problem+json body.

    `extra` keyword arguments become extension members, e.g.
    `Problem(409, "Not enough stock", type="/problems/out-of-stock", available=2)`.
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        instance: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        reserved = _RESERVED_MEMBERS.intersection(extra)
        if reserved:
            raise TypeError(f"extension members may not reuse standard names: {sorted(reserved)}")
        super().__init__(detail or title or status_title(status))
        self.status = status
        self.title = title or status_title(status)
        self.detail = detail
        self.type = type
        self.instance = instance
        self.headers = dict(headers or {})
        self.extra = extra

    def to_response(self, correlation_id: str | None = None) -> ProblemResponse:
        return problem_response(
            self.status,
            title=self.title,
            detail=self.detail,
            type=self.type,
            instance=self.instance,
            correlation_id=correlation_id,
            headers=self.headers,
            extra=self.extra,
        )


def _correlation_id(request: Request) -> str | None:
    return correlation_id_from_scope(request.scope)


async def _handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return exc.to_response(_correlation_id(request))


async def _handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (204, 304):
        # These statuses may not carry a body.
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail: str | None = None
    extra: dict[str, Any] = {}
    if isinstance(exc.detail, str):
        # Starlette fills detail with the status phrase when nobody said more; that is a title.
        detail = None if exc.detail == status_title(exc.status_code) else exc.detail
    elif exc.detail is not None:
        extra["errors"] = exc.detail
    return problem_response(
        exc.status_code,
        detail=detail,
        correlation_id=_correlation_id(request),
        headers=exc.headers,
        extra=extra,
    )


def validation_problem(
    errors: Sequence[Mapping[str, Any]], correlation_id: str | None
) -> ProblemResponse:
    """The 422 of invalid input: one `{"loc": [...], "msg": ...}` per error, as FastAPI's."""
    listed = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", ""))} for error in errors
    ]
    count = len(listed)
    return problem_response(
        422,
        detail=f"The request is invalid: {count} error{'s' if count != 1 else ''}.",
        correlation_id=correlation_id,
        extra={"errors": listed},
    )


async def _handle_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_problem(exc.errors(), _correlation_id(request))


def _sqlstate(exc: DBAPIError) -> str:
    original = exc.orig
    return str(getattr(original, "sqlstate", None) or getattr(original, "pgcode", None) or "")


def _integrity_detail(exc: IntegrityError) -> str:
    # Classified from the driver's message or SQLSTATE, never echoed: it holds SQL and values.
    code = _sqlstate(exc)
    message = str(exc.orig).lower()
    if code == "23505" or "unique" in message:
        return "A resource with the same unique value already exists."
    if code == "23503" or "foreign key" in message:
        return "The request refers to a resource that does not exist, or one still in use."
    if code == "23502" or "not null" in message:
        return "A required value is missing."
    return "The request conflicts with the current state of the resource."


async def _handle_integrity_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IntegrityError)
    logger.warning(
        "integrity error answered with 409",
        extra={"error": str(exc.orig), "path": request.url.path},
    )
    return problem_response(
        409, detail=_integrity_detail(exc), correlation_id=_correlation_id(request)
    )


async def _handle_dependency_unavailable(request: Request, exc: Exception) -> Response:
    logger.error(
        "dependency unavailable",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"path": request.url.path},
    )
    return problem_response(
        503,
        detail="A service this one depends on is unreachable right now; try again shortly.",
        correlation_id=_correlation_id(request),
        headers={"Retry-After": "5"},
    )


# SQLSTATE classes that say the database cannot serve now, not that the request is wrong:
# 08 connection exception, 3D the database does not exist, 28 the server refused our
# credentials, 53 insufficient resources (too many connections), 57 operator intervention
# (statement timeout, shutdown, starting up), 58 system error.
_UNAVAILABLE_CLASSES = frozenset({"08", "3D", "28", "53", "57", "58"})
# Class 22 (data exception: a value that does not fit its column, a NUL in text) is the
# client's input. Routes validate their input before it gets here; this is the last resort.
_DATA_EXCEPTION_CLASS = "22"


async def _handle_database_error(request: Request, exc: Exception) -> Response:
    """Driver errors that are neither integrity (409) nor plainly operational (503)."""
    assert isinstance(exc, DBAPIError)
    code = _sqlstate(exc)
    # First: asyncpg refuses a value it cannot encode (an int past int32, say) before it
    # reaches the server, with SQLSTATE 22000; that is the input's fault, not the server's.
    if code[:2] == _DATA_EXCEPTION_CLASS:
        logger.warning(
            "database refused a value; answered 422",
            extra={"sqlstate": code, "error": str(exc.orig), "path": request.url.path},
        )
        return problem_response(
            422,
            detail="A value in the request does not fit what the service can store.",
            correlation_id=_correlation_id(request),
        )
    if (
        exc.connection_invalidated
        or isinstance(exc, InterfaceError)
        or code[:2] in _UNAVAILABLE_CLASSES
    ):
        return await _handle_dependency_unavailable(request, exc)
    return await _handle_unexpected(request, exc)


def internal_error_response(correlation_id: str | None) -> ProblemResponse:
    return problem_response(
        500,
        detail="An unexpected error occurred. Quote the correlation id when reporting it.",
        correlation_id=correlation_id,
    )


async def _handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.error(
        "unhandled error",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"method": request.method, "path": request.url.path},
    )
    return internal_error_response(_correlation_id(request))


class UnhandledErrorMiddleware:
    """Answers unexpected exceptions with a 500 problem, inside the other middleware.

    Starlette handles `Exception` in its outermost layer, which re-raises after responding:
    servers then log every error twice, and outer middleware (metrics, correlation) never
    see the response. Catching here, innermost, avoids both.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        response_started = False

        async def watch_start(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, watch_start)
        except Exception as error:
            logger.error(
                "unhandled error",
                exc_info=(type(error), error, error.__traceback__),
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )
            if response_started:
                # Too late for a clean answer; let the server drop the connection.
                raise
            response = internal_error_response(correlation_id_from_scope(scope))
            await response(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    """Route every error through problem+json.

    Call it before adding other middleware: the 500 fallback must be the innermost layer.
    """
    app.add_exception_handler(Problem, _handle_problem)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(IntegrityError, _handle_integrity_error)
    app.add_exception_handler(DBAPIError, _handle_database_error)
    # A dependency that cannot be reached is a 503 the caller may retry, not a bug (500).
    # asyncpg raises the builtin ConnectionRefusedError when PostgreSQL is down, TimeoutError
    # when it does not answer (connect or statement timeout) and gaierror for an unknown host.
    for unavailable in (
        OperationalError,
        DisconnectionError,
        PoolTimeoutError,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    ):
        app.add_exception_handler(unavailable, _handle_dependency_unavailable)
    app.add_middleware(UnhandledErrorMiddleware)
    # Safety net for errors raised by middleware added outside the fallback.
    app.add_exception_handler(Exception, _handle_unexpected)
