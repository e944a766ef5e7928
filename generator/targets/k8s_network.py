"""Zero-trust NetworkPolicies derived from the spec: deny everything, then allow each edge.

The allowed edges are exactly:
- the ingress controller -> the gateway;
- the gateway -> every upstream it routes to (services, event bus);
- caller -> callee for each call the spec declares;
- every token-verifying process -> the token issuer, for its JWKS (NetworkPolicy works at
  L4, so that is the issuer's port, not its JWKS path);
- each process -> its own database, Kafka when it publishes or consumes, Redis when it
  caches; each migration Job -> its database;
- every pod -> cluster DNS;
- what the operators need to run the data services: the CloudNativePG and Strimzi
  operators -> their pods, the pods of one cluster -> each other, the CloudNativePG
  instances and the Strimzi entity operator -> the Kubernetes API (port 443/6443 on any
  address: the API server's address is the cluster's; narrow it with an overlay patch).
Ingress and egress are both restricted, so each edge appears twice: as the source's egress
and the target's ingress.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import (
    KAFKA_TLS_PORT,
    POSTGRES_PORT,
    REDIS_PORT,
    Deployment,
)
from cloudretail.generator.targets.k8s_data import (
    app_pods,
    entity_operator_pods,
    kafka_pods,
    pooler_pods,
    postgres_pods,
    redis_pods,
)
from cloudretail.generator.targets.k8s_views import (
    Meta,
    NetworkPolicyView,
    Pairs,
    Peer,
    Port,
    Rule,
    component_labels,
)

NAMESPACE_NAME = "kubernetes.io/metadata.name"
# The ingress-nginx controller's pods (their namespace is the spec's `platform.ingress`).
INGRESS_PODS = (("app.kubernetes.io/name", "ingress-nginx"),)
DNS_NAMESPACE = "kube-system"
DNS_PODS = (("k8s-app", "kube-dns"),)
CNPG_NAMESPACE = "cnpg-system"
CNPG_OPERATOR_PODS = (("app.kubernetes.io/name", "cloudnative-pg"),)
CNPG_STATUS_PORT = 8000
STRIMZI_NAMESPACE = "strimzi-system"
STRIMZI_OPERATOR_PODS = (("strimzi.io/kind", "cluster-operator"),)
KAFKA_CONTROL_PORT = 9090
KAFKA_REPLICATION_PORT = 9091
KAFKA_AGENT_PORT = 8443
API_SERVER_PORTS = (443, 6443)
# kube-prometheus-stack's Prometheus pods (k8s_monitoring says what they scrape).
MONITORING_NAMESPACE = "monitoring"
PROMETHEUS_PODS = (("app.kubernetes.io/name", "prometheus"),)
ANY_ADDRESS = "0.0.0.0/0"


@dataclass(frozen=True)
class Row:
    """One allowed connection, for the README's table."""

    source: str
    target: str
    port: str
    why: str


def rows(deployment: Deployment) -> list[Row]:
    """The application's connections, as the policies allow them (infrastructure aside)."""
    gateway = deployment.gateway
    found = [
        Row(
            f"ingress controller ({deployment.platform.ingress.namespace})",
            gateway.name,
            str(gateway.port),
            "external traffic, TLS ends at the Ingress",
        )
    ]
    found += [Row(e.source, e.target, str(e.port), e.why) for e in deployment.edges]
    for process in deployment.processes:
        if process.database:
            database = deployment.database(process.database)
            if database.pooler:
                found.append(
                    Row(
                        process.name, f"pgbouncer {database.pooler}", str(POSTGRES_PORT), "database"
                    )
                )
                found.append(
                    Row(
                        f"pgbouncer {database.pooler}",
                        f"postgres {database.cluster}",
                        str(POSTGRES_PORT),
                        "pooled server connections",
                    )
                )
            else:
                found.append(
                    Row(
                        process.name, f"postgres {database.cluster}", str(POSTGRES_PORT), "database"
                    )
                )
        if process.uses_kafka:
            found.append(Row(process.name, "kafka", str(KAFKA_TLS_PORT), "events"))
        if process.uses_redis:
            found.append(Row(process.name, "redis", str(REDIS_PORT), "cache"))
    for migration in deployment.migrations:
        cluster = deployment.database(migration.database).cluster
        found.append(Row(migration.name, f"postgres {cluster}", str(POSTGRES_PORT), "migrations"))
    return found


