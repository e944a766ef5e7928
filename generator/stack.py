"""From the model to what `cloudretail up` runs: processes, their environment, databases,
topics. The supervisor (`runtime/stack.py`) gets this as plain data and knows no spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator.model import Platform

LOCALHOST = "127.0.0.1"
EMBEDDED_BROKER_PORT = 9092

# The gateway probes every second: after 1.5 s of not-ready it sends a stopping process
# nothing more, so each one drains that long before it closes its port.
SHUTDOWN_DRAIN = "1.5"


@dataclass(frozen=True)
class StackOptions:
    data_dir: Path
    database_url_template: str | None = None
    redis_url: str | None = None
    kafka_bootstrap: str | None = None
    only: tuple[str, ...] = ()


def database_url(options: StackOptions, database: str) -> str:
    if options.database_url_template:
        return options.database_url_template.format(database=database)
    return f"sqlite+aiosqlite:///{(options.data_dir / 'data' / f'{database}.db').resolve()}"


def plan(platform: Platform, options: StackOptions, generated: Path) -> dict[str, Any]:
    """The stack as JSON-ready data (the supervisor may run in another process)."""
    bootstrap = options.kafka_bootstrap or f"{LOCALHOST}:{EMBEDDED_BROKER_PORT}"
    common = {
        "HOST": LOCALHOST,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_IDEMPOTENT": "true" if options.kafka_bootstrap else "false",
        "CLOUDRETAIL_DATA_DIR": str(options.data_dir.resolve()),
    }
    if options.redis_url:
        common["REDIS_URL"] = options.redis_url
    if platform.auth is not None:
        common["JWKS_URL"] = platform.auth.jwks_url(LOCALHOST)
    processes: list[dict[str, object]] = []
    databases: list[dict[str, str]] = []
    for service in platform.services:
        env = {
            **common,
            "PORT": str(service.port),
            "DATABASE_URL": database_url(options, service.database),
            "SHUTDOWN_DRAIN": SHUTDOWN_DRAIN,
        }
        for callee in service.calls:
            env[f"{callee.upper()}_URL"] = f"http://{LOCALHOST}:{platform.service(callee).port}"
        processes.append(
            {
                "name": service.name,
                "kind": "service",
                "command": ["-m", f"generated.services.{service.name}"],
                "port": service.port,
                "env": env,
                "docs": f"http://{LOCALHOST}:{service.port}/docs",
            }
        )
        if service.tables:
            databases.append(
                {
                    "name": service.name,
                    "ini": str(generated / "services" / service.name / "alembic.ini"),
                    "url": env["DATABASE_URL"],
                }
            )
    bus = platform.event_bus
    bus_url = database_url(options, bus.database)
    processes.append(
        {
            "name": "eventbus",
            "kind": "event-bus",
            "command": ["-m", "generated.eventbus"],
            "port": bus.deployable.port,
            "env": {
                **common,
                "PORT": str(bus.deployable.port),
                "DATABASE_URL": bus_url,
                "SHUTDOWN_DRAIN": SHUTDOWN_DRAIN,
            },
            "docs": f"http://{LOCALHOST}:{bus.deployable.port}/docs",
        }
    )
    databases.append(
        {"name": "eventbus", "ini": str(generated / "eventbus" / "alembic.ini"), "url": bus_url}
    )
    gateway = platform.gateway
    # Locally, probe upstreams every second, so the gateway is ready soon after they are.
    gateway_env = {**common, "PORT": str(gateway.deployable.port), "GATEWAY_HEALTH_INTERVAL": "1"}
    for upstream in gateway.upstreams:
        gateway_env[upstream.env] = f"http://{LOCALHOST}:{upstream.port}"
    processes.append(
        {
            "name": "gateway",
            "kind": "gateway",
            "command": [
                "-m",
                "runtime.gateway",
                "--routes",
                str(generated / "gateway" / "routes.yaml"),
                "--host",
                LOCALHOST,
                "--port",
                str(gateway.deployable.port),
            ],
            "port": gateway.deployable.port,
            "env": gateway_env,
            "docs": f"http://{LOCALHOST}:{gateway.deployable.port}/openapi.json",
        }
    )
    if options.only:
        wanted = set(options.only) | {"gateway"}
        processes = [p for p in processes if p["name"] in wanted]
        databases = [d for d in databases if d["name"] in wanted]
    topics = [
        {
            "name": topic.name,
            "partitions": topic.partitions,
            "config": {
                "retention.ms": str(topic.retention_ms),
                "cleanup.policy": topic.cleanup_policy,
            },
        }
        for topic in platform.topics
    ]
    return {
        "data_dir": str(options.data_dir.resolve()),
        "broker": None if options.kafka_bootstrap else {"host": LOCALHOST, "port": 9092},
        "bootstrap": bootstrap,
        "redis_url": options.redis_url,
        "processes": processes,
        "databases": databases,
        "topics": topics,
        "gateway": f"http://{LOCALHOST}:{gateway.deployable.port}",
        "token_issuer": platform.auth.issuer if platform.auth else None,
    }
