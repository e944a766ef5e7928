"""The platform's capacity arithmetic at the HPA maximum, from the model alone.

One place computes, per deployable, how far it scales, the PostgreSQL connections it can
hold, the partitions its consumer group can use and its disruption budget; per database,
the connections every client can open against what PostgreSQL (or its PgBouncer) accepts;
per topic, the consumer groups' members against its partitions. `validate` reports what
does not fit as findings located at the spec key to change (warnings; errors with
`--strict`), the Kubernetes target reads the pool settings and disruption budget from here,
and `cloudretail capacity` prints the same model.

Where the numbers come from:
- Each service process (and the event bus) opens one SQLAlchemy pool per database and
  nothing else: the outbox relay, the event consumer and the mail relay share the request
  path's engine (runtime/service_events.py and runtime/mail.py take `app.state.database`),
  so a replica holds at most `POOL_SIZE + MAX_OVERFLOW` connections. The generated
  ConfigMaps set both (DATABASE_POOL_SIZE, DATABASE_MAX_OVERFLOW), so the manifests and this
  arithmetic cannot drift from the runtime's defaults.
- A migration Job holds one connection (Alembic with NullPool) beside the running services
  during a rollout; PostgreSQL keeps `superuser_reserved_connections` (3, CloudNativePG's
  default) for the operator; each PgBouncer pod keeps one connection of its own for its
  `auth_query`.
- A consumer group has at most one active member per partition: members beyond the
  partitions of a topic get none of it and only add rebalances.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from cloudretail.generator.errors import SpecIssue
from cloudretail.generator.loader import Document, PathKey, dotted
from cloudretail.generator.model import DatabaseSettings, Deployable, Platform

# What each process's pool may hold (ConfigMap DATABASE_POOL_SIZE / DATABASE_MAX_OVERFLOW).
POOL_SIZE = 15
MAX_OVERFLOW = 0
# PostgreSQL's superuser_reserved_connections (CloudNativePG keeps PostgreSQL's default).
SUPERUSER_RESERVED = 3
# A migration Job's connection, open beside the services while a rollout migrates.
MIGRATION_CONNECTIONS = 1
# Each PgBouncer pod's own server connection (CloudNativePG's auth_query user).
POOLER_AUTH_CONNECTIONS = 1
# The PodDisruptionBudget of every deployable: one instance may be evicted at a time, so a
# drain never blocks (a budget of `minAvailable` >= the HPA minimum would block every one).
PDB_MAX_UNAVAILABLE = 1

# Check names (a finding's `check`), as `cloudretail capacity --json` and tests name them.
CONNECTIONS = "connections"
PARTITIONS = "partitions"
DISRUPTION = "disruption"
RESOURCES = "resources"

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi)?$")
_FACTOR = {None: 1.0, "m": 0.001, "Ki": 1024.0, "Mi": 1024.0**2, "Gi": 1024.0**3}


def quantity(text: str) -> float:
    """A Kubernetes quantity as a number: `100m` -> 0.1 (cores), `128Mi` -> 134217728."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"not a quantity the spec allows: {text!r}")
    return float(match.group(1)) * _FACTOR[match.group(2)]


@dataclass(frozen=True)
class Finding:
    """Something that does not hold at the HPA maximum, at the spec key to change."""

    check: str  # CONNECTIONS, PARTITIONS, DISRUPTION or RESOURCES
    path: PathKey
    message: str

    def located(self, document: Document) -> SpecIssue:
        return SpecIssue(document.locate(self.path), dotted(self.path), self.message)


@dataclass(frozen=True)
class Consumption:
    """One deployable's consumer group on one topic."""

    topic: str
    partitions: int
    members: int  # the group's members at the HPA maximum (one per replica)

    @property
    def active(self) -> int:
        """Members that get a partition."""
        return min(self.members, self.partitions)

    @property
    def idle(self) -> int:
        return self.members - self.active


@dataclass(frozen=True)
class DeployableCapacity:
    """One deployable at its HPA floor and ceiling."""

    name: str
    path: PathKey  # its block in the spec: ("services", "order"), ("gateway",) ...
    min_replicas: int
    max_replicas: int
    cpu_target: int  # percent of the request
    memory_target: int
    cpu_request: float  # cores
    cpu_limit: float
    memory_request: float  # bytes
    memory_limit: float
    database: str | None
    connections_per_replica: int  # 0 without a database
    consumes: tuple[Consumption, ...]
    pdb_max_unavailable: int

    @property
    def max_connections(self) -> int:
        """PostgreSQL (or PgBouncer) client connections at the HPA maximum."""
        return self.max_replicas * self.connections_per_replica

    @property
    def pdb_blocks_every_eviction(self) -> bool:
        """A budget that allows no eviction at the HPA minimum: drains never finish."""
        return self.min_replicas - self.pdb_max_unavailable >= self.min_replicas

    def scaling_path(self, key: str) -> PathKey:
        return (*self.path, "scaling", key)


