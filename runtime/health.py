"""Liveness and readiness endpoints for the orchestrator's probes.

Readiness means "can serve". Only critical checks (the database) decide it: when one is
down the answer is 503 "unhealthy" and the orchestrator stops sending traffic. A
non-critical one (the cache, the event broker) being down is "degraded", still 200: reads
bypass the cache and events wait in the outbox, so taking every replica out of rotation
would turn a partial outage into a total one. The details name what is down either way, and
`dependency_up{dependency=...}` in /metrics says the same for alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import Gauge
from pydantic import BaseModel

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]


def iso_timestamp() -> str:
    """UTC with milliseconds and a Z, as JavaScript's toISOString writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def always_healthy() -> bool:
    """Stand-in for a dependency that does not exist yet."""
    return True


class HealthChecks:
    """Named async checks, run together under one deadline."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.started = time.monotonic()
        self._checks: dict[str, HealthCheck] = {}
        self._critical: set[str] = set()
        # Set when the process was told to stop: it still serves what it gets, but says it
        # is not ready, so load balancers stop sending before it closes its socket.
        self.draining = False

    def register(self, name: str, check: HealthCheck, *, critical: bool = True) -> None:
        """Add a check; when a `critical` one is down the service is not ready (503)."""
        self._checks[name] = check
        if critical:
            self._critical.add(name)
        else:
            self._critical.discard(name)

    @property
    def names(self) -> list[str]:
        return list(self._checks)

    def status(self, results: dict[str, bool]) -> str:
        """Overall status: draining (stopping), unhealthy (a critical check is down),
        degraded (another is down) or healthy."""
        down = {name for name, ok in results.items() if not ok}
        if self.draining:
            return "draining"
        if down & self._critical:
            return "unhealthy"
        return "degraded" if down else "healthy"

    @property
    def uptime(self) -> int:
        return int(time.monotonic() - self.started)

    async def run(self) -> dict[str, bool]:
        """Each check's result; a check that raises, says False or overruns counts as down."""
        tasks = {
            name: asyncio.ensure_future(_run_check(name, check))
            for name, check in self._checks.items()
        }
        if not tasks:
            return {}
        # asyncio.wait, not wait_for: a check that swallows cancellation must not hold the
        # probe past its deadline.
        _done, pending = await asyncio.wait(tasks.values(), timeout=self.timeout)
        for task in pending:
            task.cancel()
        results: dict[str, bool] = {}
        for name, task in tasks.items():
            if task in pending:
                logger.warning("health check timed out", extra={"check": name})
                results[name] = False
            else:
                results[name] = task.result()
        return results


async def _run_check(name: str, check: HealthCheck) -> bool:
    try:
        return bool(await check())
    except Exception as error:
        logger.warning(
            "health check failed",
            extra={"check": name, "error": f"{type(error).__name__}: {error}"},
        )
        return False


class LivenessReport(BaseModel):
    status: str
    timestamp: str
    uptime: int


class ReadinessReport(BaseModel):
    status: str
    timestamp: str
    uptime: int
    details: dict[str, bool]


def health_router(
    checks: HealthChecks, prefix: str = "/health", *, gauge: Gauge | None = None
) -> APIRouter:
    """`/live` and `/ready`; `gauge` (labelled by dependency) gets each check's last result."""
    router = APIRouter(prefix=prefix, tags=["health"])

    @router.get("/live", response_model=LivenessReport)
    async def live() -> LivenessReport:
        # Touches no dependency: a database outage must not make the orchestrator restart us.
        return LivenessReport(status="alive", timestamp=iso_timestamp(), uptime=checks.uptime)

    @router.get(
        "/ready",
        response_model=ReadinessReport,
        responses={
            503: {
                "model": ReadinessReport,
                "description": "A critical dependency is down, or the service is stopping.",
            }
        },
    )
    async def ready() -> JSONResponse:
        details = await checks.run()
        if gauge is not None:
            for name, ok in details.items():
                gauge.labels(name).set(1 if ok else 0)
        status = checks.status(details)
        report = ReadinessReport(
            status=status, timestamp=iso_timestamp(), uptime=checks.uptime, details=details
        )
        ready = status in ("healthy", "degraded")
        return JSONResponse(report.model_dump(), status_code=200 if ready else 503)

    return router
