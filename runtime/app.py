"""The one place a generated service is assembled: settings in, a ready FastAPI app out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from cloudretail.runtime.auth import (
    RevocationList,
    TokenVerifier,
    http_jwks_fetcher,
    http_revocations_fetcher,
    revocations_url_for,
)
from cloudretail.runtime.cache import Cache, make_cache
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.correlation import CorrelationIdMiddleware
from cloudretail.runtime.crypto import EncryptionError, KeyRing, configure
from cloudretail.runtime.db import Database
from cloudretail.runtime.docs import install_docs
from cloudretail.runtime.errors import install_problem_handlers
from cloudretail.runtime.guard import RequestGuardMiddleware
from cloudretail.runtime.health import HealthCheck, HealthChecks, always_healthy, health_router
from cloudretail.runtime.logs import AccessLogMiddleware
from cloudretail.runtime.mail import mail_relay
from cloudretail.runtime.metrics import Metrics, MetricsMiddleware, metrics_router
from cloudretail.runtime.openapi import complete_openapi
from cloudretail.runtime.tracing import get_tracer, provider_for, trace_statements, untraced
from fastapi import APIRouter, FastAPI

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def database_from_settings(settings: ServiceSettings) -> Database:
    return Database(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        echo=settings.database_echo,
        connect_timeout=settings.database_connect_timeout,
        pool_timeout=settings.database_pool_timeout,
        statement_timeout=settings.database_statement_timeout,
        ca_file=settings.database_ca_file,
        pooler=settings.database_pooler,
    )


def verifier_from_settings(settings: ServiceSettings) -> TokenVerifier | None:
    """Verify tokens against the JWKS at JWKS_URL, and refuse those its issuer revoked (the
    list beside the JWKS); without JWKS_URL, authenticated routes say 503."""
    if not settings.jwks_url:
        return None
    return TokenVerifier(
        http_jwks_fetcher(settings.jwks_url),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        revocations=RevocationList(
            http_revocations_fetcher(revocations_url_for(settings.jwks_url))
        ),
        roles=settings.token_roles,
    )


def key_ring_from_settings(
    settings: ServiceSettings, encrypted_columns: Sequence[str]
) -> KeyRing | None:
    """The ring for a service storing `encrypted_columns` ("table.column"); None when it
    stores none. Such a service refuses to start without ENCRYPTION_KEYS."""
    if not encrypted_columns:
        return None
    if settings.encryption_keys is None:
        raise EncryptionError(
            "ENCRYPTION_KEYS is not set; this service stores these columns encrypted: "
            + ", ".join(encrypted_columns)
        )
    try:
        return KeyRing.parse(settings.encryption_keys.get_secret_value())
    except EncryptionError as error:
        raise EncryptionError(f"ENCRYPTION_KEYS: {error}") from None


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
    encrypted_columns: Sequence[str] = (),
    sends_mail: bool = False,
) -> FastAPI:
    """Build a service app with database, cache, errors, logs, metrics and health wired in.

    `lifespan` runs inside the runtime's own, so whatever it starts (event consumers, say)
    stops before the database pool and cache close. `hooks` is the service's handlers
    module: its `startup(app)` and `shutdown(app)` coroutines, when defined, run at start
    (after the database is reachable) and at stop. `event_bus_check` reports "eventBus" on
    readiness; until an events layer supplies one it is always healthy. `extra_checks` decide
    readiness like the database does: register there only what the service cannot serve
    without. `encrypted_columns` ("table.column") are the service's `EncryptedText` columns:
    when there are any, the key ring from ENCRYPTION_KEYS becomes the process's ring, and
    without it (or with a malformed one) the app is not built (EncryptionError). With
    `sends_mail` (spec `uses: [mail]`) a `MailRelay` sends the service's mail outbox over
    SMTP_URL; its state shows as "mail" on readiness (non-critical, like the event bus).

    Requests and the statements they run are traced (`cloudretail.runtime.tracing`: the process's
    provider, or the one `use_provider` gave this service); the app's tracer is
    `app.state.tracer`, for what the service runs beside its requests (event relay and
    consumers, sagas).

    In production (`ENVIRONMENT=production`) /docs (Swagger UI from local files,
    `cloudretail.runtime.docs`) and /openapi.json are off unless `DOCS_ENABLED=true`.
    /metrics stays on everywhere: Prometheus scrapes each pod inside the cluster, and the
    gateway routes only the spec's routes, so the public never reaches /metrics, /health or
    the docs. (The generated NetworkPolicies admit to a service's port
    only the gateway, the spec's callers and the monitoring namespace's Prometheus.)
    """
    ring = key_ring_from_settings(settings, encrypted_columns)
    if ring is not None:
        configure(ring)
    if database is None:
        database = database_from_settings(settings)
    if cache is None:
        cache = make_cache(
            settings.redis_url, namespace=settings.service_name, ca_file=settings.redis_ca_file
        )
    if metrics is None:
        metrics = Metrics()
    metrics.track_pool(database.pool_stats)
    provider = provider_for(settings.service_name)
    tracer = get_tracer(provider)
    trace_statements(database.engine.sync_engine, tracer)
    # Registered now, so /metrics lists them before the first event or saga. The events
    # layer (cloudretail.runtime.service_events) and `start_sagas` report into these.
    metrics.event_metrics()
    metrics.saga_metrics()

    # Readiness is "can serve": only the database (and extra checks) decide it. Without the
    # cache reads go to the database; without the broker events wait in the outbox. Those
    # outages show as "degraded" (still 200) and in the dependency_up metric.
    checks = HealthChecks(timeout=settings.health_check_timeout)
    checks.register("database", database.ping)
    checks.register("cache", cache.ping, critical=False)
    checks.register("eventBus", event_bus_check or always_healthy, critical=False)
    relay = mail_relay(settings, database) if sends_mail else None
    if relay is not None:

        async def mail_check() -> bool:
            return relay.healthy

        checks.register("mail", mail_check, critical=False)
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
        if relay is not None:
            await relay.start()
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            if relay is not None:
                await relay.stop()
            if shutdown is not None:
                await shutdown(app)
            # Uvicorn turns SIGTERM into this shutdown after in-flight requests finish.
            await cache.close()
            await database.dispose()
            logger.info("service stopped")

    docs = settings.serves_docs
    app = FastAPI(
        title=title or f"{settings.service_name} service",
        description=description,
        version=version,
        lifespan=service_lifespan,
        # Swagger UI from local files (install_docs below), not FastAPI's CDN-loaded pages.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # FastAPI's own server span per request, continuing the caller's trace context and
        # current while the app runs (so every line logged carries the trace id). Measured:
        # 115 µs a request; its spans per dependency and endpoint would double that, and the
        # service's metrics and logs have their own way out.
        telemetry={
            "tracer_provider": provider,
            "operation_spans": False,
            "metrics": False,
            "logs": False,
            "exclude": untraced,
        },
    )
    app.state.settings = settings
    app.state.token_verifier = token_verifier or verifier_from_settings(settings)
    app.state.database = database
    app.state.cache = cache
    app.state.metrics = metrics
    app.state.health = checks
    app.state.mail_relay = relay
    app.state.tracer = tracer

    # Order matters: the first added is innermost. The 500 fallback must sit inside metrics
    # and logs so they see the 500; correlation goes outermost so everything sees the id.
    # The request guard (body size and media type, JSON depth, NUL) answers before any
    # route reads the request, inside metrics and logs so they count its 413/415/422.
    install_problem_handlers(app)
    app.add_middleware(RequestGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(AccessLogMiddleware)
    app.add_middleware(CorrelationIdMiddleware)

    if docs:
        install_docs(app)
    app.include_router(health_router(checks, gauge=metrics.dependency_up))
    app.include_router(metrics_router(metrics))
    for router in routers:
        app.include_router(router)
    complete_openapi(app)
    return app
