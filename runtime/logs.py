"""Structured logs: one JSON object per line on stdout, ready for any log shipper."""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import IO, Any

from cloudretail.runtime.correlation import get_correlation_id
from cloudretail.runtime.jsonenc import dumps
from cloudretail.runtime.tracing import current_ids
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
# uvicorn's `color_message` is the message again with ANSI codes, noise in a JSON line.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)
# Servers log through these; routing them to the root handler keeps every line JSON.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi")
# Probes and scrapes arrive every few seconds; at INFO they would drown the real traffic.
_QUIET_PATHS = ("/health/", "/metrics")


def log_timestamp(created: float) -> str:
    """A log line's time: UTC, milliseconds, `Z` (the gateway's access log uses it too)."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: fixed keys first (the trace and span ids of the
    span it was written in among them), then the record's extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        trace_id, span_id = current_ids()
        payload: dict[str, Any] = {
            "timestamp": log_timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": get_correlation_id(),
            # The span the line was written in (null outside one): the trace viewer's way in.
            "trace_id": trace_id,
            "span_id": span_id,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_") and key not in payload:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        try:
            return dumps(payload)
        except (TypeError, ValueError):
            # An extra that is not JSON must not cost the whole line.
            return dumps({key: _printable(value) for key, value in payload.items()})


def _printable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so configuring twice replaces it."""


def configure_logging(service: str, level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log record in the process, uvicorn's included, to stream as JSON lines."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _SERVER_LOGGERS:
        server_logger = logging.getLogger(name)
        server_logger.handlers.clear()
        server_logger.propagate = True
    # The Kafka client narrates every group join and partition assignment at INFO, httpx
    # every request it makes; the access log already has one line per request.
    for chatty in ("aiokafka", "httpx"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


class AccessLogMiddleware:
    """One line per request with the correlation id, which uvicorn's access log lacks.

    Add it inside CorrelationIdMiddleware so the id is set when the line is written.
    """

    def __init__(self, app: ASGIApp, logger_name: str = "cloudretail.access") -> None:
        self.app = app
        self.logger = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            path = scope.get("path", "")
            quiet = status < 400 and path.startswith(_QUIET_PATHS)
            self.logger.log(
                logging.DEBUG if quiet else logging.INFO,
                "%s %s %s",
                scope.get("method"),
                path,
                status,
                extra={
                    "method": scope.get("method"),
                    "path": path,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
