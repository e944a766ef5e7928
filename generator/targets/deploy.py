"""How the platform runs: one process per deployable, what it runs, what it needs, whom it calls.

The model describes the platform; this module decides how it is deployed, once, for every
deployment target (Kubernetes, compose, images, CI). Everything here is derived from the
model, so a new service in the spec becomes a new process with its own edges and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cloudretail.generator.capacity import MAX_OVERFLOW, POOL_SIZE
from cloudretail.generator.model import DatabaseSettings, Deployable, Platform, Service

UID = 10001  # the images' non-root user (see the Dockerfiles)
HTTP = "TCP"
POSTGRES_PORT = 5432
REDIS_PORT = 6379
KAFKA_PORT = 9092  # plaintext: the local broker and compose
KAFKA_TLS_PORT = 9093  # the cluster's listener: TLS, verified against Strimzi's cluster CA
REDIS_HOST = "redis"
# Where the token issuer's private key is mounted (from a Secret, as a file).
JWT_KEY_DIR = "/etc/cloudretail/jwt"
JWT_KEY_FILE = "private.pem"
# Where the operators' CA certificates are mounted, to verify Kafka's, PostgreSQL's and
# Redis's TLS.
CA_FILE = "ca.crt"
KAFKA_CA_DIR = "/etc/cloudretail/kafka-ca"
POSTGRES_CA_DIR = "/etc/cloudretail/postgres-ca"
REDIS_CA_DIR = "/etc/cloudretail/redis-ca"
# Redis on the machine's own network (compose): plaintext, as the local broker speaks.
REDIS_PLAIN_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@dataclass(frozen=True)
class Setting:
    """One environment variable a process reads; the value is never a secret."""

    name: str
    value: str


@dataclass(frozen=True)
class Edge:
    """`source` opens connections to `target` on `port` (both deployables)."""

    source: str
    target: str
    port: int
    why: str


@dataclass(frozen=True)
class Database:
    name: str  # the PostgreSQL database, e.g. cloudretail_orders
    cluster: str  # a Kubernetes name for it, e.g. cloudretail-orders
    clients: tuple[str, ...]  # deployables and migration jobs that connect to it
    settings: DatabaseSettings

    @property
    def pooler(self) -> str | None:
        """The CloudNativePG Pooler (and its Service) in front of the database, if any: the
        deployables connect there, migration Jobs straight to the cluster."""
        return f"{self.cluster}-pooler" if self.settings.pooler is not None else None

    @property
    def app_secret(self) -> str:
        """The Secret CloudNativePG makes for the database's owner (key `uri`)."""
        return f"{self.cluster}-app"

    @property
    def ca_secret(self) -> str:
        """The Secret CloudNativePG makes with the CA of the cluster's server certificate."""
        return f"{self.cluster}-ca"


@dataclass(frozen=True)
class Migration:
    """A one-shot that upgrades one database to its newest revision before a rollout."""

    name: str  # e.g. order-service-migrate
    process: str  # the deployable whose image and database it uses
    title: str
    database: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class Process:
    deployable: Deployable
    image: str  # registry/name, without a tag
    dockerfile: str  # from the repository root
    command: tuple[str, ...]
    database: str | None
    uses_kafka: bool
    uses_redis: bool
    signs_tokens: bool  # holds the private key the platform's tokens are signed with
    verifies_tokens: bool  # fetches the issuer's JWKS
    encrypts: bool = False  # stores columns encrypted: needs the key ring (ENCRYPTION_KEYS)
    sends_mail: bool = False  # delivers its mail outbox over SMTP (SMTP_URL, MAIL_FROM)

    @property
    def name(self) -> str:
        return self.deployable.name

    @property
    def port(self) -> int:
        return self.deployable.port

    @property
    def kind(self) -> str:
        return self.deployable.kind