def _in(namespace: str, pods: Pairs) -> Peer:
    return Peer(pods=pods, namespace=((NAMESPACE_NAME, namespace),))


def _local(pods: Pairs) -> Peer:
    return Peer(pods=pods)


def _tcp(*ports: int) -> tuple[Port, ...]:
    return tuple(Port(port) for port in ports)


# SMTP submission with STARTTLS, submission over TLS, and relay.
SMTP_PORTS = (587, 465, 25)


def _api_server() -> Rule:
    return Rule((Peer(cidr=ANY_ADDRESS),), _tcp(*API_SERVER_PORTS), "the Kubernetes API")


def _clients(names: tuple[str, ...]) -> tuple[Peer, ...]:
    return tuple(_local(app_pods(name)) for name in sorted(names))


def policies(deployment: Deployment) -> list[NetworkPolicyView]:
    ns = deployment.namespace

    def policy(
        name: str,
        pods: Pairs,
        description: str,
        ingress: list[Rule] | None,
        egress: list[Rule] | None,
    ) -> NetworkPolicyView:
        return NetworkPolicyView(
            meta=Meta(name, ns, component_labels(deployment.name, "network", name=name)),
            pods=pods,
            ingress=None if ingress is None else tuple(ingress),
            egress=None if egress is None else tuple(egress),
            description=description,
        )

    views = [
        policy(
            "default-deny",
            (),
            "Nothing reaches or leaves a pod of this namespace unless another policy allows it.",
            [],
            [],
        ),
        policy(
            "allow-dns",
            (),
            "Every pod may resolve names with the cluster DNS.",
            None,
            [
                Rule(
                    (_in(DNS_NAMESPACE, DNS_PODS),),
                    (Port(53, "UDP"), Port(53, "TCP")),
                    "cluster DNS",
                )
            ],
        ),
    ]

    # The platform's processes.
    gateway = deployment.gateway.name
    for process in deployment.processes:
        ingress: list[Rule] = []
        if process.name == gateway:
            ingress.append(
                Rule(
                    (_in(deployment.platform.ingress.namespace, INGRESS_PODS),),
                    _tcp(process.port),
                    "the ingress controller",
                )
            )
        # Prometheus reads /metrics on the serving port (a NetworkPolicy cannot tell paths
        # apart; the gateway routes only the spec's routes, never /metrics).
        ingress.append(
            Rule(
                (_in(MONITORING_NAMESPACE, PROMETHEUS_PODS),),
                _tcp(process.port),
                f"Prometheus in namespace {MONITORING_NAMESPACE} (scrapes /metrics)",
            )
        )
        callers: dict[int, list[str]] = defaultdict(list)
        reasons: dict[int, set[str]] = defaultdict(set)
        for edge in deployment.edges_to(process.name):
            callers[edge.port].append(edge.source)
            reasons[edge.port].add(edge.why)
        for port, sources in sorted(callers.items()):
            why = " and ".join(sorted(reasons[port]))
            ingress.append(Rule(_clients(tuple(sources)), _tcp(port), f"callers ({why})"))
        egress = [
            Rule((_local(app_pods(edge.target)),), _tcp(edge.port), f"{edge.target} ({edge.why})")
            for edge in deployment.edges_from(process.name)
        ]
        if process.database:
            database = deployment.database(process.database)
            egress.append(
                Rule((_local(postgres_pods(database)),), _tcp(POSTGRES_PORT), "its database")
                if database.pooler is None
                else Rule(
                    (_local(pooler_pods(database)),),
                    _tcp(POSTGRES_PORT),
                    "its database's PgBouncer",
                )
            )
        if process.uses_kafka:
            egress.append(Rule((_local(kafka_pods(deployment)),), _tcp(KAFKA_TLS_PORT), "Kafka"))
        if process.uses_redis:
            egress.append(Rule((_local(redis_pods()),), _tcp(REDIS_PORT), "Redis"))
        if process.sends_mail:
            # The SMTP server is outside the cluster, its address in a Secret: any address,
            # the submission ports only.
            egress.append(
                Rule((Peer(cidr=ANY_ADDRESS),), _tcp(*SMTP_PORTS), "the SMTP server (mail)")
            )
        views.append(
            policy(
                process.name,
                app_pods(process.name),
                f"{process.deployable.title}: who may call it, whom it may reach.",
                ingress,
                egress,
            )
        )

    for migration in deployment.migrations:
        database = deployment.database(migration.database)
        views.append(
            policy(
                migration.name,
                app_pods(migration.name),
                f"Migrations of {migration.title}: its database only.",
                None,
                [Rule((_local(postgres_pods(database)),), _tcp(POSTGRES_PORT), "its database")],
            )
        )

    for database in deployment.databases:
        members = _local(postgres_pods(database))
        clients = [Rule(_clients(database.clients), _tcp(POSTGRES_PORT), "clients")]
        if database.pooler:
            jobs = {migration.name for migration in deployment.migrations}
            pooled = tuple(name for name in database.clients if name not in jobs)
            clients = [
                Rule(
                    _clients(tuple(name for name in database.clients if name not in pooled)),
                    _tcp(POSTGRES_PORT),
                    "clients",
                ),
                Rule((_local(pooler_pods(database)),), _tcp(POSTGRES_PORT), "its PgBouncer"),
            ]
            views.append(
                policy(
                    database.pooler,
                    pooler_pods(database),
                    f"PgBouncer of {database.cluster}: its clients in, PostgreSQL out.",
                    [Rule(_clients(pooled), _tcp(POSTGRES_PORT), "clients")],
                    [Rule((members,), _tcp(POSTGRES_PORT), "its database"), _api_server()],
                )
            )
        views.append(
            policy(
                f"{database.cluster}-postgres",
                postgres_pods(database),
                f"PostgreSQL cluster {database.cluster}: its clients, its operator, its peers.",
                [
                    *clients,
                    Rule(
                        (_in(CNPG_NAMESPACE, CNPG_OPERATOR_PODS), members),
                        _tcp(POSTGRES_PORT, CNPG_STATUS_PORT),
                        "the CloudNativePG operator and the cluster's instances",
                    ),
                ],
                [
                    Rule((members,), _tcp(POSTGRES_PORT, CNPG_STATUS_PORT), "the other instances"),
                    _api_server(),
                ],
            )
        )

    if deployment.kafka_clients:
        nodes = _local(kafka_pods(deployment))
        operator = _in(STRIMZI_NAMESPACE, STRIMZI_OPERATOR_PODS)
        entity = _local(entity_operator_pods(deployment))
        cluster = deployment.kafka_cluster
        views.append(
            policy(
                f"{cluster}-kafka",
                kafka_pods(deployment),
                f"Kafka nodes of {cluster}: clients, the other nodes, the Strimzi operators.",
                [
                    Rule(_clients(deployment.kafka_clients), _tcp(KAFKA_TLS_PORT), "clients"),
                    Rule((nodes, operator), _tcp(KAFKA_CONTROL_PORT), "KRaft control plane"),
                    Rule((nodes, operator, entity), _tcp(KAFKA_REPLICATION_PORT), "replication"),
                    Rule((operator,), _tcp(KAFKA_AGENT_PORT), "Strimzi's Kafka agent"),
                ],
                [Rule((nodes,), _tcp(KAFKA_CONTROL_PORT, KAFKA_REPLICATION_PORT), "other nodes")],
            )
        )
        views.append(
            policy(
                f"{cluster}-entity-operator",
                entity_operator_pods(deployment),
                f"Strimzi's topic operator of {cluster}: the Kafka nodes and the Kubernetes API.",
                None,
                [Rule((nodes,), _tcp(KAFKA_REPLICATION_PORT), "Kafka nodes"), _api_server()],
            )
        )

    if deployment.redis_clients:
        views.append(
            policy(
                "redis",
                redis_pods(),
                "Redis: the processes that cache.",
                [Rule(_clients(deployment.redis_clients), _tcp(REDIS_PORT), "clients")],
                None,
            )
        )
    return views


def files(deployment: Deployment) -> list[OutputFile]:
    return [
        OutputFile(
            f"k8s/base/network/{view.meta.name}.yaml", "k8s/networkpolicy.yaml.j2", {"view": view}
        )
        for view in policies(deployment)
    ]