@dataclass(frozen=True)
class DatabaseCapacity:
    """One database: what its clients open at their HPA maximum against what it accepts."""

    settings: DatabaseSettings
    clients: tuple[DeployableCapacity, ...]
    path: PathKey  # where its settings are (or would be) written

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def client_connections(self) -> int:
        """Connections the deployables open at their HPA maximum (to PgBouncer with a pooler)."""
        return sum(client.max_connections for client in self.clients)

    @property
    def usable(self) -> int:
        """PostgreSQL connections left for clients: max_connections less the superusers'
        reserve and the migration Job's connection."""
        return self.settings.max_connections - SUPERUSER_RESERVED - MIGRATION_CONNECTIONS

    @property
    def server_connections(self) -> int:
        """Connections PostgreSQL serves at peak: the clients' own, or PgBouncer's pools."""
        pooler = self.settings.pooler
        if pooler is None:
            return self.client_connections
        return pooler.instances * (pooler.pool_size + POOLER_AUTH_CONNECTIONS)

    @property
    def client_limit(self) -> int:
        """Client connections accepted: PostgreSQL's usable ones, or every PgBouncer pod's."""
        pooler = self.settings.pooler
        if pooler is None:
            return self.usable
        return pooler.instances * pooler.max_client_connections


@dataclass(frozen=True)
class TopicCapacity:
    name: str
    partitions: int
    groups: tuple[tuple[str, int], ...]  # (deployable, members at its HPA maximum)

    @property
    def most_members(self) -> int:
        return max((members for _, members in self.groups), default=0)


@dataclass(frozen=True)
class CapacityModel:
    deployables: tuple[DeployableCapacity, ...]
    databases: tuple[DatabaseCapacity, ...]
    topics: tuple[TopicCapacity, ...]

    def deployable(self, name: str) -> DeployableCapacity:
        return next(item for item in self.deployables if item.name == name)

    def database(self, name: str) -> DatabaseCapacity:
        return next(item for item in self.databases if item.name == name)

    def topic(self, name: str) -> TopicCapacity:
        return next(item for item in self.topics if item.name == name)

    @cached_property
    def findings(self) -> tuple[Finding, ...]:
        return (
            *_connection_findings(self.databases),
            *_partition_findings(self.topics),
            *_disruption_findings(self.deployables),
            *_resource_findings(self.deployables),
        )


def _deployables(
    platform: Platform,
) -> Iterable[tuple[Deployable, PathKey, str | None, str | None]]:
    """Each deployable, its block in the spec, its database and its service's name."""
    yield platform.gateway.deployable, ("gateway",), None, None
    for service in platform.services:
        yield service.deployable, ("services", service.name), service.database, service.name
    yield platform.event_bus.deployable, ("event_bus",), platform.event_bus.database, None


def capacity_model(platform: Platform) -> CapacityModel:
    """The capacity of `platform` at every deployable's HPA maximum."""
    partitions = {topic.name: topic.partitions for topic in platform.topics}
    consumed: dict[str, set[str]] = {}
    for event in platform.events:
        for consumer in event.consumers:
            consumed.setdefault(consumer, set()).add(event.topic)
    deployables = []
    for deployable, path, database, service in _deployables(platform):
        scaling, resources = deployable.scaling, deployable.resources
        if deployable.kind == "event-bus":
            consumes = set(partitions)  # it stores every topic's events, as one group
        else:
            consumes = consumed.get(service, set()) if service else set()
        deployables.append(
            DeployableCapacity(
                name=deployable.name,
                path=path,
                min_replicas=scaling.min,
                max_replicas=scaling.max,
                cpu_target=scaling.cpu,
                memory_target=scaling.memory,
                cpu_request=quantity(resources.request_cpu),
                cpu_limit=quantity(resources.limit_cpu),
                memory_request=quantity(resources.request_memory),
                memory_limit=quantity(resources.limit_memory),
                database=database,
                connections_per_replica=POOL_SIZE + MAX_OVERFLOW if database else 0,
                consumes=tuple(
                    Consumption(topic, partitions[topic], scaling.max) for topic in sorted(consumes)
                ),
                pdb_max_unavailable=PDB_MAX_UNAVAILABLE,
            )
        )
    databases = tuple(
        DatabaseCapacity(
            settings=settings,
            clients=tuple(item for item in deployables if item.database == settings.name),
            path=("databases", settings.name),
        )
        for settings in platform.databases
    )
    topics = tuple(
        TopicCapacity(
            name=topic.name,
            partitions=topic.partitions,
            groups=tuple(
                (item.name, item.max_replicas)
                for item in deployables
                if any(use.topic == topic.name for use in item.consumes)
            ),
        )
        for topic in platform.topics
    )
    return CapacityModel(tuple(deployables), databases, topics)


def _clients_text(database: DatabaseCapacity) -> str:
    return ", ".join(
        f"{client.name} {client.max_replicas} x {client.connections_per_replica}"
        for client in database.clients
    )


