"""The platform's data services as declared resources: Strimzi Kafka, CloudNativePG, Redis.

The operators (Strimzi, CloudNativePG) run the clusters; these files say what to run.
Redis is a plain Deployment speaking TLS only, with a certificate cert-manager issues.
The pod labels the operators put on their pods are here too, for the network policies.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.model import Resources
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import (
    CA_FILE,
    KAFKA_TLS_PORT,
    REDIS_HOST,
    REDIS_PORT,
    UID,
    Database,
    Deployment,
)
from cloudretail.generator.targets.k8s_views import (
    NAME,
    Meta,
    Pairs,
    ServiceAccountView,
    ServiceView,
    Skip,
    component_labels,
    pairs,
    skip_annotations,
)

# The operators' APIs the manifests are written for, and the Kafka that Strimzi runs: a
# version its release supports (Strimzi 1.2.0 runs Kafka 4.2.0-4.3.1), pinned with it.
STRIMZI_VERSION = "1.2.0"
CNPG_VERSION = "1.30"
KAFKA_VERSION = "4.3.1"
KAFKA_METADATA_VERSION = "4.3-IV0"
KAFKA_POOL = "dual-role"
KAFKA_MIN_NODES = 3
KAFKA_STORAGE = "20Gi"
KAFKA_RESOURCES = Resources("500m", "2Gi", "2", "4Gi")
POSTGRES_IMAGE = "ghcr.io/cloudnative-pg/postgresql:15.8"
POSTGRES_INSTANCES = 3
POSTGRES_STORAGE = "10Gi"
POSTGRES_RESOURCES = Resources("250m", "512Mi", "1", "1Gi")
REDIS_IMAGE = "redis:7.2.5-alpine"
REDIS_RESOURCES = Resources("100m", "128Mi", "500m", "512Mi")
REDIS_MAX_MEMORY = "384mb"
REDIS_DATA_SIZE = "64Mi"
# Redis's certificate, key and the issuer's CA, from cert-manager's Secret.
REDIS_TLS_DIR = "/etc/redis/tls"
REDIS_CA_DIR = "/etc/redis/ca"
REDIS_TLS_PROTOCOLS = "TLSv1.3"
# Redis reads its certificate files at start and when told to: a `CONFIG SET` of a tls-*-file
# re-reads the file even when the path is unchanged. cert-manager renews the certificate
# (by default a third of its life before it ends) and the kubelet updates the mounted files;
# the tls-reload container then tells Redis, every this many seconds. It also bounds how long
# Redis may serve a certificate its clients' CA file no longer vouches for.
REDIS_RELOAD_SECONDS = 60
REDIS_RELOAD_RESOURCES = Resources("10m", "16Mi", "100m", "32Mi")
CERT_MANAGER_GROUP = "cert-manager.io"
CLUSTER_DOMAIN = "cluster.local"
# Kafka settings that count replicas (a single-node cluster sets each to 1).
REPLICATION_SETTINGS = (
    "default.replication.factor",
    "min.insync.replicas",
    "offsets.topic.replication.factor",
    "transaction.state.log.min.isr",
    "transaction.state.log.replication.factor",
)

_IMAGE_DIGEST = Skip(
    "CKV_K8S_43",
    "pinned by version tag; digests change per registry mirror and are pinned at deploy time",
)


# -- the labels the operators give their pods ---------------------------------------------


def postgres_pods(database: Database) -> Pairs:
    """Every pod of a CloudNativePG cluster (instances and its bootstrap jobs)."""
    return (("cnpg.io/cluster", database.cluster),)


def pooler_pods(database: Database) -> Pairs:
    """The PgBouncer pods of a database's CloudNativePG Pooler."""
    return (("cnpg.io/poolerName", database.pooler or ""),)


def kafka_pods(deployment: Deployment) -> Pairs:
    """Strimzi's selector labels of the Kafka nodes (controllers and brokers)."""
    cluster = deployment.kafka_cluster
    return pairs(
        {
            "strimzi.io/cluster": cluster,
            "strimzi.io/kind": "Kafka",
            "strimzi.io/name": f"{cluster}-kafka",
        }
    )


