"""The resolved platform model: immutable, every default filled, every reference resolved.

Templates read only this. Decisions (names, types, orderings, derived edges) are made
here so that a template reads like the file it produces.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudretail.generator.auth_rules import AuthRule, auth_rule
from cloudretail.generator.kinds import ColumnKind, kind_of
from cloudretail.generator.spec import (
    ColumnSpec,
    GatewayRouteSpec,
    ProbeSpec,
    ResourcesSpec,
    RouteSpec,
    ScalingSpec,
    ServiceSpec,
    Spec,
    TableSpec,
)
from cloudretail.generator.system_tables import SYSTEM_TABLES

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_UNIT_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def duration_ms(text: str) -> int:
    """`7d` -> 604800000."""
    match = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", text)
    assert match, text
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def byte_size(text: str) -> int:
    match = re.fullmatch(r"([0-9]+)(B|KiB|MiB|GiB)", text)
    assert match, text
    return int(match.group(1)) * _UNIT_BYTES[match.group(2)]


def pascal(name: str) -> str:
    """`price_changed` -> `PriceChanged`, `order.created` -> `OrderCreated`."""
    return "".join(part.capitalize() for part in re.split(r"[._\-\s]+", name) if part)


def singular(name: str) -> str:
    """Table name to row name: `products` -> `product`, `inventory` stays."""
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


@dataclass(frozen=True)
class Scaling:
    min: int
    max: int
    cpu: int
    memory: int


@dataclass(frozen=True)
class Probe:
    path: str
    initial_delay: int
    period: int
    timeout: int
    failures: int


@dataclass(frozen=True)
class Resources:
    request_cpu: str
    request_memory: str
    limit_cpu: str
    limit_memory: str


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    sql_type: str
    python_type: str
    nullable: bool
    primary_key: bool
    unique: bool
    default: bool | int | float | str | None
    on_update_now: bool
    check: str | None
    values: tuple[str, ...]
    length: int | None
    precision: int | None
    scale: int | None
    secret: bool
    encrypted: bool  # stored as AES-256-GCM text; the storage type is TEXT whatever the kind
    renamed_from: str | None
    description: str
    # GDPR: what erasing the row's subject does ("erase", "anonymise", "keep"; None: not
    # personal data), the keys of a JSON object it is limited to, and the value it writes.
    pii: str | None = None
    pii_keys: tuple[str, ...] = ()
    replacement: bool | int | float | str | None = None

    @property
    def kind(self) -> ColumnKind:
        return kind_of(self.type)

    @property
    def generated(self) -> bool:
        """Filled by the database or the model (ids, timestamps), never by a client."""
        return self.default in self.kind.functions or self.on_update_now

    @property
    def sql_constraints(self) -> str:
        """The column's SQL suffix as the seed writes it (docs)."""
        parts = []
        if self.primary_key:
            parts.append("PRIMARY KEY")
        if self.unique:
            parts.append("UNIQUE")
        if not self.nullable and not self.primary_key:
            parts.append("NOT NULL")
        if self.sql_default is not None:
            parts.append(f"DEFAULT {self.sql_default}")
        if self.check_sql is not None:
            parts.append(f"CHECK ({self.check_sql})")
        return " ".join(parts)

    @property
    def sql_default(self) -> str | None:
        return self.kind.docs_default(self.default)

    @property
    def check_sql(self) -> str | None:
        if self.values:
            listed = ", ".join(f"'{value}'" for value in self.values)
            return f"{self.name} IN ({listed})"
        if self.check is not None:
            return f"{self.name} {self.check}"
        return None


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool


