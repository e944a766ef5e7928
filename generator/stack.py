"""From the model to what `cloudretail up` runs: processes, their environment, databases,
topics. The supervisor (`runtime/stack.py`) gets this as a typed `StackPlan` and knows no
spec."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudretail.generator import load_platform
from cloudretail.generator.errors import CloudRetailError
from cloudretail.generator.model import Platform
from cloudretail.generator.validation import suggest
from cloudretail.runtime.stackplan import (
    BrokerAddress,
    MailSinkPlan,
    PlannedDatabase,
    PlannedProcess,
    PlannedTopic,
    StackPlan,
)

LOCALHOST = "127.0.0.1"
EMBEDDED_BROKER_PORT = 9092
# The local SMTP sink of services that send mail (`uses: [mail]`); 1025 is the customary
# unprivileged SMTP port of development mail catchers.
MAIL_SINK_PORT = 1025

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
    # The embedded broker's and the SMTP sink's ports: not in the spec (they are not part of
    # the platform), so two projects' stacks on one machine set them apart here.
    broker_port: int = EMBEDDED_BROKER_PORT
    mail_port: int = MAIL_SINK_PORT
    # `up --scale order=2`: (service, instances) for services run more than once.
    scale: tuple[tuple[str, int], ...] = ()


# Instance n (n >= 2) of a scaled service listens INSTANCE_PORT_STEP * (n - 1) above the
# spec's port (order 3003: 3103, 3203 ...), skipping any port the plan already uses.
INSTANCE_PORT_STEP = 100


def parse_scale(text: str | None) -> tuple[tuple[str, int], ...]:
    """`order=2,inventory=2` as ((order, 2), (inventory, 2)); the names are checked against
    the spec when the stack is planned."""
    scale: dict[str, int] = {}
    for part in (text or "").split(","):
        entry = part.strip()
        if not entry:
            continue
        name, equals, count = (piece.strip() for piece in entry.partition("="))
        if not equals or not name or not count:
            raise StackPlanError(
                f"--scale: {entry!r} is not SERVICE=COUNT (e.g. --scale order=2,inventory=2)"
            )
        try:
            instances = int(count)
        except ValueError:
            raise StackPlanError(f"--scale: {entry!r}: the count must be a whole number") from None
        if instances < 1:
            raise StackPlanError(f"--scale: {entry!r}: the count must be at least 1")
        if name in scale:
            raise StackPlanError(f"--scale names {name!r} twice")
        scale[name] = instances
    return tuple(scale.items())


def _instance_ports(base: int, count: int, taken: set[int]) -> list[int]:
    """The ports of a service's instances: its own, then free ones a step above each other."""
    ports = [base]
    port = base
    while len(ports) < count:
        port += INSTANCE_PORT_STEP
        if port > 65535:
            raise StackPlanError(
                f"--scale: no free port above {base} for instance {len(ports) + 1}"
            )
        if port not in taken:
            ports.append(port)
            taken.add(port)
    return ports


def database_url(options: StackOptions, database: str) -> str:
    if options.database_url_template:
        return options.database_url_template.format(database=database)
    return f"sqlite+aiosqlite:///{(options.data_dir / 'data' / f'{database}.db').resolve()}"


def planned_topics(platform: Platform) -> tuple[PlannedTopic, ...]:
    """The spec's topics with the settings Kafka takes (`up` and `cloudretail topics`)."""
    return tuple(
        PlannedTopic(
            name=topic.name,
            partitions=topic.partitions,
            replication=topic.replication,
            config={
                "retention.ms": str(topic.retention_ms),
                "cleanup.policy": topic.cleanup_policy,
            },
        )
        for topic in platform.topics
    )


# The embedded broker's topics have at most this many partitions, or as many as the largest
# `--scale` count. On one machine a consumer group has no more members than that, and each
# partition costs the single broker process and every consumer's polling CPU: measured,
# the spec's 15 partitions per topic against 3 cost 1.21x the CPU per order and about 6 s
# of each start. Against a given --kafka-bootstrap, and with `cloudretail topics apply`,
# topics get the spec's partitions.
EMBEDDED_MAX_PARTITIONS = 3