def entity_operator_pods(deployment: Deployment) -> Pairs:
    return (("strimzi.io/name", f"{deployment.kafka_cluster}-entity-operator"),)


def redis_pods() -> Pairs:
    return ((NAME, REDIS_HOST),)


def app_pods(name: str) -> Pairs:
    """The selector of one of the platform's own workloads (deployable or migration Job)."""
    return ((NAME, name),)


# -- views ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KafkaView:
    meta: Meta
    pool: str
    version: str
    metadata_version: str
    port: int
    clients: tuple[Pairs, ...]
    config: tuple[tuple[str, int | bool | str], ...]


@dataclass(frozen=True)
class NodePoolView:
    meta: Meta
    cluster: str
    replicas: int
    storage: str
    resources: Resources


@dataclass(frozen=True)
class TopicView:
    meta: Meta
    description: str
    topic: str
    partitions: int
    replicas: int
    retention_ms: int
    cleanup_policy: str
    min_insync: int


@dataclass(frozen=True)
class PostgresView:
    meta: Meta
    users: str
    instances: int
    image: str
    database: str
    owner: str
    storage: str
    resources: Resources
    max_connections: int
    # The names the server certificate must also carry: its PgBouncer's Service, which the
    # deployables verify (verify-full) when they connect through it.
    alt_names: tuple[str, ...]


@dataclass(frozen=True)
class PoolerView:
    meta: Meta
    database: str
    cluster: str
    instances: int
    pool_mode: str
    parameters: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RedisView:
    meta: Meta
    selector: Pairs
    pod_labels: Pairs
    service_account: str
    run_as: int
    image: str
    port: int
    command: tuple[str, ...]
    probe: tuple[str, ...]  # a TLS PING, the server verified against the issuer's CA
    reload_probe: tuple[str, ...]
    reload_script: tuple[str, ...]  # lines of the tls-reload container's shell loop
    reload_resources: Resources
    tls_secret: str
    tls_dir: str
    tls_files: tuple[str, ...]
    ca_dir: str
    ca_file: str
    data_size: str
    resources: Resources


@dataclass(frozen=True)
class CertificateView:
    meta: Meta
    secret: str
    secret_labels: Pairs
    issuer: str
    issuer_kind: str
    issuer_group: str
    dns_names: tuple[str, ...]


def kafka_nodes(deployment: Deployment) -> int:
    return max([KAFKA_MIN_NODES, *(topic.replication for topic in deployment.platform.topics)])


def kafka_files(deployment: Deployment) -> list[OutputFile]:
    ns = deployment.namespace
    cluster = deployment.kafka_cluster
    strimzi = {"strimzi.io/cluster": cluster}

    def labels(name: str) -> Pairs:
        """A node pool's or topic's labels: Strimzi's `strimzi.io/cluster` says whose."""
        return component_labels(deployment.name, "kafka", name=name, extra=strimzi)

    nodes = kafka_nodes(deployment)
    factor = min(KAFKA_MIN_NODES, nodes)
    kafka = KafkaView(
        meta=Meta(cluster, ns, component_labels(deployment.name, "kafka", name=cluster)),
        pool=KAFKA_POOL,
        version=KAFKA_VERSION,
        metadata_version=KAFKA_METADATA_VERSION,
        port=KAFKA_TLS_PORT,
        clients=tuple(app_pods(name) for name in sorted(deployment.kafka_clients)),
        config=(
            ("auto.create.topics.enable", False),
            *(
                (key, max(1, factor - 1) if "min" in key else factor)
                for key in REPLICATION_SETTINGS
            ),
        ),
    )
    files = [
        OutputFile("k8s/base/kafka/kafka.yaml", "k8s/data/kafka.yaml.j2", {"view": kafka}),
        OutputFile(
            "k8s/base/kafka/nodepool.yaml",
            "k8s/data/nodepool.yaml.j2",
            {
                "view": NodePoolView(
                    Meta(KAFKA_POOL, ns, labels(KAFKA_POOL)),
                    cluster,
                    nodes,
                    KAFKA_STORAGE,
                    KAFKA_RESOURCES,
                )
            },
        ),
    ]
    for topic in deployment.platform.topics:
        for name, description in (
            (topic.name, topic.description or f"Events of {', '.join(topic.events)}"),
            (topic.dead_letter, f"Dead letters of {topic.name}: events its consumers gave up on"),
        ):
            resource = name.replace(".", "-")
            view = TopicView(
                meta=Meta(resource, ns, labels(resource)),
                description=description,
                topic=name,
                partitions=topic.partitions,
                replicas=topic.replication,
                retention_ms=topic.retention_ms,
                cleanup_policy=topic.cleanup_policy,
                min_insync=max(1, topic.replication - 1),
            )
            files.append(
                OutputFile(
                    f"k8s/base/kafka/topics/{view.meta.name}.yaml",
                    "k8s/data/topic.yaml.j2",
                    {"view": view},
                )
            )
    return files