def _connection_findings(databases: Iterable[DatabaseCapacity]) -> Iterable[Finding]:
    for database in databases:
        settings, pooler = database.settings, database.settings.pooler
        # Where to change it: the database's own entry when the spec has one; else the key
        # of its first client that names it (its settings then come from defaults.database).
        where = database.path if settings.declared else _names_database(database)
        wanted = database.client_connections
        if pooler is None:
            if wanted > database.usable:
                yield Finding(
                    CONNECTIONS,
                    where,
                    f"at the HPA maximum the clients of database '{database.name}' open "
                    f"{wanted} connections ({_clients_text(database)} per replica; the outbox "
                    f"relay and event consumer share each replica's pool) but PostgreSQL "
                    f"accepts {database.usable} (max_connections {settings.max_connections}, "
                    f"less {SUPERUSER_RESERVED} reserved for superusers and "
                    f"{MIGRATION_CONNECTIONS} for a migration Job): put a PgBouncer in front "
                    f"(`pooler` under `databases.{database.name}` or `defaults.database`), "
                    "raise `max_connections`, or lower the clients' `scaling.max`",
                )
            continue
        if wanted > database.client_limit:
            yield Finding(
                CONNECTIONS,
                (*where, "pooler", "max_client_connections") if settings.declared else where,
                f"at the HPA maximum the clients of database '{database.name}' open {wanted} "
                f"connections ({_clients_text(database)}) but its {pooler.instances} "
                f"PgBouncer pods accept {database.client_limit} "
                f"({pooler.max_client_connections} each): raise the pooler's "
                "`max_client_connections` or `instances`",
            )
        if database.server_connections > database.usable:
            yield Finding(
                CONNECTIONS,
                (*where, "pooler", "pool_size") if settings.declared else where,
                f"the PgBouncer pods of database '{database.name}' open "
                f"{database.server_connections} server connections ({pooler.instances} x "
                f"(pool_size {pooler.pool_size} + {POOLER_AUTH_CONNECTIONS} for auth)) but "
                f"PostgreSQL accepts {database.usable} (max_connections "
                f"{settings.max_connections}, less {SUPERUSER_RESERVED} for superusers and "
                f"{MIGRATION_CONNECTIONS} for a migration Job): lower `pool_size` or raise "
                "`max_connections`",
            )


def _names_database(database: DatabaseCapacity) -> PathKey:
    if not database.clients:
        return database.path
    first = database.clients[0]
    return (*first.path, "database")


def _partition_findings(topics: Iterable[TopicCapacity]) -> Iterable[Finding]:
    for topic in topics:
        over = [(name, members) for name, members in topic.groups if members > topic.partitions]
        if not over:
            continue
        listed = ", ".join(
            f"{name} ({members} replicas, {members - topic.partitions} idle)"
            for name, members in over
        )
        yield Finding(
            PARTITIONS,
            ("topics", topic.name, "partitions"),
            f"{topic.partitions} partitions, but at the HPA maximum its consumer groups have "
            f"more members than that: {listed}; a member beyond the partitions consumes "
            f"nothing. Raise `partitions` to {topic.most_members} or lower those `scaling.max`",
        )


def _disruption_findings(deployables: Iterable[DeployableCapacity]) -> Iterable[Finding]:
    for item in deployables:
        if item.min_replicas < 1:
            yield Finding(
                DISRUPTION,
                item.scaling_path("min"),
                f"{item.name}: the HorizontalPodAutoscaler's minReplicas must be at least 1 "
                "(0 needs the HPAScaleToZero feature gate); with 0 nothing runs",
            )
        elif item.pdb_blocks_every_eviction:
            yield Finding(
                DISRUPTION,
                item.scaling_path("min"),
                f"{item.name}: its PodDisruptionBudget allows no eviction at "
                f"{item.min_replicas} replicas, so no node drain can finish",
            )
        elif item.min_replicas - item.pdb_max_unavailable < 1:
            yield Finding(
                DISRUPTION,
                item.scaling_path("min"),
                f"{item.name}: at its minimum of {item.min_replicas} replica the disruption "
                f"budget (maxUnavailable {item.pdb_max_unavailable}, so drains never block) "
                "lets a node drain stop every instance; `min: 2` keeps one serving",
            )


def _resource_findings(deployables: Iterable[DeployableCapacity]) -> Iterable[Finding]:
    for item in deployables:
        for resource, target, request, limit in (
            ("cpu", item.cpu_target, item.cpu_request, item.cpu_limit),
            ("memory", item.memory_target, item.memory_request, item.memory_limit),
        ):
            if request <= 0:
                yield Finding(
                    RESOURCES,
                    item.scaling_path(resource),
                    f"{item.name}: a {resource} target of {target}% of a zero {resource} "
                    f"request never scales: give `resources.requests.{resource}`",
                )
            elif limit > 0 and request * target / 100 >= limit:
                yield Finding(
                    RESOURCES,
                    item.scaling_path(resource),
                    f"{item.name}: a {resource} target of {target}% of its request is at or "
                    f"above its limit ({limit / request * 100:.0f}% of the request), which "
                    "the container never exceeds: the autoscaler never adds a replica for it",
                )
