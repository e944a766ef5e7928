"""One order placed through the gateway is one trace across every process it reaches: the
gateway, the order saga's HTTP calls to inventory and payment, their database statements,
and, through the outbox, the broker and the consumers, the handling of its events.

The services run as real servers calling each other over HTTP (tests/services/commerce.py),
the gateway in front of them; each deployable has its own TracerProvider (so each span says
which one made it) exporting to one InMemorySpanExporter. The outbox relays and the
consumers run on a MemoryBus in place of Kafka, with the handlers the generated apps wire.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudretail.runtime.auth import TokenIssuer, TokenVerifier, static_jwks
from cloudretail.runtime.events.consumer import EventConsumer, Handler, consumer_topics
from cloudretail.runtime.events.memory import MemoryBus
from cloudretail.runtime.events.outbox import OutboxRelay, outbox_backlog
from cloudretail.runtime.gateway import create_gateway
from cloudretail.runtime.gateway.config import read_route_file
from cloudretail.runtime.tracing import tracer_provider, use_provider
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from generated.events import REGISTRY
from tests.gateway.conftest import ROUTES, Server, make_config
from tests.services.commerce import (
    SERVICES,
    Shop,
    capture_event_handlers,
    eventually,
    order_body,
    running_shop,
)
from tests.services.conftest import CUSTOMER_ID


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Every deployable's spans, each deployable on a provider of its own."""
    exporter = InMemorySpanExporter()
    for service in SERVICES:
        use_provider(service, tracer_provider(service, SimpleSpanProcessor(exporter)))
    try:
        yield exporter
    finally:
        for service in SERVICES:
            use_provider(service, None)


class Traced:
    """The shop, its gateway, and the relays and consumers that move its events."""

    def __init__(self, shop: Shop, gateway: Server, handlers: dict[str, dict[str, Handler]]):
        self.shop = shop
        self.gateway = gateway
        self.bus = MemoryBus()
        tracer = {service: shop.app(service).state.tracer for service in SERVICES}
        self.relays = [
            OutboxRelay(shop.database(name), self.bus.producer(), tracer=tracer[name])
            for name in SERVICES
        ]
        self.consumers = {
            service: EventConsumer(
                shop.database(service),
                REGISTRY,
                self.bus.source(service, consumer_topics(REGISTRY, wired)),
                self.bus.producer(),
                service=service,
                handlers=wired,
                backoff_base=0.01,
                tracer=tracer[service],
            )
            for service, wired in handlers.items()
        }

    async def start(self) -> None:
        for relay in self.relays:
            await relay.start()
        for consumer in self.consumers.values():
            await consumer.start()

    async def relayed(self) -> bool:
        """Whether every event written so far has been sent."""
        for relay in self.relays:
            if (await outbox_backlog(relay.database)).pending:
                return False
        return True

    async def stop(self) -> None:
        for consumer in self.consumers.values():
            await consumer.stop()
        for relay in self.relays:
            await relay.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def traced(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
    spans: InMemorySpanExporter,
) -> AsyncIterator[Traced]:
    handlers = {service: capture_event_handlers(monkeypatch, service) for service in SERVICES}
    async with running_shop(request.param, tmp_path, issuer) as shop:
        consuming = {service: wired for service, wired in handlers.items() if wired}
        config = make_config({service: [shop.servers[service].url] for service in SERVICES})
        token = read_route_file(ROUTES).token
        gateway = create_gateway(
            config,
            verifier=TokenVerifier(
                static_jwks(issuer.jwks()),
                issuer=issuer.issuer,
                audience=issuer.audience,
                roles=token.roles if token else None,
            ),
            tracer_provider=tracer_provider("gateway", SimpleSpanProcessor(spans)),
        )
        server = await Server(gateway).start()
        flow = Traced(shop, server, consuming)
        await flow.start()
        try:
            yield flow
        finally:
            await flow.stop()
            await server.stop()


