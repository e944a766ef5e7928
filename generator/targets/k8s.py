"""Kubernetes manifests: a kustomize base (`generated/k8s/base`) and overlays `dev` and `prod`.

Per deployable: ServiceAccount, ConfigMap, Deployment, ClusterIP Service, HPA, PDB (and the
gateway's Ingress); per database owner a migration Job; the network policies, the data
services, the secrets the manifests reference (never their values) and the rollout lists
the workflows read (`generated/k8s/deployables.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudretail.generator.capacity import PDB_MAX_UNAVAILABLE
from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets import deploy as deploy_constants
from cloudretail.generator.targets import (
    k8s_data,
    k8s_ingress,
    k8s_monitoring,
    k8s_network,
    k8s_vault,
    k8s_views,
)
from cloudretail.generator.targets.deploy import (
    CA_FILE,
    JWT_KEY_DIR,
    JWT_KEY_FILE,
    KAFKA_CA_DIR,
    POSTGRES_CA_DIR,
    REDIS_CA_DIR,
    UID,
    Deployment,
    Migration,
    Process,
    Setting,
    build,
)
from cloudretail.generator.targets.k8s_views import (
    COMPONENT,
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    NAME,
    PART_OF,
    PHASE,
    VERSION,
    ConfigMapView,
    Container,
    DeploymentView,
    HpaView,
    IngressView,
    JobView,
    Meta,
    NamespaceView,
    Pairs,
    PdbView,
    Pod,
    SecretEnv,
    SecretFile,
    ServiceAccountView,
    ServiceView,
    Skip,
    kustomization,
    pairs,
    skip_annotations,
)

BASE = "k8s/base"
ENCRYPTION_KEYS = "ENCRYPTION_KEYS"
SMTP_URL = "SMTP_URL"
# Wait this long before shutting down, so endpoints and the gateway stop sending first;
# there is no shell in the image guaranteed, so the pause is Python's.
PRE_STOP = ("python", "-c", "import time; time.sleep(5)")
GRACE_SECONDS = 30  # pre-stop pause + the server's graceful drain, with room to spare
SPREAD_KEYS = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
TMP_SIZE = "64Mi"
# The tag of the main branch's newest images; the overlays set tags with kustomize `images`
# (the deploy workflow pins the digests of the images it built). The base carries it too, so
# that the base alone is deployable and scans clean.
DEFAULT_TAG = "main"
JOB_BACKOFF = 4
JOB_DEADLINE_SECONDS = 900
JOB_TTL_SECONDS = 86_400

_SKIPS = (
    Skip(
        "CKV_K8S_43",
        "tags are set by kustomize images; the deploy workflow pins each image's digest",
    ),
    Skip(
        "CKV_K8S_35",
        "the runtime reads 12-factor settings from env; values come from Secret references",
    ),
)


@dataclass(frozen=True)
class ImageTag:
    name: str
    tag: str


@dataclass(frozen=True)
class OverlayView:
    name: str
    namespace: str
    images: tuple[ImageTag, ...]
    instance_labels: Pairs  # on every object and pod template, never in a selector
    version_labels: Pairs  # on every object, not on pod templates
    hpas: tuple[str, ...]
    kafka_replication_settings: tuple[str, ...]
    resources: tuple[str, ...]  # kustomizations it builds on


@dataclass(frozen=True)
class Secret:
    """A Secret the manifests reference; secrets.example.env says how to make it."""

    name: str
    keys: tuple[str, ...]
    users: tuple[str, ...]
    kind: str  # env (from secrets.env), file, tls, operator (made by `operator`)
    purpose: str
    how: tuple[str, ...]  # commands that make it
    operator: str = "CloudNativePG"

    @property
    def made_by(self) -> str:
        return self.operator if self.kind == "operator" else "you"


def shared_secret(deployment: Deployment) -> str:
    return f"{deployment.name}-secrets"


def jwt_secret(process: Process) -> str:
    return f"{process.name}-jwt"


def encryption_secret(deployment: Deployment) -> str:
    return f"{deployment.name}-encryption"


def smtp_secret(deployment: Deployment) -> str:
    return f"{deployment.name}-smtp"


def tls_secret(deployment: Deployment) -> str:
    return f"{deployment.gateway.name}-tls"


def _secret_env(
    deployment: Deployment,
    database_name: str | None,
    *,
    encrypts: bool = False,
    sends_mail: bool = False,
) -> tuple[SecretEnv, ...]:
    refs = [SecretEnv("SERVICE_TOKEN", shared_secret(deployment), "SERVICE_TOKEN")]
    if database_name:
        database = deployment.database(database_name)
        refs.insert(0, SecretEnv("DATABASE_URL", database.app_secret, "uri"))
    if encrypts:
        refs.append(SecretEnv(ENCRYPTION_KEYS, encryption_secret(deployment), ENCRYPTION_KEYS))
    if sends_mail:
        refs.append(SecretEnv(SMTP_URL, smtp_secret(deployment), SMTP_URL))
    return tuple(refs)


def _ca_files(
    deployment: Deployment, database_name: str | None, kafka: bool, redis: bool = False
) -> tuple[SecretFile, ...]:
    """The CA certificates a process verifies TLS with, mounted as files: the operators'
    (Strimzi, CloudNativePG) and the issuer's of Redis's certificate (cert-manager)."""
    found = []
    if database_name:
        database = deployment.database(database_name)
        found.append(SecretFile("postgres-ca", database.ca_secret, CA_FILE, POSTGRES_CA_DIR))
    if kafka:
        found.append(SecretFile("kafka-ca", deployment.kafka_ca_secret, CA_FILE, KAFKA_CA_DIR))
    if redis:
        found.append(SecretFile("redis-ca", deployment.redis_tls_secret, CA_FILE, REDIS_CA_DIR))
    return tuple(found)


def _tls_settings(
    database_name: str | None, kafka: bool, redis: bool = False
) -> tuple[Setting, ...]:
    """Where the runtime finds those CAs: with them it speaks TLS only, verify-full."""
    found = []
    if database_name:
        found.append(Setting("DATABASE_CA_FILE", f"{POSTGRES_CA_DIR}/{CA_FILE}"))
    if kafka:
        found.append(Setting("KAFKA_CA_FILE", f"{KAFKA_CA_DIR}/{CA_FILE}"))
    if redis:
        found.append(Setting("REDIS_CA_FILE", f"{REDIS_CA_DIR}/{CA_FILE}"))
    return tuple(found)


def _pooler_settings(deployment: Deployment, database_name: str | None) -> tuple[Setting, ...]:
    """A deployable whose database has a PgBouncer connects through it (migration Jobs do
    not: their one connection goes straight to the cluster)."""
    if not database_name:
        return ()
    pooler = deployment.database(database_name).pooler
    return (Setting("DATABASE_POOLER", pooler),) if pooler else ()


def app_labels(deployment: Deployment, process: Process) -> Pairs:
    return pairs(
        {NAME: process.name, COMPONENT: process.kind, PART_OF: deployment.name, PHASE: "app"}
    )


def migration_labels(deployment: Deployment, migration: Migration) -> Pairs:
    return pairs(
        {NAME: migration.name, COMPONENT: "migration", PART_OF: deployment.name, PHASE: "migrate"}
    )


def instance_labels(deployment: Deployment, overlay: str) -> Pairs:
    """What an overlay adds to every object and pod: which deployment of the platform it is
    (`<platform>-<overlay>`: dev and prod are two instances of it) and what renders it."""
    return pairs({INSTANCE: f"{deployment.name}-{overlay}", MANAGED_BY: MANAGER})


def version_labels(tag: str) -> Pairs:
    """The version that runs: the images' tag the overlay sets (the deploy workflow replaces
    it with the commit whose image digests it pins). Not on pod templates: a new version
    would restart pods whose image did not change (Redis)."""
    return ((VERSION, tag),)


def migrations_account(deployment: Deployment) -> str:
    return f"{deployment.name}-migrations"


def _app_files(deployment: Deployment, process: Process) -> list[OutputFile]:
    ns = deployment.namespace
    labels = app_labels(deployment, process)
    selector = ((NAME, process.name),)
    deployable = process.deployable
    folder = f"{BASE}/apps/{process.name}"
    container = Container(
        name=process.name,
        image=f"{process.image}:{DEFAULT_TAG}",
        command=process.command,
        port=process.port,
        config_map=process.name,
        env=(),
        secret_env=_secret_env(
            deployment,
            process.database,
            encrypts=process.encrypts,
            sends_mail=process.sends_mail,
        ),
        secret_files=(
            (SecretFile("jwt", jwt_secret(process), JWT_KEY_FILE, JWT_KEY_DIR),)
            if process.signs_tokens
            else ()
        )
        + _ca_files(deployment, process.database, process.uses_kafka, process.uses_redis),
        resources=deployable.resources,
        liveness=deployable.liveness,
        readiness=deployable.readiness,
        pre_stop=PRE_STOP,
    )
    pod = Pod(
        labels=labels,
        service_account=process.name,
        run_as=UID,
        containers=(container,),
        grace_seconds=GRACE_SECONDS,
        restart_policy="Always",
        spread=selector,
        spread_keys=SPREAD_KEYS,
        tmp_size=TMP_SIZE,
    )
    meta = Meta(process.name, ns, labels)
    scaling = deployable.scaling
    views: list[tuple[str, object]] = [
        ("serviceaccount", ServiceAccountView(meta)),
        (
            "configmap",
            ConfigMapView(
                meta,
                tuple(
                    sorted(
                        (
                            *deployment.settings(
                                process, deployment.kafka_bootstrap, deployment.redis_url
                            ),
                            *_tls_settings(
                                process.database, process.uses_kafka, process.uses_redis
                            ),
                            *_pooler_settings(deployment, process.database),
                        ),
                        key=lambda setting: setting.name,
                    )
                ),
            ),
        ),
        (
            "deployment",
            DeploymentView(
                Meta(process.name, ns, labels, skip_annotations(_SKIPS)),
                scaling.min,
                selector,
                pod,
            ),
        ),
        ("service", ServiceView(meta, selector, process.port)),
        (
            "hpa",
            HpaView(meta, process.name, scaling.min, scaling.max, scaling.cpu, scaling.memory),
        ),
        ("pdb", PdbView(meta, selector, PDB_MAX_UNAVAILABLE)),
    ]
    if process.kind == "gateway":
        views.append(
            (
                "ingress",
                IngressView(
                    Meta(process.name, ns, labels, k8s_ingress.ingress_annotations()),
                    deployment.platform.ingress.class_name,
                    deployment.platform.domain,
                    tls_secret(deployment),
                    process.name,
                    process.port,
                ),
            )
        )
    return [
        OutputFile(f"{folder}/{name}.yaml", f"k8s/{name}.yaml.j2", {"view": view})
        for name, view in views
    ]


def _migration_files(deployment: Deployment) -> list[OutputFile]:
    if not deployment.migrations:
        return []
    ns = deployment.namespace
    account = migrations_account(deployment)
    files = [
        OutputFile(
            f"{BASE}/migrations/serviceaccount.yaml",
            "k8s/serviceaccount.yaml.j2",
            {
                "view": ServiceAccountView(
                    Meta(
                        account,
                        ns,
                        pairs(
                            {
                                NAME: account,
                                COMPONENT: "migration",
                                PART_OF: deployment.name,
                                PHASE: "migrate",
                            }
                        ),
                    )
                )
            },
        )
    ]
    for migration in deployment.migrations:
        process = deployment.process(migration.process)
        labels = migration_labels(deployment, migration)
        container = Container(
            name="migrate",
            image=f"{process.image}:{DEFAULT_TAG}",
            command=migration.command,
            port=None,
            config_map=None,
            env=(
                *_tls_settings(migration.database, kafka=False),
                Setting("ENVIRONMENT", "production"),
                Setting("LOG_LEVEL", "INFO"),
            ),
            secret_env=_secret_env(deployment, migration.database),
            secret_files=_ca_files(deployment, migration.database, kafka=False),
            resources=process.deployable.resources,
            liveness=None,
            readiness=None,
            pre_stop=(),
        )
        pod = Pod(
            labels=labels,
            service_account=account,
            run_as=UID,
            containers=(container,),
            grace_seconds=GRACE_SECONDS,
            restart_policy="Never",
            spread=(),
            spread_keys=(),
            tmp_size=TMP_SIZE,
        )
        view = JobView(
            Meta(migration.name, ns, labels, skip_annotations(_SKIPS)),
            JOB_BACKOFF,
            JOB_DEADLINE_SECONDS,
            JOB_TTL_SECONDS,
            pod,
        )
        files.append(
            OutputFile(
                f"{BASE}/migrations/{migration.name}.yaml", "k8s/job.yaml.j2", {"view": view}
            )
        )
    return files


def secrets(deployment: Deployment) -> tuple[Secret, ...]:
    ns = deployment.namespace
    create = f"kubectl -n {ns} create secret"
    shared = shared_secret(deployment)
    found = [
        Secret(
            shared,
            ("SERVICE_TOKEN",),
            tuple(process.name for process in deployment.processes),
            "env",
            "the token of `auth: service` routes between services (e.g. `openssl rand -hex 32`)",
            (f"{create} generic {shared} --from-env-file=secrets.env",),
        )
    ]
    for process in deployment.processes:
        if process.signs_tokens:
            name = jwt_secret(process)
            found.append(
                Secret(
                    name,
                    (JWT_KEY_FILE,),
                    (process.name,),
                    "file",
                    f"the RS256 private key {process.name} signs tokens with",
                    (
                        f"openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 "
                        f"-out {JWT_KEY_FILE}",
                        f"{create} generic {name} --from-file={JWT_KEY_FILE}",
                    ),
                )
            )
    encrypting = tuple(process.name for process in deployment.processes if process.encrypts)
    if encrypting:
        name = encryption_secret(deployment)
        found.append(
            Secret(
                name,
                (ENCRYPTION_KEYS,),
                encrypting,
                "file",
                "the key ring of the columns stored encrypted: `id:base64key` entries, the "
                "first one writing; keep every key that wrote data (`cloudretail rotate-key` "
                "moves the data to the first)",
                (
                    f"{create} generic {name} "
                    f'--from-literal={ENCRYPTION_KEYS}="k1:$(openssl rand -base64 32)"',
                ),
            )
        )
    if deployment.mail_senders:
        name = smtp_secret(deployment)
        found.append(
            Secret(
                name,
                (SMTP_URL,),
                deployment.mail_senders,
                "file",
                "the SMTP server the platform's mails go out through, with its credentials: "
                "smtps://user:password@host:465, or smtp://...:587 (STARTTLS)",
                (
                    f"{create} generic {name} "
                    f"--from-literal={SMTP_URL}='smtps://USER:PASSWORD@smtp.example.com:465'",
                ),
            )
        )
    tls = tls_secret(deployment)
    found.append(
        Secret(
            tls,
            ("tls.crt", "tls.key"),
            (f"Ingress {deployment.gateway.name}",),
            "tls",
            f"the certificate of {deployment.platform.domain} (or let cert-manager issue it)",
            (f"{create} tls {tls} --cert=tls.crt --key=tls.key",),
        )
    )
    found += [
        Secret(
            database.app_secret,
            ("uri",),
            database.clients,
            "operator",
            f"owner credentials of {database.name}; its `uri` is DATABASE_URL",
            (),
        )
        for database in deployment.databases
    ]
    if deployment.redis_clients:
        issuer = deployment.platform.issuer
        found.append(
            Secret(
                deployment.redis_tls_secret,
                ("tls.crt", "tls.key", "ca.crt"),
                ("redis", *deployment.redis_clients),
                "operator",
                f"Redis's certificate from {issuer.kind} {issuer.name}; clients mount `ca.crt`",
                (),
                operator="cert-manager",
            )
        )
    return tuple(found)


def provided(deployment: Deployment) -> tuple[k8s_vault.Wanted, ...]:
    """The Secrets whoever deploys provides (all but the ones CloudNativePG makes)."""
    return tuple(
        k8s_vault.Wanted(secret.name, secret.keys, secret.kind == "tls")
        for secret in secrets(deployment)
        if secret.kind != "operator"
    )


def rollout(deployment: Deployment) -> dict[str, Any]:
    """The lists the CI and deploy pipelines read (`deployables.json` for the GitHub
    workflows, the generated Jenkinsfile), so a new service needs no pipeline edit."""
    return {
        "namespace": deployment.namespace,
        "images": [
            {"name": process.name, "image": process.image, "dockerfile": process.dockerfile}
            for process in deployment.processes
        ],
        "migrations": [migration.name for migration in deployment.migrations],
        "deployments": [
            *(process.name for process in deployment.processes),
            *(["redis"] if deployment.redis_clients else []),
        ],
        "databases": [database.cluster for database in deployment.databases],
        # What must exist before a deploy (the operators make the rest).
        "secrets": [s.name for s in secrets(deployment) if s.kind != "operator"],
        # Made from Vault by the External Secrets Operator in the prod overlay: applied
        # (phase `secrets`) and waited for before the Secrets are checked.
        "external_secrets": list(k8s_vault.external_secrets(deployment, provided(deployment))),
        "kafka": deployment.kafka_cluster,
        "overlays": ["dev", "prod"],
    }


def files(platform: Platform) -> list[OutputFile]:
    deployment = build(platform)
    ns = deployment.namespace
    out: list[OutputFile] = [
        OutputFile(
            f"{BASE}/namespace.yaml",
            "k8s/namespace.yaml.j2",
            {
                "view": NamespaceView(
                    Meta(
                        ns,
                        ns,
                        pairs(
                            {
                                NAME: ns,
                                COMPONENT: "namespace",
                                PART_OF: deployment.name,
                                PHASE: "infrastructure",
                                "pod-security.kubernetes.io/enforce": "baseline",
                                "pod-security.kubernetes.io/audit": "restricted",
                                "pod-security.kubernetes.io/warn": "restricted",
                            }
                        ),
                    )
                )
            },
        )
    ]
    for process in deployment.processes:
        out += _app_files(deployment, process)
    out += _migration_files(deployment)
    out += k8s_network.files(deployment)
    out += k8s_data.files(deployment)
    out.append(
        kustomization(
            BASE,
            ns,
            out,
            (
                "Everything the platform runs, one resource per file. Overlays (../overlays/dev, "
                "prod) set",
                "the image tags; `kubectl kustomize` renders it, the deploy workflow applies it "
                "in phases.",
            ),
        )
    )
    out.append(
        OutputFile(
            f"{BASE}/secrets.example.env",
            "k8s/secrets.example.env.j2",
            {
                "deployment": deployment,
                "env_secrets": [s for s in secrets(deployment) if s.kind == "env"],
                "file_secrets": [s for s in secrets(deployment) if s.kind in ("file", "tls")],
                "operator_secrets": [s for s in secrets(deployment) if s.kind == "operator"],
            },
        )
    )
    images = tuple(ImageTag(process.image, DEFAULT_TAG) for process in deployment.processes)
    out += k8s_monitoring.files(deployment)
    out += k8s_vault.files(deployment, provided(deployment))
    out += k8s_ingress.files(deployment)
    prod: tuple[str, ...] = ("../../base", "../../monitoring")
    if deployment.platform.vault is not None:
        prod += ("../../vault",)
    overlays = (
        ("dev", tuple(p.name for p in deployment.processes), ("../../base",)),
        ("prod", (), prod),
    )
    for name, hpas, bases in overlays:
        view = OverlayView(
            name,
            ns,
            images,
            instance_labels(deployment, name),
            version_labels(DEFAULT_TAG),
            hpas,
            k8s_data.REPLICATION_SETTINGS,
            bases,
        )
        out.append(
            OutputFile(
                f"k8s/overlays/{name}/kustomization.yaml",
                f"k8s/overlays/{name}.yaml.j2",
                {"view": view},
            )
        )
    rollout_json = json.dumps(rollout(deployment), indent=2, sort_keys=True) + "\n"
    out.append(OutputFile("k8s/deployables.json", text=rollout_json))
    out.append(
        OutputFile(
            "k8s/README.md",
            "k8s/README.md.j2",
            {
                "deployment": deployment,
                "secrets": secrets(deployment),
                "rows": k8s_network.rows(deployment),
                "network": k8s_network,
                "ingress": k8s_ingress,
                "data": k8s_data,
                "deploy": deploy_constants,
                "views": k8s_views,
            },
        )
    )
    return out
