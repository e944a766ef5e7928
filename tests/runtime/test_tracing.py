"""Trace context as input from the wire: a W3C `traceparent` that is malformed, in an HTTP
header, a Kafka record header or an event envelope's metadata, is ignored (the work starts
a new trace) and never fails the request or the event. A valid one is continued. Log lines
carry the ids of the span they were written in; statements get spans inside a traced span
only."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cloudretail.runtime.app import create_service_app
from cloudretail.runtime.db import Database
from cloudretail.runtime.events.consumer import EventConsumer, EventContext
from cloudretail.runtime.events.envelope import Event, EventMetadata, kept_traceparent
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.tables import create_event_tables
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.logs import configure_logging
from cloudretail.runtime.tracing import (
    get_tracer,
    trace_statements,
    tracer_provider,
    use_provider,
    valid_traceparent,
)
from fastapi import APIRouter, Request
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.events.support import make_registry, order
from tests.gateway.conftest import EchoState, Server, echo_app, make_config
from tests.runtime.conftest import make_settings, running

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
MALFORMED = [
    "garbage",
    "",
    f"00-{TRACE}-{PARENT}",  # no flags
    f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
    f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE}-{PARENT}-01\r\nx-injected: 1",
    f"00-{TRACE}-{PARENT}-01-" + "a" * 10_000,
    '{"traceparent": "nested"}',
]

router = APIRouter()
log = logging.getLogger("tests.runtime.tracing")


@router.get("/api/things/{id}")
async def thing(id: str, request: Request) -> dict[str, str]:
    log.info("looking at a thing", extra={"thing": id})
    async with request.app.state.database.session() as session:
        await session.execute(sa.text("SELECT 1"))
    return {"id": id}


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    use_provider("testsvc", tracer_provider("testsvc", SimpleSpanProcessor(exporter)))
    try:
        yield exporter
    finally:
        use_provider("testsvc", None)


@pytest.fixture
async def client(tmp_path: Path, spans: InMemorySpanExporter) -> AsyncIterator[httpx.AsyncClient]:
    app = create_service_app(
        make_settings(f"sqlite+aiosqlite:///{tmp_path}/trace.db"), routers=[router]
    )
    async with running(app) as client:
        yield client


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    previous_handlers, previous_level = list(root.handlers), root.level
    configure_logging("testsvc", "INFO", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = previous_handlers
        root.setLevel(previous_level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _server_span(spans: InMemorySpanExporter) -> ReadableSpan:
    [span] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    return span


@pytest.mark.parametrize("value", [VALID, *MALFORMED[:3]])
def test_only_w3c_traceparents_are_valid(value: str) -> None:
    assert valid_traceparent(value) == (value if value == VALID else None)


@pytest.mark.parametrize("value", MALFORMED[3:])
def test_malformed_traceparents_are_refused(value: str) -> None:
    assert valid_traceparent(value) is None


async def test_a_request_continues_the_callers_trace_and_logs_its_ids(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, log_lines: io.StringIO
) -> None:
    response = await client.get("/api/things/7", headers={"traceparent": VALID})
    assert response.status_code == 200
    server = _server_span(spans)
    assert server.name == "GET /api/things/{id}"
    assert f"{server.context.trace_id:032x}" == TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    # The statement is a child of the request's span.
    [statement] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert statement.name.startswith("SELECT")
    assert statement.parent is not None and statement.parent.span_id == server.context.span_id
    # The handler's line and the access line carry the request span's ids.
    lines = [line for line in _lines(log_lines) if line["trace_id"] is not None]
    messages = {line["message"] for line in lines}
    assert "looking at a thing" in messages and "GET /api/things/7 200" in messages
    for line in lines:
        assert line["trace_id"] == TRACE
        assert line["span_id"] == f"{server.context.span_id:016x}"


@pytest.mark.parametrize("value", MALFORMED)
async def test_a_malformed_traceparent_header_starts_a_new_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, value: str
) -> None:
    # httpx refuses a header with a line break; send those bytes as the ASGI scope would
    # hold them if a server let them through.
    headers = {"traceparent": value.replace("\r\n", " ")}
    response = await client.get("/api/things/7", headers=headers)
    assert response.status_code == 200
    server = _server_span(spans)
    assert server.parent is None
    assert server.context.is_valid and f"{server.context.trace_id:032x}" != TRACE


async def test_probes_and_scrapes_are_not_traced(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    for path in ("/health/live", "/health/ready", "/metrics"):
        assert (await client.get(path)).status_code == 200
    # Token keys and revocations, which every process polls (no such route here: 404).
    assert (await client.get("/api/users/.well-known/jwks.json")).status_code == 404
    # The readiness check's statement ran outside any span: no trace of its own either.
    assert spans.get_finished_spans() == ()
    assert (await client.get("/api/things/1")).status_code == 200
    assert spans.get_finished_spans()  # and the fixture does record traced requests


async def test_statements_outside_a_traced_span_make_no_spans(
    tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    app = create_service_app(make_settings(f"sqlite+aiosqlite:///{tmp_path}/quiet.db"))
    database: Database = app.state.database
    async with database.session() as session:
        await session.execute(sa.text("SELECT 1"))
    assert spans.get_finished_spans() == ()
    with app.state.tracer.start_as_current_span("work"):
        async with database.session() as session:
            await session.execute(sa.text("SELECT 2"))
    statement, work = spans.get_finished_spans()
    assert (statement.name, statement.kind) == ("SELECT quiet.db", SpanKind.CLIENT)
    assert statement.parent is not None and statement.parent.span_id == work.context.span_id
    await database.dispose()


# -- the gateway -------------------------------------------------------------------------------


@pytest.fixture
async def gateway(spans: InMemorySpanExporter) -> AsyncIterator[tuple[Server, EchoState]]:
    state = EchoState("product")
    upstream = await Server(echo_app(state)).start()
    config = make_config({"product": [upstream.url]})
    app = create_gateway(
        config, tracer_provider=tracer_provider("gateway", SimpleSpanProcessor(spans))
    )
    server = await Server(app).start()
    try:
        yield server, state
    finally:
        await server.stop()
        await upstream.stop()


async def _through_gateway(server: Server, value: str) -> int:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/api/products", headers={"traceparent": value})
    return response.status_code


async def test_the_gateway_links_a_clients_trace_and_passes_its_own_span_on(
    gateway: tuple[Server, EchoState], spans: InMemorySpanExporter
) -> None:
    server, state = gateway
    assert await _through_gateway(server, VALID) == 200
    edge = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER][-1]
    [hop] = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.parent is not None
        if s.parent.span_id == edge.context.span_id
    ]
    # The edge starts the platform's own trace; the client's is a link, not the parent.
    assert edge.parent is None and f"{edge.context.trace_id:032x}" != TRACE
    [link] = edge.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (TRACE, PARENT)
    # The upstream got the gateway's client span as its parent, not the caller's header.
    sent = state.requests[-1]["headers"]["traceparent"]
    assert sent.startswith(f"00-{edge.context.trace_id:032x}-{hop.context.span_id:016x}-")
    assert int(sent.rsplit("-", 1)[1], 16) & 1  # sampled


async def test_a_client_cannot_switch_the_gateways_recording_off(
    gateway: tuple[Server, EchoState], spans: InMemorySpanExporter
) -> None:
    server, _ = gateway
    assert await _through_gateway(server, f"00-{TRACE}-{PARENT}-00") == 200
    edge = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER][-1]
    assert edge.context.trace_flags.sampled


@pytest.mark.parametrize("value", MALFORMED[:7])
async def test_the_gateway_starts_a_new_trace_for_a_malformed_traceparent(
    gateway: tuple[Server, EchoState], spans: InMemorySpanExporter, value: str
) -> None:
    server, state = gateway
    assert await _through_gateway(server, value) == 200
    edge = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER][-1]
    assert edge.parent is None and f"{edge.context.trace_id:032x}" != TRACE
    sent = state.requests[-1]["headers"]["traceparent"]
    assert sent != value and valid_traceparent(sent) is not None
    assert sent.split("-")[1] == f"{edge.context.trace_id:032x}"


# -- events ------------------------------------------------------------------------------------


def test_the_envelope_keeps_a_valid_traceparent_and_drops_anything_else() -> None:
    metadata = EventMetadata(correlation_id="c", service="orders", traceparent=VALID)
    event = Event(type="order.placed", data={"a": 1}, metadata=metadata)
    assert Event.from_bytes(event.to_bytes()).metadata.traceparent == VALID
    assert kept_traceparent(event.to_bytes()) == VALID
    for value in [*MALFORMED, 5, ["x"], {"a": 1}]:
        wire = json.loads(event.to_bytes())
        wire["metadata"]["traceparent"] = value
        raw = json.dumps(wire)
        parsed = Event.from_bytes(raw)  # the event is kept ...
        assert parsed.metadata.traceparent is None  # ... its trace context is not
        assert parsed.id == event.id and parsed.data == {"a": 1}
        assert kept_traceparent(raw) is None
    assert kept_traceparent(b"not json") is None
    assert kept_traceparent(b'{"metadata": 7}') is None


@pytest.fixture
async def consuming(
    tmp_path: Path, spans: InMemorySpanExporter
) -> AsyncIterator[tuple[MemoryBus, EventConsumer, list[str]]]:
    registry = make_registry("trace")
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/consumer.db")
    async with database.engine.begin() as connection:
        await create_event_tables(connection)
    bus = MemoryBus()
    handled: list[str] = []
    tracer = get_tracer(tracer_provider("testsvc", SimpleSpanProcessor(spans)))
    trace_statements(database.engine.sync_engine, tracer)  # as create_service_app does

    async def handler(ctx: EventContext) -> None:
        await ctx.session.execute(sa.text("SELECT 1"))
        handled.append(str(ctx.event.id))

    consumer = EventConsumer(
        database,
        registry,
        bus.source("testsvc", [registry.get("order.placed").topic]),
        bus.producer(),
        service="testsvc",
        handlers={"order.placed": handler},
        poll_timeout=0.05,
        tracer=tracer,
    )
    await consumer.start()
    try:
        yield bus, consumer, handled
    finally:
        await consumer.stop()
        await database.dispose()


async def _consume(
    bus: MemoryBus,
    consumer: EventConsumer,
    handled: list[str],
    spans: InMemorySpanExporter,
    *,
    header: bytes | None,
    kept: str | None,
) -> ReadableSpan:
    registry = consumer.registry
    event = Event(
        type="order.placed",
        data=registry.validate("order.placed", order()),
        metadata=EventMetadata(correlation_id="c-1", service="orders"),
    )
    wire = json.loads(event.to_bytes())
    wire["metadata"]["traceparent"] = kept
    headers = [] if header is None else [("traceparent", header)]
    await bus.producer().send(
        registry.get("order.placed").topic, b"k", json.dumps(wire).encode(), headers
    )
    for _ in range(200):
        if str(event.id) in handled and consumer.stats.applied >= len(handled):
            break
        await asyncio.sleep(0.02)
    assert str(event.id) in handled, "the event was not applied"
    assert consumer.stats.dead_lettered == 0
    [span] = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CONSUMER
        and s.attributes is not None
        and s.attributes["messaging.message.id"] == str(event.id)
    ]
    statements = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert any(
        s.parent is not None and s.parent.span_id == span.context.span_id for s in statements
    ), "the handler's statement is not in the event's span"
    return span


@pytest.mark.parametrize(
    "header",
    [value.encode() for value in MALFORMED[:7]] + [b"\xff\xfe\x00", b"00-\xe2\x82\xac"],
)
async def test_a_malformed_kafka_header_starts_a_new_trace(
    consuming: tuple[MemoryBus, EventConsumer, list[str]],
    spans: InMemorySpanExporter,
    header: bytes,
) -> None:
    span = await _consume(*consuming, spans, header=header, kept=None)
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE


@pytest.mark.parametrize("kept", MALFORMED)
async def test_a_malformed_envelope_traceparent_starts_a_new_trace(
    consuming: tuple[MemoryBus, EventConsumer, list[str]],
    spans: InMemorySpanExporter,
    kept: str,
) -> None:
    span = await _consume(*consuming, spans, header=None, kept=kept)
    assert span.parent is None and f"{span.context.trace_id:032x}" != TRACE


async def test_a_consumer_continues_the_header_else_the_envelope(
    consuming: tuple[MemoryBus, EventConsumer, list[str]], spans: InMemorySpanExporter
) -> None:
    other = f"00-{uuid.uuid4().hex}-{'1' * 16}-01"
    from_header = await _consume(*consuming, spans, header=VALID.encode(), kept=other)
    assert f"{from_header.context.trace_id:032x}" == TRACE
    assert from_header.parent is not None and f"{from_header.parent.span_id:016x}" == PARENT
    from_envelope = await _consume(*consuming, spans, header=b"garbage", kept=other)
    assert f"{from_envelope.context.trace_id:032x}" == other.split("-")[1]
    assert from_envelope.parent is not None
    assert f"{from_envelope.parent.span_id:016x}" == "1" * 16