def postgres_files(deployment: Deployment) -> list[OutputFile]:
    files = []
    for database in deployment.databases:
        view = PostgresView(
            meta=Meta(
                database.cluster,
                deployment.namespace,
                component_labels(deployment.name, "database", name=database.cluster),
            ),
            users=", ".join(database.clients),
            instances=POSTGRES_INSTANCES,
            image=POSTGRES_IMAGE,
            database=database.name,
            owner=database.name,
            storage=POSTGRES_STORAGE,
            resources=POSTGRES_RESOURCES,
            max_connections=database.settings.max_connections,
            alt_names=_service_names(deployment, database.pooler) if database.pooler else (),
        )
        files.append(
            OutputFile(
                f"k8s/base/postgres/{database.cluster}.yaml",
                "k8s/data/postgres.yaml.j2",
                {"view": view},
            )
        )
        pooler = database.settings.pooler
        if database.pooler is None or pooler is None:
            continue
        # Why PgBouncer rather than a max_connections large enough for every replica: at the
        # HPA maximum a database's clients hold hundreds of connections (15 replicas x 15),
        # each a PostgreSQL backend process of several MiB, nearly all idle between
        # transactions; raising max_connections would grow the database's memory with the
        # replicas. In transaction mode a few server connections serve every replica, and
        # generator/capacity.py checks both sides (clients against max_client_conn, pools
        # against max_connections). The services are set up for it (DATABASE_POOLER:
        # runtime/db.py's transaction_pooling_args); their transaction-scoped advisory lock
        # (the outbox relay's) holds under transaction pooling, a session's would not.
        pooler_view = PoolerView(
            meta=Meta(
                database.pooler,
                deployment.namespace,
                component_labels(deployment.name, "database", name=database.pooler),
            ),
            database=database.name,
            cluster=database.cluster,
            instances=pooler.instances,
            pool_mode="transaction",
            parameters=(
                ("default_pool_size", str(pooler.pool_size)),
                ("max_client_conn", str(pooler.max_client_connections)),
            ),
        )
        files.append(
            OutputFile(
                f"k8s/base/postgres/{database.pooler}.yaml",
                "k8s/data/pooler.yaml.j2",
                {"view": pooler_view},
            )
        )
    return files


def _service_names(deployment: Deployment, service: str) -> tuple[str, ...]:
    """The names a Service of the namespace is reached by."""
    qualified = f"{service}.{deployment.namespace}"
    return (service, qualified, f"{qualified}.svc", f"{qualified}.svc.{CLUSTER_DOMAIN}")


def redis_dns_names(deployment: Deployment) -> tuple[str, ...]:
    """The names clients reach Redis's Service by, which its certificate must carry."""
    service = f"{REDIS_HOST}.{deployment.namespace}"
    return (REDIS_HOST, service, f"{service}.svc", f"{service}.svc.{CLUSTER_DOMAIN}")


def _redis_cli(ca_file: str, *command: str) -> tuple[str, ...]:
    # redis-cli verifies the chain against the CA, not the host name: 127.0.0.1 will do.
    return ("redis-cli", "--tls", "--cacert", ca_file, "-p", str(REDIS_PORT), *command)