@dataclass(frozen=True)
class Filter:
    name: str
    op: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    name: str
    row_name: str
    class_name: str
    description: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...]
    filters: tuple[Filter, ...]
    sort: tuple[str, ...]
    cache_ttl_seconds: int | None
    allow_destructive: bool
    system: bool = False  # added by the platform (event machinery), not written in the spec
    # GDPR: the column naming each row's data subject (or, with `subject_through`, the key
    # of a row of that table, whose subject it is), and how erasure treats the rows.
    subject: str | None = None
    subject_through: str | None = None
    erasure: str = "columns"  # "columns": apply each column's `pii`; "delete": delete the rows

    @property
    def primary_key(self) -> Column:
        return next(column for column in self.columns if column.primary_key)

    def encrypted_context(self, column: Column) -> str:
        """The associated data of `column`'s encrypted values: a value does not decrypt in
        another column (runtime/crypto.py)."""
        return f"{self.name}.{column.name}"

    def check_name(self, column: Column) -> str:
        """The name of `column`'s CHECK constraint (models and migrations agree on it)."""
        return f"ck_{self.name}_{column.name}"

    def unique_name(self, column: Column) -> str:
        """The name of `column`'s UNIQUE constraint."""
        return f"uq_{self.name}_{column.name}"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    service: str
    auth: str
    roles: tuple[str, ...]
    name: str | None
    handler: str | None
    crud_table: str | None
    crud_operation: str | None
    saga: str | None
    description: str
    index: int  # position in the spec's list of routes, for error locations (-1: none)
    body: str | None = None
    status: int | None = None
    errors: tuple[int, ...] = ()
    # Added by the platform, not written in the spec: a subject's rows for the GDPR export.
    subject_data: bool = False

    @property
    def rule(self) -> AuthRule:
        return auth_rule(self.auth)

    @property
    def via_gateway(self) -> bool:
        return self.rule.via_gateway

    @property
    def gateway_auth(self) -> str | None:
        """The rule as the gateway's route table names it."""
        return self.rule.gateway

    @property
    def problems(self) -> tuple[int, ...]:
        """Every problem+json status the route can answer with, for its OpenAPI document.

        All routes: 422 (a parameter, or a body field, is invalid) and 503 (the database or
        another dependency is unavailable, or the service is draining). A body: 400 (not
        JSON), 413 (too large), 415 (not JSON at all). A token: 401; a role: 403. A key in
        the path: 404. CRUD writes: 409 (a unique or foreign key says no). The rest are the
        handler's own, from the spec's `errors`.
        """
        found = {422, 503, *self.errors}
        if self.method in {"POST", "PUT", "PATCH"}:
            found |= {400, 413, 415}
        if self.rule.token is not None:
            found.add(401)
        if self.roles or self.rule.token == "service":
            found.add(403)
        if "{" in self.path and not self.subject_data:  # an unknown subject has no rows
            found.add(404)
        if self.crud_operation in {"create", "replace", "update", "delete"}:
            found.add(409)
        return tuple(sorted(found))


@dataclass(frozen=True)
class SagaStep:
    name: str
    call: str
    compensate: str | None

    @property
    def call_service(self) -> str:
        return self.call.partition(".")[0]

    @property
    def compensate_service(self) -> str | None:
        return self.compensate.partition(".")[0] if self.compensate else None


@dataclass(frozen=True)
class Saga:
    name: str
    timeout_seconds: int
    steps: tuple[SagaStep, ...]


@dataclass(frozen=True)
class PayloadField:
    name: str
    type: str
    optional: bool


@dataclass(frozen=True)
class Event:
    name: str
    class_name: str
    description: str
    version: str
    key: str
    topic: str
    producer: str
    consumers: tuple[str, ...]
    payload: tuple[PayloadField, ...]


@dataclass(frozen=True)
class Topic:
    name: str
    description: str
    partitions: int
    replication: int
    retention_ms: int
    retention: str
    cleanup_policy: str
    events: tuple[str, ...]

    @property
    def dead_letter(self) -> str:
        return f"{self.name}.dlq"

    @property
    def node_id(self) -> str:
        return pascal(self.name)


@dataclass(frozen=True)
class Flow:
    """Events of one topic between one service and the topic (for diagrams)."""

    service: str
    topic: str
    events: tuple[str, ...]

    @property
    def service_node(self) -> str:
        return pascal(f"{self.service}-service")

    @property
    def topic_node(self) -> str:
        return pascal(self.topic)


@dataclass(frozen=True)
class Deployable:
    """What every process of the platform has: a port, probes, resources, scaling."""

    name: str
    kind: str  # "service" | "gateway" | "event-bus"
    title: str
    port: int
    scaling: Scaling
    liveness: Probe
    readiness: Probe
    resources: Resources

    @property
    def node_id(self) -> str:
        return pascal(self.name)


SUBJECT_DATA_ROUTE = "subject_data"  # the name of that route (calls and docs name routes)


