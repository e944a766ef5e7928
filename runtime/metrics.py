"""Prometheus metrics: HTTP traffic by route template, database pool occupancy, the event
machinery (outbox, consumers) and sagas, `/metrics`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, Protocol, get_args

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Requests that matched no route share one label; raw paths would let any scanner create
# unbounded time series.
UNMATCHED_ROUTE = "<unmatched>"
# Servers accept any token as a method; the label must not grow with what clients invent.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# The outcome labels: fixed sets, so a dashboard or an alert can name every one.
ConsumerOutcome = Literal["applied", "duplicate", "skipped", "dead_lettered", "retried"]
SagaStepOutcome = Literal["done", "failed", "compensated"]
SagaOutcome = Literal["completed", "compensated", "failed"]
CONSUMER_OUTCOMES: tuple[ConsumerOutcome, ...] = get_args(ConsumerOutcome)
SAGA_STEP_OUTCOMES: tuple[SagaStepOutcome, ...] = get_args(SagaStepOutcome)
SAGA_OUTCOMES: tuple[SagaOutcome, ...] = get_args(SagaOutcome)


class PoolStatsLike(Protocol):
    @property
    def size(self) -> int: ...

    @property
    def checked_out(self) -> int: ...

    @property
    def overflow(self) -> int: ...


class Metrics:
    """The metrics of one app, in a registry of its own.

    A registry per app, instead of prometheus_client's global one, lets several apps live in
    one process (tests, or a service mounting another) without duplicate-metric errors.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process_metrics:
            process_collector.ProcessCollector(registry=self.registry)
            platform_collector.PlatformCollector(registry=self.registry)
            gc_collector.GCCollector(registry=self.registry)
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests handled.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from request start to the end of the response body.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being handled right now.",
            ["method"],
            registry=self.registry,
        )
        self.dependency_up = Gauge(
            "dependency_up",
            "1 when the dependency passed the last readiness check, 0 when it did not.",
            ["dependency"],
            registry=self.registry,
        )
        self._events: EventMetrics | None = None
        self._sagas: SagaMetrics | None = None

    def event_metrics(self) -> EventMetrics:
        """The outbox and consumer families, registered on the first call: a service app
        registers them at creation (so /metrics lists them from the start), the gateway
        never does."""
        if self._events is None:
            self._events = EventMetrics(self.registry)
        return self._events

    def saga_metrics(self) -> SagaMetrics:
        """The saga families, registered on the first call (see `event_metrics`)."""
        if self._sagas is None:
            self._sagas = SagaMetrics(self.registry)
        return self._sagas

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        labels = (method, route, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def track_pool(self, stats: Callable[[], PoolStatsLike]) -> None:
        """Pool gauges read at scrape time, so they are never stale between requests."""
        gauges = {
            "db_pool_size": ("Connections the pool keeps open.", lambda: stats().size),
            "db_pool_checked_out": ("Connections in use.", lambda: stats().checked_out),
            "db_pool_overflow": (
                "Connections open beyond the pool size.",
                lambda: stats().overflow,
            ),
        }
        for name, (documentation, read) in gauges.items():
            Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EventMetrics:
    """What the outbox relay and the event consumer report (they take one of these, or
    nothing, and never touch prometheus_client themselves).

    Label values come from the spec, never from message contents: a group is a service's
    name, topics and partitions are those it subscribes to.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outbox_pending = Gauge(
            "outbox_pending_events",
            "Events in this service's outbox not yet sent to the broker.",
            registry=registry,
        )
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest event in the outbox not yet sent; 0 when none is pending.",
            registry=registry,
        )
        self.outbox_sent = Counter(
            "outbox_sent_total",
            "Outbox events the relay sent to the broker (acknowledged).",
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Records the consumer group is behind the partition's high watermark, as of "
            "its last fetch from that partition.",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.consumer_events = Counter(
            "consumer_events_total",
            "Consumed events by outcome: applied, duplicate (applied before), skipped (no "
            "handler here), dead_lettered, retried (a failed attempt, tried again).",
            ["group", "topic", "outcome"],
            registry=registry,
        )
        self._lag_series: dict[str, set[tuple[str, int]]] = {}

    def record_backlog(self, pending: int, oldest_age_seconds: float) -> None:
        self.outbox_pending.set(pending)
        self.outbox_oldest_age.set(oldest_age_seconds if pending else 0.0)

    def record_sent(self, count: int) -> None:
        self.outbox_sent.inc(count)

    def declare_consumer(self, group: str, topics: Iterable[str]) -> None:
        """Start every outcome of the group's topics at 0, so that the first event of a kind
        is an increase (an alert on `increase(...)` sees it) rather than a new series."""
        for topic in topics:
            for outcome in CONSUMER_OUTCOMES:
                self.consumer_events.labels(group, topic, outcome)

    def record_consumed(
        self, group: str, topic: str, outcome: ConsumerOutcome, count: int = 1
    ) -> None:
        self.consumer_events.labels(group, topic, outcome).inc(count)

    def record_lag(self, group: str, lag: Mapping[tuple[str, int], int]) -> None:
        """The group's lag per partition it holds now; partitions it no longer holds (a
        rebalance gave them to another member) stop being reported here."""
        for topic, partition in self._lag_series.get(group, set()) - set(lag):
            self.consumer_lag.remove(group, topic, str(partition))
        for (topic, partition), behind in lag.items():
            self.consumer_lag.labels(group, topic, str(partition)).set(behind)
        self._lag_series[group] = set(lag)


class SagaMetrics:
    """What the saga runner reports: each step's forward action and undo, and how each saga
    instance ended. Labels are the spec's saga and step names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.steps = Counter(
            "saga_steps_total",
            "Saga steps by outcome: done (the forward call succeeded), failed (it did not, "
            "or the saga ran out of time before it), compensated (its undo call succeeded).",
            ["saga", "step", "outcome"],
            registry=registry,
        )
        self.outcomes = Counter(
            "saga_outcomes_total",
            "Sagas that ended: completed (every step done), compensated (a step failed and "
            "the work before it was undone), failed (a step failed with nothing to undo).",
            ["saga", "outcome"],
            registry=registry,
        )

    def declare_saga(self, saga: str, steps: Iterable[str]) -> None:
        """Start the saga's series at 0 (see `EventMetrics.declare_consumer`)."""
        for step in steps:
            for step_outcome in SAGA_STEP_OUTCOMES:
                self.steps.labels(saga, step, step_outcome)
        for outcome in SAGA_OUTCOMES:
            self.outcomes.labels(saga, outcome)

    def record_step(self, saga: str, step: str, outcome: SagaStepOutcome) -> None:
        self.steps.labels(saga, step, outcome).inc()

    def record_outcome(self, saga: str, outcome: SagaOutcome) -> None:
        self.outcomes.labels(saga, outcome).inc()


def route_template(scope: Scope, entry_root_path: str = "") -> str:
    """The matched route's path template (`/api/products/{id}`), not the requested path."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED_ROUTE
    # Inside a Mount the route path is relative; the mount grew root_path by its prefix.
    mount_prefix = str(scope.get("root_path", ""))[len(entry_root_path) :]
    return mount_prefix + template


class MetricsMiddleware:
    """Pure ASGI timing of every HTTP request, labelled once the router has matched it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope.get("method", ""))
        if method not in _KNOWN_METHODS:
            method = "OTHER"
        entry_root_path = str(scope.get("root_path", ""))
        status = 500
        started = time.perf_counter()

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        in_progress = self.metrics.in_progress.labels(method)
        in_progress.inc()
        try:
            await self.app(scope, receive, record_status)
        finally:
            in_progress.dec()
            self.metrics.observe(
                method,
                route_template(scope, entry_root_path),
                status,
                time.perf_counter() - started,
            )


def metrics_router(metrics: Metrics, path: str = "/metrics") -> APIRouter:
    router = APIRouter()

    @router.get(path, include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