def _redis_command(max_memory: str) -> tuple[str, ...]:
    tls = {
        "--tls-cert-file": f"{REDIS_TLS_DIR}/tls.crt",
        "--tls-key-file": f"{REDIS_TLS_DIR}/tls.key",
        "--tls-ca-cert-file": f"{REDIS_TLS_DIR}/{CA_FILE}",
    }
    return (
        "redis-server",
        # TLS only: no plaintext port.
        "--port",
        "0",
        "--tls-port",
        str(REDIS_PORT),
        *(part for option, path in tls.items() for part in (option, path)),
        # Clients prove nothing with a certificate: the NetworkPolicy decides who connects.
        "--tls-auth-clients",
        "no",
        "--tls-protocols",
        REDIS_TLS_PROTOCOLS,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/data",
        "--maxmemory",
        max_memory,
        "--maxmemory-policy",
        "allkeys-lru",
    )


def _reload_script() -> tuple[str, ...]:
    """The tls-reload container's loop: every REDIS_RELOAD_SECONDS, Redis re-reads its files."""
    files = " ".join(
        f"tls-{kind}-file {REDIS_TLS_DIR}/{name}"
        for kind, name in (("cert", "tls.crt"), ("key", "tls.key"), ("ca-cert", CA_FILE))
    )
    cli = " ".join(_redis_cli(f"{REDIS_CA_DIR}/{CA_FILE}", "CONFIG", "SET"))
    return (
        "trap 'exit 0' TERM INT",
        f"while sleep {REDIS_RELOAD_SECONDS} & wait $!; do",
        f'  reply="$({cli} {files} 2>&1)"',
        '  [ "$reply" = OK ] || echo "redis did not reload its certificate: $reply" >&2',
        "done",
    )


def redis_files(deployment: Deployment) -> list[OutputFile]:
    if not deployment.redis_clients:
        return []
    ns = deployment.namespace
    labels = component_labels(deployment.name, "cache", name=REDIS_HOST)
    view = RedisView(
        meta=Meta(REDIS_HOST, ns, labels, skip_annotations([_IMAGE_DIGEST])),
        selector=redis_pods(),
        pod_labels=labels,
        service_account=REDIS_HOST,
        run_as=UID,
        image=REDIS_IMAGE,
        port=REDIS_PORT,
        command=_redis_command(REDIS_MAX_MEMORY),
        probe=_redis_cli(f"{REDIS_TLS_DIR}/{CA_FILE}", "ping"),
        reload_probe=_redis_cli(f"{REDIS_CA_DIR}/{CA_FILE}", "ping"),
        reload_script=_reload_script(),
        reload_resources=REDIS_RELOAD_RESOURCES,
        tls_secret=deployment.redis_tls_secret,
        tls_dir=REDIS_TLS_DIR,
        tls_files=("tls.crt", "tls.key", CA_FILE),
        ca_dir=REDIS_CA_DIR,
        ca_file=CA_FILE,
        data_size=REDIS_DATA_SIZE,
        resources=REDIS_RESOURCES,
    )
    issuer = deployment.platform.issuer
    certificate = CertificateView(
        meta=Meta(REDIS_HOST, ns, labels),
        secret=deployment.redis_tls_secret,
        secret_labels=labels,
        issuer=issuer.name,
        issuer_kind=issuer.kind,
        issuer_group=CERT_MANAGER_GROUP,
        dns_names=redis_dns_names(deployment),
    )
    return [
        OutputFile(
            "k8s/base/redis/serviceaccount.yaml",
            "k8s/serviceaccount.yaml.j2",
            {"view": ServiceAccountView(Meta(REDIS_HOST, ns, labels))},
        ),
        OutputFile(
            "k8s/base/redis/certificate.yaml",
            "k8s/data/certificate.yaml.j2",
            {"view": certificate},
        ),
        OutputFile("k8s/base/redis/deployment.yaml", "k8s/data/redis.yaml.j2", {"view": view}),
        OutputFile(
            "k8s/base/redis/service.yaml",
            "k8s/service.yaml.j2",
            {
                "view": ServiceView(
                    Meta(REDIS_HOST, ns, labels), redis_pods(), REDIS_PORT, port_name="redis"
                )
            },
        ),
    ]


def files(deployment: Deployment) -> list[OutputFile]:
    return [*kafka_files(deployment), *postgres_files(deployment), *redis_files(deployment)]