def subject_data_path(service: str) -> str:
    """The internal route a service holding subject tables answers the GDPR export on."""
    return f"/internal/{service}/subjects/{{subject_id}}"


@dataclass(frozen=True)
class PersonalData:
    """A service's part in GDPR erasure and export (spec: `gdpr`, a table's `subject`)."""

    erasure_event: str
    subject_key: str  # the erasure event's payload field naming the subject
    # It consumes `erasure_event` and applies its subject tables' `pii` then; false for the
    # service that owns the subjects, which erases its own when it publishes the event.
    applies_erasure: bool
    # The subjects' owner gathers the export: its own tables and these services' (over
    # their `subject_data_path` route).
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Service:
    name: str
    title: str
    description: str
    port: int
    database: str
    prefix: str
    uses_cache: bool
    uses_mail: bool
    calls: tuple[str, ...]
    tables: tuple[Table, ...]
    publishes: tuple[str, ...]
    consumes: tuple[str, ...]
    routes: tuple[Route, ...]
    sagas: tuple[Saga, ...]
    deployable: Deployable
    personal_data: PersonalData | None = None

    @property
    def env_prefix(self) -> str:
        return self.name.upper()

    @property
    def subject_tables(self) -> tuple[Table, ...]:
        """The tables holding a data subject's rows (spec: `subject`)."""
        return tuple(table for table in self.tables if table.subject is not None)

    def table(self, name: str) -> Table:
        return next(table for table in self.tables if table.name == name)

    @property
    def encrypted_columns(self) -> tuple[str, ...]:
        """`table.column` of each column the service stores encrypted."""
        return tuple(
            table.encrypted_context(column)
            for table in self.tables
            for column in table.columns
            if column.encrypted
        )


@dataclass(frozen=True)
class Upstream:
    """Where the gateway sends a path prefix: a service or the event bus."""

    name: str
    title: str
    prefix: str
    port: int

    @property
    def env(self) -> str:
        return f"{self.name.upper()}_URLS"


@dataclass(frozen=True)
class Gateway:
    deployable: Deployable
    rate_limit_requests: int
    rate_limit_window_seconds: int
    rate_limit: str
    body_limit_bytes: int
    timeout_seconds: float
    breaker_failures: int
    breaker_reset_seconds: float
    cors_origins: tuple[str, ...]
    upstreams: tuple[Upstream, ...]
    routes: tuple[Route, ...]

    def upstream(self, name: str) -> Upstream:
        return next(upstream for upstream in self.upstreams if upstream.name == name)


@dataclass(frozen=True)
class EventBus:
    deployable: Deployable
    prefix: str
    database: str
    tables: tuple[Table, ...]
    store_retention_seconds: int


@dataclass(frozen=True)
class Pooler:
    """A PgBouncer in transaction mode in front of a database (spec `pooler`)."""

    instances: int
    pool_size: int  # server connections per PgBouncer pod
    max_client_connections: int  # client connections per PgBouncer pod


@dataclass(frozen=True)
class DatabaseSettings:
    """One PostgreSQL database's settings: from `databases.<name>`, else `defaults.database`."""

    name: str
    max_connections: int
    pooler: Pooler | None
    declared: bool  # written under `databases:` in the spec (where its findings point)


@dataclass(frozen=True)
class Schema:
    """One database and the package whose models and migrations describe it."""

    title: str
    database: str
    folder: str  # inside generated/, e.g. "services/user" or "eventbus"
    tables: tuple[Table, ...]

    @property
    def package(self) -> str:
        return "generated." + self.folder.replace("/", ".")


@dataclass(frozen=True)
class Auth:
    """Who signs tokens: a service of the spec (`issuer`, `port`, and `jwks` a path of its)
    or, with `issuer` None, an outside identity provider (`jwks` a full URL)."""

    issuer: str | None
    port: int | None
    jwks: str
    roles: tuple[str, ...]

    def jwks_url(self, host: str) -> str:
        """The keys' URL as a process reaches it, the issuer service being at `host`."""
        if self.issuer is None:
            return self.jwks
        return f"http://{host}:{self.port}{self.jwks}"


@dataclass(frozen=True)
class Vault:
    server: str
    path: str
    version: str
    auth_mount: str
    role: str
    prefix: str


@dataclass(frozen=True)
class IngressController:
    """The ingress-nginx controller that terminates the platform's public TLS."""

    class_name: str
    namespace: str
    config_map: str


