"""Prometheus metrics: HTTP traffic by route template, database pool occupancy, `/metrics`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

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
