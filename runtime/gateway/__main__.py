"""`python -m cloudretail.runtime.gateway [--routes FILE] [--host H] [--port P] [--workers N]`.

Settings come from the environment: REDIS_URL (REDIS_CA_FILE verifies a rediss:// one),
JWKS_URL, JWT_ISSUER, JWT_AUDIENCE, <SERVICE>_URLS, LOG_LEVEL, ENVIRONMENT, the GATEWAY_*
knobs of cloudretail.runtime.gateway.config, and OTEL_* for tracing (cloudretail.runtime.tracing).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from cloudretail.runtime.gateway.app import Gateway, create_gateway
from cloudretail.runtime.gateway.config import DEFAULT_ROUTES_PATH, load_config
from cloudretail.runtime.logs import configure_logging
from cloudretail.runtime.tracing import configure_tracing

# uvicorn's own exit status when the app's lifespan startup fails.
STARTUP_FAILURE = 3
_ROUTES_ENV = "GATEWAY_ROUTES"


def app_from_env() -> Gateway:
    """Factory for worker processes, which cannot receive the parsed arguments."""
    configure_logging("gateway", os.environ.get("LOG_LEVEL", "INFO"))
    configure_tracing("gateway")
    return create_gateway(load_config(os.environ.get(_ROUTES_ENV, str(DEFAULT_ROUTES_PATH))))


class _Server(uvicorn.Server):
    """uvicorn's server, telling the gateway when a signal asks it to stop, before it waits
    for the responses in progress (an open stream of the dev console would hold it)."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway.stopping()
        super().handle_exit(sig, frame)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cloudretail.runtime.gateway", description=__doc__
    )
    parser.add_argument("--routes", default=str(DEFAULT_ROUTES_PATH))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: routes.yaml's port")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO")
    configure_logging("gateway", level)
    configure_tracing("gateway")
    config = load_config(args.routes)
    port = args.port or config.routes_file.port
    options = {
        "host": args.host,
        "port": port,
        # The C HTTP parser and event loop: the design was measured on them
        # (runtime/gateway/README.md), and uvicorn's fallbacks are pure Python.
        "loop": "uvloop",
        "http": "httptools",
        # Logging is configured above, as JSON; uvicorn's dictConfig would replace it.
        "log_config": None,
        "log_level": level.lower(),
        # The gateway writes its own access line, with the correlation id and upstream.
        "access_log": False,
        "server_header": False,
        # The gateway is the edge: X-Forwarded-For from a client is a claim, not a fact,
        # and must not become the address the rate limiter keys on.
        "proxy_headers": False,
        "lifespan": "on",
        # On SIGTERM, in-flight requests get this long before connections are cut.
        "timeout_graceful_shutdown": int(os.environ.get("SHUTDOWN_TIMEOUT", "10")),
    }
    if args.workers > 1:
        # Each worker builds its own app; a shared rate limit then needs REDIS_URL.
        os.environ[_ROUTES_ENV] = args.routes
        uvicorn.run(
            "cloudretail.runtime.gateway.__main__:app_from_env",
            factory=True,
            workers=args.workers,
            **options,
        )
        return
    gateway = create_gateway(config)
    server = _Server(uvicorn.Config(gateway, **options), gateway)
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