@dataclass(frozen=True)
class CertificateIssuer:
    """The cert-manager issuer that signs the platform's in-cluster server certificates."""

    name: str
    kind: str  # ClusterIssuer or Issuer (then in the platform's namespace)


@dataclass(frozen=True)
class LoadAccount:
    """How a virtual user of the load test gets a token: sign up, then log in; `token` is
    the login answer's field holding it."""

    signup: Route
    login: Route
    token: str


@dataclass(frozen=True)
class LoadTest:
    """The load test's settings (spec: `load_test`); `journeys.py` derives what its virtual
    users do from the routes."""

    duration_seconds: int
    arrival_rate: int
    p95_ms: int
    p99_ms: int
    max_error_ratio: float
    account: LoadAccount | None
    weights: dict[str, int] = field(default_factory=dict, hash=False)
    # A request body per route body model (`Route.body`), `{placeholder}`s unresolved.
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)

    def weight(self, journey: str) -> int:
        return self.weights.get(journey, 1)


@dataclass(frozen=True)
class Platform:
    name: str
    namespace: str
    registry: str
    domain: str
    source: str
    topics: tuple[Topic, ...]
    events: tuple[Event, ...]
    services: tuple[Service, ...]
    gateway: Gateway
    event_bus: EventBus
    ingress: IngressController
    issuer: CertificateIssuer
    auth: Auth | None = None
    vault: Vault | None = None  # the prod overlay's Secrets come from it (External Secrets)
    load_test: LoadTest | None = None
    # Every database's PostgreSQL settings, by name (services' and the event bus's).
    databases: tuple[DatabaseSettings, ...] = ()

    def database(self, name: str) -> DatabaseSettings:
        return next(database for database in self.databases if database.name == name)

    @property
    def mail_from(self) -> str:
        """The From address of the platform's mails (services with `uses: [mail]`)."""
        return f"no-reply@{self.domain}"

    @property
    def deployables(self) -> tuple[Deployable, ...]:
        return (
            self.gateway.deployable,
            *(service.deployable for service in self.services),
            self.event_bus.deployable,
        )

    @property
    def call_edges(self) -> tuple[tuple[str, str], ...]:
        return tuple((svc.name, callee) for svc in self.services for callee in svc.calls)

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(route for service in self.services for route in service.routes)

    @property
    def publish_flows(self) -> tuple[Flow, ...]:
        return self._flows(lambda event: (event.producer,))

    @property
    def consume_flows(self) -> tuple[Flow, ...]:
        return self._flows(lambda event: event.consumers)

    def _flows(self, ends: Callable[[Event], tuple[str, ...]]) -> tuple[Flow, ...]:
        grouped: dict[tuple[str, str], list[str]] = {}
        for event in self.events:
            for service in ends(event):
                grouped.setdefault((service, event.topic), []).append(event.name)
        order = {service.name: index for index, service in enumerate(self.services)}
        return tuple(
            Flow(service=service, topic=topic, events=tuple(events))
            for (service, topic), events in sorted(
                grouped.items(), key=lambda item: (order.get(item[0][0], 0), item[0][1])
            )
            if service in order
        )

    @property
    def schemas(self) -> tuple[Schema, ...]:
        owners = [
            Schema(service.title, service.database, f"services/{service.name}", service.tables)
            for service in self.services
            if service.tables
        ]
        bus = self.event_bus
        owners.append(Schema(bus.deployable.title, bus.database, "eventbus", bus.tables))
        return tuple(owners)

    def service(self, name: str) -> Service:
        return next(service for service in self.services if service.name == name)

    def event(self, name: str) -> Event:
        return next(event for event in self.events if event.name == name)


# -- building ------------------------------------------------------------------------------


def _column(name: str, spec: ColumnSpec) -> Column:
    return Column(
        name=name,
        type=spec.type,
        sql_type="TEXT" if spec.encrypted else kind_of(spec.type).sql_type(spec),
        python_type=kind_of(spec.type).python,
        nullable=spec.nullable and not spec.primary_key,
        primary_key=spec.primary_key,
        unique=spec.unique,
        default=spec.default,
        on_update_now=spec.on_update == "now",
        check=spec.check,
        values=tuple(spec.values or ()),
        length=spec.length,
        precision=spec.precision,
        scale=spec.scale,
        secret=spec.secret,
        encrypted=spec.encrypted,
        renamed_from=spec.renamed_from,
        description=spec.description,
        pii=spec.pii,
        pii_keys=tuple(spec.pii_keys or ()),
        replacement=spec.replacement,
    )


