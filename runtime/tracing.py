"""Distributed tracing: OpenTelemetry spans, and the W3C trace context carried on every hop.

Each process has one TracerProvider (`configure_tracing`), its `service.name` the
deployable's name unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names it. Spans are
made and their context is passed on whether or not anything is exported, so every log line
of a traced request carries its trace id. Spans leave the process (OTLP, HTTP/protobuf, in a
background thread) only when OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set (and OTEL_TRACES_EXPORTER is not `none`); the
SDK reads the other OTEL_* variables itself (sampler, batch sizes, headers, timeouts,
OTEL_PROPAGATORS, OTEL_SDK_DISABLED).

The hops: incoming requests (FastAPI's own server span, set up in `cloudretail.runtime.app`; the
gateway opens its own), outgoing calls (`inject_headers`), SQL statements
(`trace_statements`), events (`current_traceparent` into the envelope, the Kafka record's
headers, `message_context` on the consuming side).

Measured per request on a service (its whole stack costs about 210 µs of CPU): FastAPI's
server span adds 115 µs, 205 µs with its spans per dependency and endpoint (left off), and
opentelemetry-instrumentation-fastapi would add 220 µs (it matches every route again to
name the span). Statements are traced here because the SQLAlchemy instrumentation package
refuses SQLAlchemy 2.1; the platform's HTTP client is its own.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Iterable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

if TYPE_CHECKING:
    from sqlalchemy import Engine

TRACEPARENT = "traceparent"
# The instrumentation scope every span of the runtime is made under.
SCOPE = "runtime"
# W3C Trace Context, version 00: version-trace id-parent id-flags in lower-case hex.
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
UNTRACED_PATHS = ("/health/", "/metrics")
_WELL_KNOWN = "/.well-known/"
# A statement's text is kept on its span up to this many characters (a long IN list).
_MAX_STATEMENT = 2000
_STATEMENT_SPAN = "cloudretail.runtime.tracing.statement_span"

_configured: TracerProvider | None = None
_configure_lock = threading.Lock()
# Deployables given a provider of their own in this process (`use_provider`).
_deployables: dict[str, trace.TracerProvider] = {}
_traced_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


# -- providers --------------------------------------------------------------------------


def exporting() -> bool:
    """Whether the environment asks for spans to be exported."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    return bool(endpoint) and os.environ.get("OTEL_TRACES_EXPORTER", "").lower() != "none"


def tracer_provider(service: str, processor: SpanProcessor | None = None) -> TracerProvider:
    """A provider for the deployable `service`: `processor` receives its spans, by default
    a batch exporter over OTLP/HTTP when `exporting()`, otherwise nothing leaves."""
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    named = str(resource.attributes.get(SERVICE_NAME, ""))
    if not named or named.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)
    if processor is None and exporting():
        # Imported only here: a process that exports nothing does not load the exporter.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    if processor is not None:
        provider.add_span_processor(processor)
    return provider


def configure_tracing(service: str) -> TracerProvider:
    """The process's provider, made the global one; a second call returns the first."""
    global _configured
    with _configure_lock:
        if _configured is None:
            _configured = tracer_provider(service)
            trace.set_tracer_provider(_configured)
        return _configured


def get_tracer(provider: trace.TracerProvider | None = None) -> Tracer:
    """The runtime's tracer from `provider`, by default the process's (which may be set
    later: the global one is a proxy until then)."""
    if provider is None:
        return trace.get_tracer(SCOPE)
    return provider.get_tracer(SCOPE)


def use_provider(service: str, provider: trace.TracerProvider | None) -> None:
    """Give the deployable `service` a provider of its own in this process (None: back to
    the process's), for apps built after this. Several deployables in one process (the
    tests run a whole platform so) then each report under their own service.name."""
    if provider is None:
        _deployables.pop(service, None)
    else:
        _deployables[service] = provider


def provider_for(service: str) -> trace.TracerProvider | None:
    """The provider `use_provider` gave the deployable `service`; None: the process's."""
    return _deployables.get(service)


# -- the trace context on the wire ------------------------------------------------------


