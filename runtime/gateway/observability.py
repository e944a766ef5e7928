"""The gateway's metrics and access log: one observation per request, cheap on the hot path.

Metric names match the services' (cloudretail.runtime.metrics), so one dashboard reads both; labels
are route templates, never raw paths. prometheus_client's `labels()` takes a lock and
builds a key on every call, so the label children are cached per label set.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from cloudretail.runtime.correlation import get_correlation_id
from cloudretail.runtime.gateway.breaker import BreakerState
from cloudretail.runtime.gateway.ratelimit import RateLimiter
from cloudretail.runtime.gateway.registry import Registry, UpstreamInstance
from cloudretail.runtime.jsonenc import dumps
from cloudretail.runtime.logs import log_timestamp
from cloudretail.runtime.metrics import UNMATCHED_ROUTE, Metrics
from cloudretail.runtime.tracing import current_ids
from prometheus_client import Counter, Gauge, Histogram

access_logger = logging.getLogger("cloudretail.access")

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds; at INFO they would drown the real traffic.
_QUIET_PATHS = ("/health/", "/metrics")


@dataclass(slots=True)
class RequestRecord:
    """What the access line and the metrics say about one request."""

    method: str
    path: str
    client: str
    route: str = UNMATCHED_ROUTE
    upstream: str | None = None
    instance: str | None = None
    attempts: int = 0
    subject: str | None = None
    status: int = 500


class GatewayMetrics:
    def __init__(
        self,
        registry: Registry,
        metrics: Metrics | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.metrics = metrics or Metrics()
        prometheus = self.metrics.registry
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.upstream_failures = Counter(
            "gateway_upstream_failures_total",
            "Requests the gateway answered itself because an upstream failed.",
            ["upstream", "status"],
            registry=prometheus,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_total",
            "Requests refused with 429.",
            registry=prometheus,
        )
        if limiter is not None:
            degraded = Gauge(
                "gateway_rate_limiter_degraded",
                "1 while the rate limit store (Redis) is unreachable and limits are per process.",
                registry=prometheus,
            )
            degraded.set_function(lambda: float(limiter.degraded))
        healthy = Gauge(
            "gateway_upstream_instance_healthy",
            "1 while the instance passes its health probe.",
            ["upstream", "instance"],
            registry=prometheus,
        )
        breaker_open = Gauge(
            "gateway_upstream_instance_circuit_open",
            "1 while the instance's circuit breaker is open.",
            ["upstream", "instance"],
            registry=prometheus,
        )
        in_flight = Gauge(
            "gateway_upstream_instance_in_flight",
            "Requests outstanding on the instance.",
            ["upstream", "instance"],
            registry=prometheus,
        )
        for instance in registry.all_instances():
            labels = (instance.upstream, instance.url)
            # Read at scrape time, so they are never stale between requests.
            healthy.labels(*labels).set_function(_reader(instance, "healthy"))
            breaker_open.labels(*labels).set_function(_reader(instance, "open"))
            in_flight.labels(*labels).set_function(_reader(instance, "in_flight"))

    def observe(self, record: RequestRecord, seconds: float) -> None:
        method = record.method if record.method in _KNOWN_METHODS else "OTHER"
        key = (method, record.route, record.status)
        children = self._children.get(key)
        if children is None:
            labels = (method, record.route, str(record.status))
            children = (
                self.metrics.requests.labels(*labels),
                self.metrics.latency.labels(*labels),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        return self.metrics.render()


def _reader(instance: UpstreamInstance, what: str) -> Callable[[], float]:
    def read() -> float:
        if what == "healthy":
            return float(instance.healthy)
        if what == "open":
            return float(instance.breaker.state is BreakerState.OPEN)
        return float(instance.in_flight)

    return read


class AccessLog:
    """One JSON line per request, in cloudretail.runtime.logs' shape (the request's span's ids
    included: write it while that span is current), written in batches.

    Through `logging`, the line cost a LogRecord, a caller lookup, a formatter pass and a
    write+flush syscall per request: a fifth of the gateway's throughput when measured.
    Here the line is built directly and lines are flushed together, at most
    `flush_interval` seconds late (and at shutdown). The level of the
    `cloudretail.access` logger still decides whether a line is written.
    """

    def __init__(
        self,
        service: str = "gateway",
        stream: IO[str] | None = None,
        *,
        flush_interval: float = 0.2,
        max_lines: int = 256,
    ) -> None:
        self.service = service
        self._stream = stream
        self._flush_interval = flush_interval
        self._max_lines = max_lines
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._stamp_ms = -1
        self._stamp = ""

    def write(self, record: RequestRecord, seconds: float) -> None:
        quiet = record.status < 400 and record.path.startswith(_QUIET_PATHS)
        level = logging.DEBUG if quiet else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        now = time.time()
        millisecond = int(now * 1000)
        if millisecond != self._stamp_ms:
            # Formatting a datetime costs more than the rest of the line; requests in the
            # same millisecond share one.
            self._stamp_ms, self._stamp = millisecond, log_timestamp(now)
        trace_id, span_id = current_ids()
        line = dumps(
            {
                "timestamp": self._stamp,
                "level": "debug" if quiet else "info",
                "service": self.service,
                "logger": access_logger.name,
                "message": f"{record.method} {record.path} {record.status}",
                "correlation_id": get_correlation_id(),
                "trace_id": trace_id,
                "span_id": span_id,
                "method": record.method,
                "path": record.path,
                "route": record.route,
                "status": record.status,
                "duration_ms": round(seconds * 1000, 2),
                "client": record.client,
                "subject": record.subject,
                "upstream": record.upstream,
                "instance": record.instance,
                "attempts": record.attempts,
            }
        )
        self._lines.append(line)
        if len(self._lines) >= self._max_lines:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_interval, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        # Looked up now, not at construction: tests and runners swap sys.stdout.
        stream = self._stream or sys.stdout
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or full stream must not fail requests
            pass