def _table(name: str, spec: TableSpec, *, system: bool = False) -> Table:
    indexes = tuple(
        Index(
            name=index.name or f"idx_{name}_{'_'.join(index.columns)}",
            columns=tuple(index.columns),
            unique=index.unique,
        )
        for index in spec.indexes
    )
    filters = tuple(
        Filter(name=f.name, op=f.op, columns=(f.column,) if f.column else tuple(f.columns or ()))
        for f in spec.filters
    )
    return Table(
        name=name,
        row_name=singular(name),
        class_name=pascal(singular(name)),
        description=spec.description,
        columns=tuple(_column(column, column_spec) for column, column_spec in spec.columns.items()),
        indexes=indexes,
        filters=filters,
        sort=tuple(spec.sort),
        cache_ttl_seconds=duration_ms(spec.cache.ttl) // 1000 if spec.cache else None,
        allow_destructive=spec.allow_destructive,
        system=system,
        subject=spec.subject,
        subject_through=spec.subject_through,
        erasure=spec.erasure,
    )


def _system_tables(*names: str) -> tuple[Table, ...]:
    return tuple(_table(name, SYSTEM_TABLES[name], system=True) for name in names)


def _route(service: str, spec: RouteSpec | GatewayRouteSpec, index: int) -> Route:
    own = spec if isinstance(spec, RouteSpec) else None
    table, _, operation = (own.crud or "").partition(".") if own else ("", "", "")
    roles = auth_rule(spec.auth).route_roles(spec.roles)
    return Route(
        method=spec.method,
        path=spec.path,
        service=service,
        auth=spec.auth,
        roles=roles,
        name=own.name if own else None,
        handler=own.handler if own else None,
        crud_table=table or None,
        crud_operation=operation or None,
        saga=own.saga if own else None,
        description=spec.description,
        index=index,
        body=own.body if own else None,
        status=own.status if own else None,
        errors=tuple(sorted(set(own.errors))) if own else (),
    )


def _subject_data_route(service: str) -> Route:
    return Route(
        method="GET",
        path=subject_data_path(service),
        service=service,
        auth="service",
        roles=(),
        name=SUBJECT_DATA_ROUTE,
        handler=None,
        crud_table=None,
        crud_operation=None,
        saga=None,
        description="A data subject's rows in this service, for the GDPR export",
        index=-1,
        subject_data=True,
    )


def _route_order(route: Route) -> tuple[str, str]:
    # Literal segments sort before parameters so a matcher that takes the first hit is right.
    return (route.path.replace("{", "~"), route.method)


