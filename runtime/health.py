"""Liveness and readiness endpoints for the orchestrator's probes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse
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

    def register(self, name: str, check: HealthCheck) -> None:
        self._checks[name] = check

    @property
    def names(self) -> list[str]:
        return list(self._checks)

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


def health_router(checks: HealthChecks, prefix: str = "/health") -> APIRouter:
    router = APIRouter(prefix=prefix, tags=["health"])

    @router.get("/live", response_model=LivenessReport)
    async def live() -> LivenessReport:
        # Touches no dependency: a database outage must not make the orchestrator restart us.
        return LivenessReport(status="alive", timestamp=iso_timestamp(), uptime=checks.uptime)

    @router.get(
        "/ready",
        response_model=ReadinessReport,
        responses={503: {"model": ReadinessReport, "description": "A dependency is down."}},
    )
    async def ready() -> JSONResponse:
        details = await checks.run()
        healthy = all(details.values())
        report = ReadinessReport(
            status="healthy" if healthy else "unhealthy",
            timestamp=iso_timestamp(),
            uptime=checks.uptime,
            details=details,
        )
        return JSONResponse(report.model_dump(), status_code=200 if healthy else 503)

    return router
