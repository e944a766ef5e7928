"""The one place a generated service is assembled: settings in, a ready FastAPI app out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI

from runtime.auth import TokenVerifier, http_jwks_fetcher
from runtime.cache import Cache, make_cache
from runtime.config import ServiceSettings
from runtime.correlation import CorrelationIdMiddleware
from runtime.db import Database
from runtime.errors import install_problem_handlers
from runtime.health import HealthCheck, HealthChecks, always_healthy, health_router
from runtime.logs import AccessLogMiddleware
from runtime.metrics import Metrics, MetricsMiddleware, metrics_router

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def database_from_settings(settings: ServiceSettings) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        echo=settings.database_echo,
    )


def verifier_from_settings(settings: ServiceSettings) -> TokenVerifier | None:
    """Verify tokens against the JWKS at JWKS_URL; without one, authenticated routes say 503."""
    if not settings.jwks_url:
        return None
    return TokenVerifier(
        http_jwks_fetcher(settings.jwks_url),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )


def create_service_app(
    settings: ServiceSettings,
    *,
    routers: Sequence[APIRouter] = (),
    title: str | None = None,
    description: str = "",
    version: str = "0.1.0",
    database: Database | None = None,
    cache: Cache | None = None,
    event_bus_check: HealthCheck | None = None,
    extra_checks: Mapping[str, HealthCheck] | None = None,
    lifespan: Lifespan | None = None,
    metrics: Metrics | None = None,
    token_verifier: TokenVerifier | None = None,
    hooks: object | None = None,
) -> FastAPI:
    """Build a service app with database, cache, errors, logs, metrics and health wired in.

    `lifespan` runs inside the runtime's own, so whatever it starts (event consumers, say)
    stops before the database pool and cache close. `hooks` is the service's handlers
    module: its `startup(app)` and `shutdown(app)` coroutines, when defined, run at start
    (after the database is reachable) and at stop. `event_bus_check` reports "eventBus" on
    readiness; until an events layer supplies one it is always healthy.
    """
    if database is None:
        database = database_from_settings(settings)
    if cache is None:
        cache = make_cache(settings.redis_url, namespace=settings.service_name)
    if metrics is None:
        metrics = Metrics()
    metrics.track_pool(database.pool_stats)

    checks = HealthChecks(timeout=settings.health_check_timeout)
    checks.register("database", database.ping)
    checks.register("cache", cache.ping)
    checks.register("eventBus", event_bus_check or always_healthy)
    for name, check in (extra_checks or {}).items():
        checks.register(name, check)

    @asynccontextmanager
    async def service_lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Opening one connection now fills the pool early and puts a bad URL in the first
        # log lines; the service still starts, and readiness says 503 until it is fixed.
        if await database.ping():
            logger.info("database reachable", extra={"database": database.safe_url})
        else:
            logger.warning("database unreachable at startup", extra={"database": database.safe_url})
        for secret in settings.default_secrets_in_use():
            # Production refuses these at load time; in development they only cost a warning.
            logger.warning(
                "default secret in use; change it before deploying", extra={"secret": secret}
            )
        logger.info(
            "service started",
            extra={"port": settings.port, "environment": settings.environment},
        )
        startup = getattr(hooks, "startup", None)
        shutdown = getattr(hooks, "shutdown", None)
        if startup is not None:
            await startup(app)
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            if shutdown is not None:
                await shutdown(app)
            # Uvicorn turns SIGTERM into this shutdown after in-flight requests finish.
            await cache.close()
            await database.dispose()
            logger.info("service stopped")

    app = FastAPI(
        title=title or f"{settings.service_name} service",
        description=description,
        version=version,
        lifespan=service_lifespan,
    )
    app.state.settings = settings
    app.state.token_verifier = token_verifier or verifier_from_settings(settings)
    app.state.database = database
    app.state.cache = cache
    app.state.metrics = metrics
    app.state.health = checks

    # Order matters: the first added is innermost. The 500 fallback must sit inside metrics
    # and logs so they see the 500; correlation goes outermost so everything sees the id.
    install_problem_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(CorrelationIdMiddleware)

    app.include_router(health_router(checks))
    app.include_router(metrics_router(metrics))
    for router in routers:
        app.include_router(router)
    return app