class _Builder:
    def __init__(self, spec: Spec, source: str) -> None:
        self.spec = spec
        self.source = source

    def scaling(self, override: ScalingSpec) -> Scaling:
        base = self.spec.defaults.scaling
        return Scaling(
            min=override.min if override.min is not None else base.min,
            max=override.max if override.max is not None else base.max,
            cpu=override.cpu if override.cpu is not None else base.cpu,
            memory=override.memory if override.memory is not None else base.memory,
        )

    def deployable(
        self,
        name: str,
        kind: str,
        title: str,
        port: int,
        scaling: ScalingSpec,
        resources: ResourcesSpec | None,
        liveness: ProbeSpec | None = None,
        readiness: ProbeSpec | None = None,
    ) -> Deployable:
        defaults = self.spec.defaults
        res = resources or defaults.resources
        return Deployable(
            name=name,
            kind=kind,
            title=title,
            port=port,
            scaling=self.scaling(scaling),
            liveness=Probe(**(liveness or defaults.probes.liveness).model_dump()),
            readiness=Probe(**(readiness or defaults.probes.readiness).model_dump()),
            resources=Resources(
                request_cpu=res.requests.cpu,
                request_memory=res.requests.memory,
                limit_cpu=res.limits.cpu,
                limit_memory=res.limits.memory,
            ),
        )

    def personal_data(self, name: str, spec: ServiceSpec) -> PersonalData | None:
        gdpr = self.spec.gdpr
        if gdpr is None:
            return None
        holders = [
            holder
            for holder, holder_spec in self.spec.services.items()
            if any(table.subject for table in holder_spec.tables.values())
        ]
        owner = gdpr.erasure_event in spec.events.publishes
        if name not in holders and not owner:
            return None
        return PersonalData(
            erasure_event=gdpr.erasure_event,
            subject_key=gdpr.subject_key,
            applies_erasure=name in holders and gdpr.erasure_event in spec.events.consumes,
            sources=tuple(holder for holder in holders if holder != name) if owner else (),
        )

    def service(self, name: str, spec: ServiceSpec) -> Service:
        title = f"{name.capitalize()} Service"
        probes = spec.probes
        personal = self.personal_data(name, spec)
        routes = [_route(name, route, index) for index, route in enumerate(spec.routes)]
        if personal is not None and any(table.subject for table in spec.tables.values()):
            routes.append(_subject_data_route(name))
        return Service(
            name=name,
            title=title,
            description=spec.description,
            port=spec.port,
            database=spec.database,
            prefix=spec.prefix,
            uses_cache="cache" in spec.uses,
            uses_mail="mail" in spec.uses,
            calls=tuple(spec.calls),
            tables=(
                *(_table(table, table_spec) for table, table_spec in spec.tables.items()),
                *_system_tables(
                    *(["outbox"] if spec.events.publishes else []),
                    *(["processed_events"] if spec.events.consumes else []),
                    *(["saga_instances"] if spec.sagas else []),
                    *(["mail_outbox"] if "mail" in spec.uses else []),
                ),
            ),
            publishes=tuple(spec.events.publishes),
            consumes=tuple(spec.events.consumes),
            routes=tuple(sorted(routes, key=_route_order)),
            sagas=tuple(
                Saga(
                    name=saga,
                    timeout_seconds=duration_ms(saga_spec.timeout) // 1000,
                    steps=tuple(
                        SagaStep(name=step.name, call=step.call, compensate=step.compensate)
                        for step in saga_spec.steps
                    ),
                )
                for saga, saga_spec in spec.sagas.items()
            ),
            deployable=self.deployable(
                f"{name}-service",
                "service",
                title,
                spec.port,
                spec.scaling,
                spec.resources,
                probes.liveness if probes else None,
                probes.readiness if probes else None,
            ),
            personal_data=personal,
        )

    def topic_of(self, event: str) -> str:
        return next(
            topic
            for topic, topic_spec in self.spec.topics.items()
            if any(fnmatch.fnmatchcase(event, pattern) for pattern in topic_spec.events)
        )

    def build(self) -> Platform:
        spec = self.spec
        services = tuple(self.service(name, svc) for name, svc in spec.services.items())
        producer = {event: svc.name for svc in services for event in svc.publishes}
        events = tuple(
            Event(
                name=name,
                class_name=pascal(name),
                description=event.description,
                version=event.version,
                key=event.key,
                topic=self.topic_of(name),
                producer=producer.get(name, ""),
                consumers=tuple(svc.name for svc in services if name in svc.consumes),
                payload=tuple(
                    PayloadField(
                        name=field,
                        type=kind.removesuffix(" | null"),
                        optional=kind.endswith(" | null"),
                    )
                    for field, kind in event.payload.items()
                ),
            )
            for name, event in sorted(spec.events.items())
        )
        topics = tuple(
            Topic(
                name=name,
                description=topic.description,
                partitions=topic.partitions,
                replication=topic.replication,
                retention_ms=duration_ms(topic.retention),
                retention=topic.retention,
                cleanup_policy=topic.cleanup_policy,
                events=tuple(event.name for event in events if event.topic == name),
            )
            for name, topic in sorted(spec.topics.items())
        )
        gw = spec.gateway
        gateway = Gateway(
            deployable=self.deployable(
                "api-gateway", "gateway", "API Gateway", gw.port, gw.scaling, gw.resources
            ),
            rate_limit_requests=gw.rate_limit.requests,
            rate_limit_window_seconds=duration_ms(gw.rate_limit.per) // 1000,
            rate_limit=f"{gw.rate_limit.requests}/{gw.rate_limit.per}",
            body_limit_bytes=byte_size(gw.body_limit),
            timeout_seconds=duration_ms(gw.timeout) / 1000,
            breaker_failures=gw.circuit_breaker.failures,
            breaker_reset_seconds=duration_ms(gw.circuit_breaker.reset) / 1000,
            cors_origins=tuple(spec.platform.cors_origins),
            upstreams=(
                *(Upstream(svc.name, svc.title, svc.prefix, svc.port) for svc in services),
                Upstream("event_bus", "Event Bus", spec.event_bus.prefix, spec.event_bus.port),
            ),
            routes=tuple(
                sorted(
                    [
                        *(route for svc in services for route in svc.routes if route.via_gateway),
                        *(_route(extra.upstream, extra, i) for i, extra in enumerate(gw.routes)),
                    ],
                    key=_route_order,
                )
            ),
        )
        bus = spec.event_bus
        event_bus = EventBus(
            deployable=self.deployable(
                "event-bus", "event-bus", "Event Bus", bus.port, bus.scaling, bus.resources
            ),
            prefix=bus.prefix,
            database=bus.database or f"{spec.platform.name}_events",
            tables=_system_tables("audit_log"),
            store_retention_seconds=duration_ms(bus.store_retention) // 1000,
        )
        return Platform(
            name=spec.platform.name,
            namespace=spec.platform.namespace,
            registry=spec.platform.registry,
            domain=spec.platform.domain,
            source=self.source,
            topics=topics,
            events=events,
            services=services,
            gateway=gateway,
            event_bus=event_bus,
            ingress=IngressController(
                class_name=spec.platform.ingress.class_name,
                namespace=spec.platform.ingress.namespace,
                config_map=spec.platform.ingress.config_map,
            ),
            issuer=CertificateIssuer(
                name=spec.platform.certificates.issuer,
                kind=spec.platform.certificates.issuer_kind,
            ),
            auth=self.auth(spec),
            vault=self.vault(spec),
            load_test=self.load_test(spec, services),
            databases=self.databases(
                (*(service.database for service in services), event_bus.database)
            ),
        )

    def databases(self, names: tuple[str, ...]) -> tuple[DatabaseSettings, ...]:
        defaults = self.spec.defaults.database
        found = []
        for name in sorted(set(names)):
            own = self.spec.databases.get(name)
            pooler = (own.pooler if own is not None else None) or defaults.pooler
            max_connections = own.max_connections if own is not None else None
            found.append(
                DatabaseSettings(
                    name=name,
                    max_connections=max_connections or defaults.max_connections,
                    pooler=Pooler(**pooler.model_dump()) if pooler is not None else None,
                    declared=own is not None,
                )
            )
        return tuple(found)

    def load_test(self, spec: Spec, services: tuple[Service, ...]) -> LoadTest | None:
        found = spec.load_test
        if found is None:
            return None
        account = None
        if found.account is not None and spec.auth is not None:
            issuer = next(service for service in services if service.name == spec.auth.issuer)
            routes = {(route.method, route.path): route for route in issuer.routes}
            account = LoadAccount(
                signup=routes["POST", found.account.signup],
                login=routes["POST", found.account.login],
                token=found.account.token,
            )
        return LoadTest(
            duration_seconds=duration_ms(found.duration) // 1000,
            arrival_rate=found.arrival_rate,
            p95_ms=duration_ms(found.p95),
            p99_ms=duration_ms(found.p99),
            max_error_ratio=found.max_error_ratio,
            account=account,
            weights=dict(found.weights),
            bodies={name: dict(body) for name, body in found.bodies.items()},
        )

    def vault(self, spec: Spec) -> Vault | None:
        found = spec.platform.secrets.vault
        if found is None:
            return None
        return Vault(
            server=found.server.rstrip("/"),
            path=found.path,
            version=found.version,
            auth_mount=found.auth_mount,
            role=found.role,
            prefix=found.prefix or spec.platform.name,
        )

    def auth(self, spec: Spec) -> Auth | None:
        if spec.auth is None:
            return None
        issuer = spec.auth.issuer
        return Auth(
            issuer=issuer,
            port=spec.services[issuer].port if issuer else None,
            jwks=spec.auth.jwks,
            roles=tuple(spec.auth.roles),
        )


def build_platform(spec: Spec, source: str) -> Platform:
    """Resolve a checked spec into the model the targets read."""
    return _Builder(spec, source).build()