def _service(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"])


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_an_order_through_the_gateway_is_one_trace(
    traced: Traced, spans: InMemorySpanExporter
) -> None:
    shop = traced.shop
    product_id = await shop.new_product(stock=5, price="12.50")

    async def order_upstream_up() -> bool:
        return bool(traced.gateway.app.registry.upstreams["order"].healthy_count > 0)

    await eventually(order_upstream_up, 10, "the gateway to see the order service")
    await eventually(traced.relayed, 10, "the setup's events to be relayed")
    spans.clear()  # the product and its stock were set up in traces of their own
    async with httpx.AsyncClient(base_url=traced.gateway.url, timeout=30) as client:
        placed = await client.post(
            "/api/orders", json=order_body(product_id, 2), headers=shop.bearer(CUSTOMER_ID)
        )
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] == "confirmed"

    [edge] = [
        span
        for span in spans.get_finished_spans()
        if _service(span) == "gateway" and span.kind is SpanKind.SERVER
    ]
    assert edge.name == "POST /api/orders" and edge.parent is None
    trace_id = edge.context.trace_id

    def of_trace() -> list[ReadableSpan]:
        return [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]

    def expected_processing() -> set[tuple[str, str]]:
        """Every consumer of every event the order published: (consumer, "process <type>")."""
        published = [
            span.name.removeprefix("publish ")
            for span in of_trace()
            if span.kind is SpanKind.PRODUCER
        ]
        return {
            (service, f"process {kind}")
            for kind in published
            for service, consumer in traced.consumers.items()
            if kind in consumer.handlers
        }

    async def all_processed() -> bool:
        done = {(_service(s), s.name) for s in of_trace() if s.kind is SpanKind.CONSUMER}
        wanted = expected_processing()
        return bool(wanted) and wanted <= done

    await eventually(all_processed, 20, "every consumer of the order's events to handle them")
    trace = of_trace()
    by_id = {span.context.span_id: span for span in trace}

    # Every deployable the order reached, and every consumer of its events, is in the trace.
    services = {_service(span) for span in trace}
    assert {"gateway", "order", "inventory", "payment"} <= services
    consumers = {service for service, _ in expected_processing()}
    assert consumers >= {"inventory", "payment", "order"}, consumers

    # One tree: everything but the gateway's span hangs off a span of the same trace.
    orphans = [span.name for span in trace if span is not edge and _parent(span) not in by_id]
    assert not orphans, orphans
    # Nothing else was traced under another id meanwhile: every span of the order's events
    # and calls is here (the setup's spans were cleared before the order).
    assert {span.context.trace_id for span in spans.get_finished_spans()} == {trace_id}

    def parent_of(span: ReadableSpan) -> ReadableSpan:
        parent = _parent(span)
        assert parent is not None
        return by_id[parent]

    # HTTP hops: the gateway's client span is the parent of the order service's server span;
    # the saga's client spans (order) are the parents of inventory's and payment's.
    [order_request] = [s for s in trace if _service(s) == "order" and s.kind is SpanKind.SERVER]
    hop = parent_of(order_request)
    assert (_service(hop), hop.kind, hop.name) == ("gateway", SpanKind.CLIENT, "POST order")
    assert parent_of(hop) is edge
    for callee in ("inventory", "payment"):
        served = [s for s in trace if _service(s) == callee and s.kind is SpanKind.SERVER]
        assert served, f"no request reached {callee}"
        for span in served:
            caller = parent_of(span)
            assert (_service(caller), caller.kind) == ("order", SpanKind.CLIENT), span.name
            assert caller.attributes is not None
            assert caller.attributes["peer.service"] == callee
    steps = {s.name for s in trace if _service(s) == "order" and s.kind is SpanKind.INTERNAL}
    assert {"place_order reserve_stock", "place_order charge_payment"} <= steps, steps

    # Statements: children of the span that ran them, in every service.
    for service in ("order", "inventory", "payment"):
        statements = [
            s
            for s in trace
            if _service(s) == service
            and s.kind is SpanKind.CLIENT
            and s.attributes is not None
            and "db.system.name" in s.attributes
        ]
        assert statements, f"no statement of {service} in the trace"
        assert all(_service(parent_of(s)) == service for s in statements)

    # Outbox -> broker -> consumer: the relay's send continues the span that wrote the event,
    # and each consumer's span continues the send (the message's traceparent header).
    produced = [s for s in trace if s.kind is SpanKind.PRODUCER]
    assert any(s.name == "publish order.created" for s in produced)
    for send in produced:
        writer = parent_of(send)
        assert _service(writer) == _service(send), send.name
        assert writer.kind in (SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.INTERNAL)
    for processing in (s for s in trace if s.kind is SpanKind.CONSUMER):
        send = parent_of(processing)
        assert send.kind is SpanKind.PRODUCER
        assert processing.name.removeprefix("process ") == send.name.removeprefix("publish ")
        assert _attribute(send, "messaging.message.id") == _attribute(
            processing, "messaging.message.id"
        )
    # The handler's statements, and the events it publishes, are in the consumer's span.
    [reserving] = [
        s for s in trace if _service(s) == "inventory" and s.name == "process order.created"
    ]
    inside = [s for s in trace if _parent(s) == reserving.context.span_id]
    assert any(s.kind is SpanKind.CLIENT for s in inside), [s.name for s in inside]


def _attribute(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes[name]


async def test_a_client_trace_is_linked_and_the_order_is_one_trace_of_the_platform(
    traced: Traced, spans: InMemorySpanExporter
) -> None:
    """A caller's W3C traceparent is linked from the gateway's span, which starts the
    platform's own trace: the whole order is that one trace."""
    shop = traced.shop
    product_id = await shop.new_product(stock=5)

    async def order_upstream_up() -> bool:
        return bool(traced.gateway.app.registry.upstreams["order"].healthy_count > 0)

    await eventually(order_upstream_up, 10, "the gateway to see the order service")
    trace_id = uuid.uuid4().hex
    caller = "00f067aa0ba902b7"
    async with httpx.AsyncClient(base_url=traced.gateway.url, timeout=30) as client:
        placed = await client.post(
            "/api/orders",
            json=order_body(product_id, 1),
            headers={**shop.bearer(CUSTOMER_ID), "traceparent": f"00-{trace_id}-{caller}-01"},
        )
    assert placed.status_code == 201, placed.text
    finished = spans.get_finished_spans()
    assert not [s for s in finished if f"{s.context.trace_id:032x}" == trace_id]
    [edge] = [
        s
        for s in finished
        if _service(s) == "gateway" and s.kind is SpanKind.SERVER
        if [f"{link.context.trace_id:032x}" for link in s.links] == [trace_id]
    ]
    assert edge.parent is None and edge.links[0].context.span_id == int(caller, 16)
    mine = [s for s in finished if s.context.trace_id == edge.context.trace_id]
    assert {"gateway", "order", "inventory", "payment"} <= {_service(s) for s in mine}
