"""The whole platform on one machine: `generated/compose.yaml` (+ the database init script).

PostgreSQL 15 (one server, a database per owner), Redis 7, a single-node KRaft Kafka with
the spec's topics, a migration one-shot per database owner, and the seven deployables built
from their Dockerfiles. Every process waits for what it needs (healthy servers, completed
migrations and topics); services that call each other do not wait for each other (calls
may be cyclic, e.g. order <-> payment) and retry instead.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import (
    KAFKA_PORT,
    POSTGRES_PORT,
    REDIS_HOST,
    REDIS_PLAIN_URL,
    UID,
    Deployment,
    Process,
    Setting,
    build,
)
from cloudretail.generator.targets.k8s_data import KAFKA_VERSION

POSTGRES_IMAGE = "postgres:15.8-bookworm"
REDIS_IMAGE = "redis:7.2.5-alpine"
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"  # the Kafka the cluster runs
# Services that send mail deliver to a local mail catcher; its web page lists the mails.
MAIL_IMAGE = "axllent/mailpit:v1.27"
MAIL_HOST = "mailpit"
MAIL_SMTP_PORT = 1025
MAIL_WEB_PORT = 8025
KAFKA_HOST = "kafka"
# Local runs use the runtime's development mode, where the placeholder secrets are accepted.
PLACEHOLDER = "changethis"
# The key ring compose runs with unless ENCRYPTION_KEYS is set: runtime/crypto.py's
# DEVELOPMENT_KEYS (32 zero bytes), which production refuses.
DEVELOPMENT_KEYS = "dev:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
LOCAL_TAG = "local"


@dataclass(frozen=True)
class Dependency:
    name: str
    condition: str  # service_healthy | service_completed_successfully


@dataclass(frozen=True)
class ComposeService:
    name: str
    image: str
    dockerfile: str
    command: tuple[str, ...]
    environment: tuple[Setting, ...]
    depends_on: tuple[Dependency, ...]
    healthcheck: tuple[str, ...]
    published_port: int | None
    one_shot: bool


@dataclass(frozen=True)
class ComposeView:
    name: str
    postgres_image: str
    redis_image: str
    kafka_image: str
    kafka_cluster_id: str
    placeholder: str
    uid: int
    databases: tuple[str, ...]
    topic_script: tuple[str, ...]  # shell lines that create the topics
    services: tuple[ComposeService, ...]
    gateway_port: int
    mail_image: str | None  # None: no service sends mail
    mail_web_port: int


def cluster_id(name: str) -> str:
    """A stable KRaft cluster id (a base64url UUID) for the platform's local Kafka."""
    digest = hashlib.sha256(f"{name}-kafka".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _database_url(database: str) -> str:
    return f"postgresql://postgres:${{POSTGRES_PASSWORD:-{PLACEHOLDER}}}@postgres:{POSTGRES_PORT}/{database}"


def _secrets(database: str | None, *, encrypts: bool = False) -> tuple[Setting, ...]:
    found = [Setting("SERVICE_TOKEN", f"${{SERVICE_TOKEN:-{PLACEHOLDER}}}")]
    if database:
        found.insert(0, Setting("DATABASE_URL", _database_url(database)))
    if encrypts:
        found.append(Setting("ENCRYPTION_KEYS", f"${{ENCRYPTION_KEYS:-{DEVELOPMENT_KEYS}}}"))
    return tuple(found)


def _environment(deployment: Deployment, process: Process) -> tuple[Setting, ...]:
    settings = {
        setting.name: setting.value
        for setting in deployment.settings(process, f"{KAFKA_HOST}:{KAFKA_PORT}", REDIS_PLAIN_URL)
    }
    settings["ENVIRONMENT"] = "development"
    settings.pop("JWT_PRIVATE_KEY_FILE", None)
    if process.signs_tokens:
        # Development makes its signing key on first start, in a writable place.
        settings["CLOUDRETAIL_DATA_DIR"] = "/tmp/cloudretail"
    for secret in _secrets(process.database, encrypts=process.encrypts):
        settings[secret.name] = secret.value
    if process.sends_mail:
        settings["SMTP_URL"] = f"smtp://{MAIL_HOST}:{MAIL_SMTP_PORT}"
    return tuple(Setting(name, settings[name]) for name in sorted(settings))


def view(deployment: Deployment) -> ComposeView:
    migration_of = {migration.process: migration for migration in deployment.migrations}
    services: list[ComposeService] = []
    for migration in deployment.migrations:
        process = deployment.process(migration.process)
        services.append(
            ComposeService(
                name=migration.name,
                image=f"{process.image}:{LOCAL_TAG}",
                dockerfile=process.dockerfile,
                command=migration.command,
                environment=tuple(
                    sorted(
                        (Setting("ENVIRONMENT", "development"), *_secrets(migration.database)),
                        key=lambda setting: setting.name,
                    )
                ),
                depends_on=(Dependency("postgres", "service_healthy"),),
                healthcheck=(),
                published_port=None,
                one_shot=True,
            )
        )
    gateway = deployment.gateway.name
    for process in deployment.processes:
        needs: list[Dependency] = []
        if process.name in migration_of:
            needs.append(
                Dependency(migration_of[process.name].name, "service_completed_successfully")
            )
        if process.database:
            needs.append(Dependency("postgres", "service_healthy"))
        if process.uses_kafka:
            needs.append(Dependency("kafka-topics", "service_completed_successfully"))
        if process.uses_redis:
            needs.append(Dependency(REDIS_HOST, "service_healthy"))
        if process.sends_mail:
            needs.append(Dependency(MAIL_HOST, "service_healthy"))
        if process.name == gateway:
            needs += [
                Dependency(edge.target, "service_healthy")
                for edge in deployment.edges_from(gateway)
            ]
        services.append(
            ComposeService(
                name=process.name,
                image=f"{process.image}:{LOCAL_TAG}",
                dockerfile=process.dockerfile,
                command=process.command,
                environment=_environment(deployment, process),
                depends_on=tuple(sorted(set(needs), key=lambda d: d.name)),
                healthcheck=(
                    "CMD",
                    "python",
                    "-c",
                    "import urllib.request; urllib.request.urlopen("
                    f"'http://127.0.0.1:{process.port}{process.deployable.readiness.path}', "
                    "timeout=2)",
                ),
                published_port=process.port if process.name == gateway else None,
                one_shot=False,
            )
        )
    script = tuple(
        f"/opt/kafka/bin/kafka-topics.sh --bootstrap-server {KAFKA_HOST}:{KAFKA_PORT} --create "
        f"--if-not-exists --topic {name} --partitions {topic.partitions} --replication-factor 1 "
        f"--config cleanup.policy={topic.cleanup_policy} --config retention.ms={topic.retention_ms}"
        for topic in deployment.platform.topics
        for name in (topic.name, topic.dead_letter)
    )
    return ComposeView(
        name=deployment.name,
        postgres_image=POSTGRES_IMAGE,
        redis_image=REDIS_IMAGE,
        kafka_image=KAFKA_IMAGE,
        kafka_cluster_id=cluster_id(deployment.name),
        placeholder=PLACEHOLDER,
        uid=UID,
        databases=tuple(database.name for database in deployment.databases),
        topic_script=script,
        services=tuple(services),
        gateway_port=deployment.gateway.port,
        mail_image=MAIL_IMAGE if deployment.mail_senders else None,
        mail_web_port=MAIL_WEB_PORT,
    )


def files(platform: Platform) -> list[OutputFile]:
    compose = view(build(platform))
    return [
        OutputFile("compose.yaml", "compose/compose.yaml.j2", {"view": compose}),
        OutputFile("compose/postgres-init.sql", "compose/postgres-init.sql.j2", {"view": compose}),
    ]
