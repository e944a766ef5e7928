"""Process entry point for generated `__main__.py` modules: logging, then uvicorn."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from runtime.config import ServiceSettings
from runtime.logs import configure_logging

# uvicorn's own exit status when the app's lifespan startup fails.
STARTUP_FAILURE = 3


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
    server = uvicorn.Server(uvicorn_config(app_factory(settings), settings))
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)