def local_topics(platform: Platform, options: StackOptions) -> tuple[PlannedTopic, ...]:
    """The topics `up` creates: the spec's, with fewer partitions on the embedded broker."""
    topics = planned_topics(platform)
    if options.kafka_bootstrap:
        return topics
    cap = max((EMBEDDED_MAX_PARTITIONS, *(count for _, count in options.scale)))
    return tuple(
        topic.model_copy(update={"partitions": min(topic.partitions, cap)}) for topic in topics
    )


def plan(platform: Platform, options: StackOptions, generated: Path) -> StackPlan:
    """The stack (the supervisor may run in another process: it serializes as JSON)."""
    bootstrap = options.kafka_bootstrap or f"{LOCALHOST}:{options.broker_port}"
    common = {
        "HOST": LOCALHOST,
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_IDEMPOTENT": "true" if options.kafka_bootstrap else "false",
        "CLOUDRETAIL_DATA_DIR": str(options.data_dir.resolve()),
        # The processes import the project's `generated` and `handlers` from its root (the
        # folder holding generated/): `python -m` alone looks in the working folder only, and
        # not even there under PYTHONSAFEPATH.
        "PYTHONPATH": os.pathsep.join(
            [str(generated.resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    if options.redis_url:
        common["REDIS_URL"] = options.redis_url
    if platform.auth is not None:
        common["JWKS_URL"] = platform.auth.jwks_url(LOCALHOST)
    processes: list[PlannedProcess] = []
    databases: list[PlannedDatabase] = []
    mail_sink = (
        MailSinkPlan(
            host=LOCALHOST,
            port=options.mail_port,
            directory=str((options.data_dir / "mail").resolve()),
        )
        if any(service.uses_mail for service in platform.services)
        else None
    )
    counts = dict(options.scale)
    taken = {
        *(service.port for service in platform.services),
        platform.event_bus.deployable.port,
        platform.gateway.deployable.port,
    }
    # Every instance of a service: its own port, the same database, consumer group and
    # outbox; the gateway balances over them (`<SERVICE>_URLS`).
    ports = {
        service.name: _instance_ports(service.port, counts.get(service.name, 1), taken)
        for service in platform.services
    }
    for service in platform.services:
        env = {
            **common,
            "DATABASE_URL": database_url(options, service.database),
            "SHUTDOWN_DRAIN": SHUTDOWN_DRAIN,
        }
        for callee in service.calls:
            # The callee's first instance: a call is one URL (a Kubernetes Service balances
            # it in a cluster); the gateway spreads the public requests over every instance.
            env[f"{callee.upper()}_URL"] = f"http://{LOCALHOST}:{platform.service(callee).port}"
        if service.uses_mail and mail_sink is not None:
            env["SMTP_URL"] = f"smtp://{mail_sink.host}:{mail_sink.port}"
            env["MAIL_FROM"] = platform.mail_from
        for number, port in enumerate(ports[service.name], start=1):
            processes.append(
                PlannedProcess(
                    name=service.name if number == 1 else f"{service.name}-{number}",
                    kind="service",
                    command=("-m", f"generated.services.{service.name}"),
                    port=port,
                    env={**env, "PORT": str(port)},
                    docs=f"http://{LOCALHOST}:{port}/docs",
                    deployable=service.name,
                )
            )
        if service.tables:
            databases.append(
                PlannedDatabase(
                    name=service.name,
                    ini=str(generated / "services" / service.name / "alembic.ini"),
                    url=env["DATABASE_URL"],
                )
            )
    bus = platform.event_bus
    bus_url = database_url(options, bus.database)
    processes.append(
        PlannedProcess(
            name="eventbus",
            kind="event-bus",
            command=("-m", "generated.eventbus"),
            port=bus.deployable.port,
            env={
                **common,
                "PORT": str(bus.deployable.port),
                "DATABASE_URL": bus_url,
                "SHUTDOWN_DRAIN": SHUTDOWN_DRAIN,
            },
            docs=f"http://{LOCALHOST}:{bus.deployable.port}/docs",
        )
    )
    databases.append(
        PlannedDatabase(
            name="eventbus", ini=str(generated / "eventbus" / "alembic.ini"), url=bus_url
        )
    )
    gateway = platform.gateway
    # Locally, probe upstreams every second, so the gateway is ready soon after they are.
    gateway_env = {**common, "PORT": str(gateway.deployable.port), "GATEWAY_HEALTH_INTERVAL": "1"}
    # The dev console at /_console (cloudretail.runtime.console): only `up` turns it on, and
    # tells it where the supervisor keeps its state, logs and traces, the diagrams, the events.
    gateway_env["GATEWAY_CONSOLE_DATA_DIR"] = str(options.data_dir.resolve())
    gateway_env["GATEWAY_CONSOLE_ARCHITECTURE"] = str(generated / "docs" / "architecture.md")
    gateway_env["GATEWAY_CONSOLE_EVENTS_URL"] = (
        f"http://{LOCALHOST}:{bus.deployable.port}{bus.prefix}"
    )
    for upstream in gateway.upstreams:
        gateway_env[upstream.env] = ",".join(
            f"http://{LOCALHOST}:{port}" for port in ports.get(upstream.name, [upstream.port])
        )
    processes.append(
        PlannedProcess(
            name="gateway",
            kind="gateway",
            command=(
                "-m",
                "cloudretail.runtime.gateway",
                "--routes",
                str(generated / "gateway" / "routes.yaml"),
                "--host",
                LOCALHOST,
                "--port",
                str(gateway.deployable.port),
            ),
            port=gateway.deployable.port,
            env=gateway_env,
            docs=f"http://{LOCALHOST}:{gateway.deployable.port}/docs",
        )
    )
    if options.only:
        wanted = set(options.only) | {"gateway"}
        processes = [p for p in processes if p.of in wanted]
        databases = [d for d in databases if d.name in wanted]
    return StackPlan(
        platform=platform.name,
        data_dir=str(options.data_dir.resolve()),
        broker=(
            None
            if options.kafka_bootstrap
            else BrokerAddress(host=LOCALHOST, port=options.broker_port)
        ),
        bootstrap=bootstrap,
        redis_url=options.redis_url,
        processes=tuple(processes),
        databases=tuple(databases),
        topics=local_topics(platform, options),
        gateway=f"http://{LOCALHOST}:{gateway.deployable.port}",
        token_issuer=platform.auth.issuer if platform.auth else None,
        mail_sink=mail_sink,
    )


class StackPlanError(CloudRetailError):
    """`up` cannot plan the stack: generated/ is missing, or `--only` names no service."""


def plan_stack(spec: Path, options: StackOptions, generated: Path = Path("generated")) -> StackPlan:
    """What `cloudretail up` runs for the spec, once the spec and `generated/` allow it."""
    platform = load_platform(spec)
    if not (generated / ".cloudretail-manifest").exists():
        raise StackPlanError(f"{generated}/ is missing; run `cloudretail generate` first")
    known = [s.name for s in platform.services] + ["eventbus", "gateway"]
    unknown = [name for name in options.only if name not in known]
    if unknown:
        raise StackPlanError(f"--only names unknown services: {', '.join(unknown)}")
    _check_scale(platform, options)
    return plan(platform, options, generated.resolve())


def _check_scale(platform: Platform, options: StackOptions) -> None:
    services = [service.name for service in platform.services]
    for name, count in options.scale:
        if name not in services:
            raise StackPlanError(
                f"--scale: unknown service {name!r}{suggest(name, services)}; services: "
                f"{', '.join(services)} (the gateway and the event bus run once)"
            )
        if options.only and name not in options.only:
            raise StackPlanError(f"--scale names {name!r}, which --only leaves out")
        if count > 1 and not (options.database_url_template or "").startswith("postgres"):
            # SQLite is one writer process per file: the outbox relay, the saga's recovery
            # and the mail relay claim rows with PostgreSQL's locks, which SQLite lacks.
            raise StackPlanError(
                f"--scale {name}={count}: several instances share one database, which needs "
                "PostgreSQL: add --database-url-template postgresql://127.0.0.1/{database}"
            )


@dataclass(frozen=True)
class PlannedMigration:
    service: str
    database: str
    ini: Path
    url: str


def plan_migrations(
    spec: Path,
    services: tuple[str, ...],
    generated: Path,
    database_url_template: str | None,
    fallback_url: Callable[[str], str],
) -> tuple[PlannedMigration, ...]:
    """What `cloudretail migrate` upgrades: each chosen service with tables (all when none
    are named), its alembic.ini and its database's URL (from the template, else
    `fallback_url(database)`)."""
    platform = load_platform(spec)
    known = [service.name for service in platform.services if service.tables]
    planned = []
    for name in _chosen(services, known, "services with tables"):
        database = platform.service(name).database
        ini = generated / "services" / name / "alembic.ini"
        if not ini.exists():
            raise StackPlanError(f"{ini} is missing; run `cloudretail generate` first")
        url = _url(database, database_url_template, fallback_url)
        planned.append(PlannedMigration(service=name, database=database, ini=ini, url=url))
    return tuple(planned)


@dataclass(frozen=True)
class PlannedRotation:
    service: str
    database: str
    url: str
    tables: tuple[tuple[str, tuple[str, ...]], ...]  # (table, its encrypted columns)


def plan_rotation(
    spec: Path,
    services: tuple[str, ...],
    database_url_template: str | None,
    fallback_url: Callable[[str], str],
) -> tuple[PlannedRotation, ...]:
    """What `cloudretail rotate-key` re-encrypts: each chosen service that stores encrypted
    columns (all of them when none are named), its tables' encrypted columns and its
    database's URL (from the template, else `fallback_url(database)`)."""
    platform = load_platform(spec)
    known = [service.name for service in platform.services if service.encrypted_columns]
    planned = []
    for name in _chosen(services, known, "services with encrypted columns"):
        service = platform.service(name)
        tables = tuple(
            (table.name, columns)
            for table in service.tables
            if (columns := tuple(column.name for column in table.columns if column.encrypted))
        )
        url = _url(service.database, database_url_template, fallback_url)
        planned.append(PlannedRotation(name, service.database, url, tables))
    return tuple(planned)


@dataclass(frozen=True)
class PlannedReplay:
    service: str
    app_module: str  # names the handlers of the events it consumes
    ini: Path
    database_url: str


def plan_replay(spec: Path, service: str, generated: Path, database_url: str) -> PlannedReplay:
    """What `cloudretail replay` rebuilds: a service that consumes events, its generated app
    and migrations, and the database to fill."""
    platform = load_platform(spec)
    known = [s.name for s in platform.services if s.consumes]
    [name] = _chosen((service,), known, "services that consume events")
    ini = generated / "services" / name / "alembic.ini"
    if not ini.exists():
        raise StackPlanError(f"{ini} is missing; run `cloudretail generate` first")
    return PlannedReplay(name, f"generated.services.{name}.app", ini, database_url)


def _chosen(services: tuple[str, ...], known: list[str], what: str) -> list[str]:
    """The services named (all of `known` when none are), refusing one not in `known`."""
    unknown = [name for name in services if name not in known]
    if unknown:
        hints = "".join(suggest(name, known) for name in unknown)
        raise StackPlanError(
            f"unknown service {', '.join(unknown)}{hints}; {what}: {', '.join(known) or 'none'}"
        )
    return list(services or known)


def _url(database: str, template: str | None, fallback_url: Callable[[str], str]) -> str:
    """The database's URL: from the template (`{database}` filled in), else the fallback."""
    return template.format(database=database) if template else fallback_url(database)