def inject_headers(context: Context | None = None) -> dict[str, str]:
    """Headers carrying the trace context (of `context`, by default the current one) to
    the next hop, in the propagators' format (W3C `traceparent` unless OTEL_PROPAGATORS
    says otherwise)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def message_headers(span: Span) -> tuple[tuple[str, bytes], ...]:
    """Record headers carrying `span`'s context to the consumers of a message."""
    carried = inject_headers(trace.set_span_in_context(span))
    return tuple((name, value.encode()) for name, value in carried.items())


def header_fields() -> frozenset[str]:
    """The header names the propagators read and write (lower case)."""
    return frozenset(name.lower() for name in propagate.get_global_textmap().fields)


def extract_context(carrier: Mapping[str, str]) -> Context:
    """The context `carrier` (lower-case header names) continues: a new trace when it holds
    nothing valid. The propagators ignore malformed values; they never raise."""
    return propagate.extract(carrier, context=Context())


def message_context(headers: Iterable[tuple[str, bytes]], traceparent: str | None) -> Context:
    """The context a consumed message continues: its headers' (the span that sent it),
    else the traceparent its envelope kept (the span that wrote it), else a new trace."""
    fields = header_fields()
    carrier: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key in fields:
            try:
                carrier[key] = value.decode("ascii")
            except UnicodeDecodeError:
                continue  # not a header value at all: ignored like any malformed one
    if carrier:
        context = extract_context(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    if traceparent is not None:
        return extract_context({TRACEPARENT: traceparent})
    return Context()


def valid_traceparent(value: object) -> str | None:
    """`value` when it is a W3C traceparent (version 00, ids not all zero), else None."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == _ZERO_TRACE or match[2] == _ZERO_SPAN:
        return None
    return value


def current_traceparent() -> str | None:
    """The current span as a W3C traceparent, None outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def current_ids() -> tuple[str | None, str | None]:
    """The current trace id and span id as hex, (None, None) outside a span (for logs)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def fail(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


# -- incoming requests ------------------------------------------------------------------


def untraced_path(path: str) -> bool:
    """Whether a request for `path` starts no trace: probes, scrapes, and well-known
    documents (RFC 8615: the token keys and revocations every process polls). Each comes
    every few seconds; a trace each would bury the real traffic."""
    return path.startswith(UNTRACED_PATHS) or _WELL_KNOWN in path


def untraced(scope: MutableMapping[str, Any]) -> bool:
    """`untraced_path` for an ASGI scope (FastAPI's telemetry `exclude`)."""
    return untraced_path(str(scope.get("path", "")))


# -- SQL statements ---------------------------------------------------------------------


def trace_statements(engine: Engine, tracer: Tracer) -> None:
    """A client span per statement `engine` runs inside a recorded span (a request, an
    event's handling, a saga step). Statements outside one (the outbox relay's polls,
    health checks, timers) start no trace of their own, which would bury the real ones."""
    from sqlalchemy import event

    with _configure_lock:
        if engine in _traced_engines:
            return  # an app built twice on one database: its statements get one span each
        _traced_engines.add(engine)
    url = engine.url
    attributes: dict[str, Any] = {"db.system.name": _system(engine.dialect.name)}
    if url.database:
        attributes["db.namespace"] = os.path.basename(url.database)
    if url.host:
        attributes["server.address"] = url.host
    label = attributes.get("db.namespace") or attributes["db.system.name"]

    def before(
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not trace.get_current_span().is_recording():
            return
        operation = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        # A connection runs one statement at a time: its info dict holds the open span.
        connection.info[_STATEMENT_SPAN] = tracer.start_span(
            f"{operation} {label}".strip(),
            kind=SpanKind.CLIENT,
            attributes={
                **attributes,
                "db.operation.name": operation,
                "db.query.text": statement[:_MAX_STATEMENT],
            },
        )

    def after(
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        span: Span | None = connection.info.pop(_STATEMENT_SPAN, None)
        if span is not None:
            span.end()

    def failed(exception_context: Any) -> None:
        connection = exception_context.connection
        span: Span | None = (
            None if connection is None else connection.info.pop(_STATEMENT_SPAN, None)
        )
        if span is not None:
            error = exception_context.original_exception
            span.record_exception(error)
            fail(span, type(error).__name__)
            span.end()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)


def _system(dialect: str) -> str:
    return "postgresql" if dialect.startswith("postgres") else dialect
