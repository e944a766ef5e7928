"""Process entry point for generated `__main__.py` modules: logging and tracing, then uvicorn.

Stopping (SIGTERM, SIGINT): first drain — readiness answers 503 for `SHUTDOWN_DRAIN`
seconds while the service keeps serving, so load balancers (the gateway's health checks,
Kubernetes endpoints) stop sending it new requests — then uvicorn's graceful shutdown lets
the requests in flight finish. A second signal skips the rest of the drain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import FrameType

import uvicorn
from cloudretail.runtime.config import ServiceSettings
from cloudretail.runtime.logs import configure_logging
from cloudretail.runtime.tracing import configure_tracing
from fastapi import FastAPI

# uvicorn's own exit status when the app's lifespan startup fails.
STARTUP_FAILURE = 3

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a readiness drain between the stop signal and closing the socket."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_seconds: float) -> None:
        super().__init__(config)
        self.app = app
        self.drain_seconds = drain_seconds
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_until is not None or self.drain_seconds <= 0 or not self.started:
            super().handle_exit(sig, frame)
            return
        self._drain_until = time.monotonic() + self.drain_seconds
        health = getattr(self.app.state, "health", None)
        if health is not None:
            health.draining = True
        logger.info("draining before shutdown", extra={"seconds": self.drain_seconds})

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def uvicorn_config(app: FastAPI, settings: ServiceSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Logging is configured once, as JSON, before uvicorn starts; its dictConfig would
        # replace it with plain text.
        log_config=None,
        log_level=settings.log_level.lower(),
        # AccessLogMiddleware writes the access line, with the correlation id.
        access_log=False,
        lifespan="on",
        # On SIGTERM, in-flight requests get this long before connections are cut; the
        # lifespan shutdown (pool and cache close) runs after.
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        server_header=False,
    )


def run(app_factory: Callable[[ServiceSettings], FastAPI], settings: ServiceSettings) -> None:
    """Serve the app until SIGTERM or SIGINT, then shut down gracefully."""
    configure_logging(settings.service_name, settings.log_level)
    configure_tracing(settings.service_name)
    app = app_factory(settings)
    server = DrainingServer(uvicorn_config(app, settings), app, settings.shutdown_drain)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