@dataclass(frozen=True)
class Deployment:
    """The deployment view of a platform."""

    platform: Platform
    processes: tuple[Process, ...]
    edges: tuple[Edge, ...]  # HTTP between processes: gateway, declared calls, JWKS
    databases: tuple[Database, ...]
    migrations: tuple[Migration, ...]
    jwks_url: str | None

    @property
    def name(self) -> str:
        return self.platform.name

    @property
    def namespace(self) -> str:
        return self.platform.namespace

    @property
    def gateway(self) -> Process:
        return self.process(self.platform.gateway.deployable.name)

    @property
    def kafka_cluster(self) -> str:
        """The Strimzi Kafka cluster's name; its bootstrap Service is `<name>-kafka-bootstrap`."""
        return self.platform.name

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.kafka_cluster}-kafka-bootstrap:{KAFKA_TLS_PORT}"

    @property
    def kafka_ca_secret(self) -> str:
        """The Secret Strimzi makes with the cluster CA (key `ca.crt`)."""
        return f"{self.kafka_cluster}-cluster-ca-cert"

    @property
    def redis_url(self) -> str:
        """Redis in the cluster: TLS only, verified against REDIS_CA_FILE."""
        return f"rediss://{REDIS_HOST}:{REDIS_PORT}/0"

    @property
    def redis_tls_secret(self) -> str:
        """The Secret cert-manager keeps Redis's certificate in (`tls.crt`, `tls.key` and the
        issuer's `ca.crt`, which the clients mount)."""
        return f"{REDIS_HOST}-tls"

    def process(self, name: str) -> Process:
        return next(process for process in self.processes if process.name == name)

    def database(self, name: str) -> Database:
        return next(database for database in self.databases if database.name == name)

    def edges_from(self, source: str) -> tuple[Edge, ...]:
        return tuple(edge for edge in self.edges if edge.source == source)

    def edges_to(self, target: str) -> tuple[Edge, ...]:
        return tuple(edge for edge in self.edges if edge.target == target)

    @cached_property
    def kafka_clients(self) -> tuple[str, ...]:
        return tuple(process.name for process in self.processes if process.uses_kafka)

    @cached_property
    def redis_clients(self) -> tuple[str, ...]:
        return tuple(process.name for process in self.processes if process.uses_redis)

    @cached_property
    def mail_senders(self) -> tuple[str, ...]:
        return tuple(process.name for process in self.processes if process.sends_mail)

    def settings(
        self, process: Process, kafka_bootstrap: str, redis_url: str
    ) -> tuple[Setting, ...]:
        """The process's plain settings (secrets are referenced elsewhere), sorted by name."""
        values = {
            "ENVIRONMENT": "production",
            "HOST": "0.0.0.0",
            "LOG_LEVEL": "INFO",
            # Spans are named for the deployable; OTEL_EXPORTER_OTLP_ENDPOINT, where the
            # collector is, is the operator's to add.
            "OTEL_SERVICE_NAME": process.name,
            "PORT": str(process.port),
        }
        if process.uses_kafka:
            values["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap
            values["KAFKA_IDEMPOTENT"] = "true"
        if process.database:
            # What generator/capacity.py counts per replica, whatever the runtime's defaults.
            values["DATABASE_POOL_SIZE"] = str(POOL_SIZE)
            values["DATABASE_MAX_OVERFLOW"] = str(MAX_OVERFLOW)
        if process.uses_redis:
            values["REDIS_URL"] = redis_url
        if process.verifies_tokens and self.jwks_url:
            values["JWKS_URL"] = self.jwks_url
        if process.signs_tokens:
            values["JWT_PRIVATE_KEY_FILE"] = f"{JWT_KEY_DIR}/{JWT_KEY_FILE}"
        if process.sends_mail:
            values["MAIL_FROM"] = self.platform.mail_from
        if process.kind == "gateway":
            # Ready while any upstream is: one service's outage must not take every
            # gateway replica out of the Service (its routes answer 503 meanwhile).
            values["GATEWAY_READY_POLICY"] = "any"
            for upstream in self.platform.gateway.upstreams:
                target = self.by_port[upstream.port]
                values[upstream.env] = f"http://{target.name}:{target.port}"
        else:
            service = self.service_of.get(process.name)
            for callee in service.calls if service else ():
                target = self.platform.service(callee).deployable
                values[f"{env_key(callee)}_URL"] = f"http://{target.name}:{target.port}"
        return tuple(Setting(name, values[name]) for name in sorted(values))

    @cached_property
    def by_port(self) -> dict[int, Deployable]:
        return {deployable.port: deployable for deployable in self.platform.deployables}

    @cached_property
    def service_of(self) -> dict[str, Service]:
        return {service.deployable.name: service for service in self.platform.services}


def env_key(name: str) -> str:
    """`inventory` -> `INVENTORY`, `event-bus` -> `EVENT_BUS` (as the runtime reads them)."""
    return name.upper().replace("-", "_").replace(".", "_")


def k8s_name(text: str) -> str:
    """A DNS-1123 name: `cloudretail_orders` -> `cloudretail-orders`."""
    return text.lower().replace("_", "-").replace(".", "-")


def build(platform: Platform) -> Deployment:
    """Decide how `platform` is deployed."""
    gateway = platform.gateway
    bus = platform.event_bus
    by_port = {deployable.port: deployable for deployable in platform.deployables}

    # Who serves which routes that need a verified token (the gateway checks them too).
    needs_token: set[str] = {gateway.deployable.name}
    for route in gateway.routes:
        if route.rule.token == "user":
            needs_token.add(by_port[gateway.upstream(route.service).port].name)
    auth = platform.auth
    issuer = platform.service(auth.issuer) if auth is not None and auth.issuer else None
    issuer_name = issuer.deployable.name if issuer is not None else None
    jwks_url = auth.jwks_url(issuer_name or "") if auth is not None else None
    if auth is not None:
        for other in platform.services:
            if any(r.rule.token == "user" for r in other.routes):
                needs_token.add(other.deployable.name)

    processes: list[Process] = [
        Process(
            deployable=gateway.deployable,
            image=f"{platform.registry}/{gateway.deployable.name}",
            dockerfile="generated/gateway/Dockerfile",
            # The gateway takes its address from arguments, not HOST (which is set anyway).
            command=(
                "python",
                "-m",
                "cloudretail.runtime.gateway",
                "--routes",
                "generated/gateway/routes.yaml",
                "--host",
                "0.0.0.0",
            ),
            database=None,
            uses_kafka=False,
            uses_redis=True,
            signs_tokens=False,
            verifies_tokens=auth is not None,
        )
    ]
    for service in platform.services:
        name = service.deployable.name
        processes.append(
            Process(
                deployable=service.deployable,
                image=f"{platform.registry}/{name}",
                dockerfile=f"generated/services/{service.name}/Dockerfile",
                command=("python", "-m", f"generated.services.{service.name}"),
                database=service.database,
                uses_kafka=bool(service.publishes or service.consumes),
                uses_redis=service.uses_cache,
                signs_tokens=name == issuer_name,
                verifies_tokens=name in needs_token and name != issuer_name,
                encrypts=bool(service.encrypted_columns),
                sends_mail=service.uses_mail,
            )
        )
    processes.append(
        Process(
            deployable=bus.deployable,
            image=f"{platform.registry}/{bus.deployable.name}",
            dockerfile="generated/eventbus/Dockerfile",
            command=("python", "-m", "generated.eventbus"),
            database=bus.database,
            uses_kafka=True,
            uses_redis=True,
            signs_tokens=False,
            verifies_tokens=bus.deployable.name in needs_token and auth is not None,
        )
    )

    edges: dict[tuple[str, str, int], Edge] = {}

    def add(source: str, target: Deployable, why: str) -> None:
        edges.setdefault(
            (source, target.name, target.port), Edge(source, target.name, target.port, why)
        )

    for upstream in gateway.upstreams:
        add(gateway.deployable.name, by_port[upstream.port], "gateway route")
    for caller, callee in platform.call_edges:
        add(platform.service(caller).deployable.name, platform.service(callee).deployable, "call")
    if issuer is not None:
        for process in processes:
            if process.verifies_tokens:
                add(process.name, issuer.deployable, "jwks")

    owners = {schema.database: schema for schema in platform.schemas}
    migrations: list[Migration] = []
    for process in processes:
        schema = owners.get(process.database or "")
        if schema is None:
            continue
        migrations.append(
            Migration(
                name=f"{process.name}-migrate",
                process=process.name,
                title=process.deployable.title,
                database=schema.database,
                command=("python", "-m", schema.package, "migrate"),
            )
        )
    clients: dict[str, list[str]] = {}
    for process in processes:
        if process.database:
            clients.setdefault(process.database, []).append(process.name)
    for migration in migrations:
        clients[migration.database].append(migration.name)
    databases = tuple(
        Database(
            name=name,
            cluster=k8s_name(name),
            clients=tuple(sorted(names)),
            settings=platform.database(name),
        )
        for name, names in sorted(clients.items())
    )
    return Deployment(
        platform=platform,
        processes=tuple(processes),
        edges=tuple(sorted(edges.values(), key=lambda e: (e.source, e.target, e.port))),
        databases=databases,
        migrations=tuple(migrations),
        jwks_url=jwks_url,
    )
