"""The prod overlay's Secrets from HashiCorp Vault, when the spec says so
(`platform.secrets.vault`): the External Secrets Operator reads each Secret the manifests
reference (all but the ones CloudNativePG makes) from Vault with Kubernetes auth and keeps
it in sync. In `generated/k8s/vault/`, a kustomization of its own that the prod overlay
includes; the dev overlay keeps plain Secrets (secrets.example.env).

Vault holds `<prefix>/<secret name>` in the KV mount, one property per key of the Secret.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.model import Vault
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import Deployment
from cloudretail.generator.targets.k8s_views import (
    Meta,
    Pairs,
    ServiceAccountView,
    component_labels,
    kustomization,
)

FOLDER = "k8s/vault"
PHASE_NAME = "secrets"  # applied, and waited for, before the Secrets are checked
REFRESH = "1h"
TLS_TYPE = "kubernetes.io/tls"


@dataclass(frozen=True)
class Wanted:
    """A Secret the manifests reference and whoever deploys must provide."""

    name: str
    keys: tuple[str, ...]
    tls: bool


@dataclass(frozen=True)
class SecretStoreView:
    meta: Meta
    vault: Vault
    service_account: str


@dataclass(frozen=True)
class RemoteKey:
    secret_key: str
    remote: str
    property: str


@dataclass(frozen=True)
class ExternalSecretView:
    meta: Meta
    store: str
    refresh: str
    target: str
    target_type: str | None
    data: tuple[RemoteKey, ...]


def store_name(deployment: Deployment) -> str:
    return f"{deployment.name}-vault"


def external_secrets(deployment: Deployment, wanted: tuple[Wanted, ...]) -> tuple[str, ...]:
    """The ExternalSecrets the deploy waits for (none without Vault)."""
    return tuple(secret.name for secret in wanted) if deployment.platform.vault else ()


def files(deployment: Deployment, wanted: tuple[Wanted, ...]) -> list[OutputFile]:
    vault = deployment.platform.vault
    if vault is None:
        return []
    ns = deployment.namespace
    store = store_name(deployment)

    def labels(name: str) -> Pairs:
        return component_labels(deployment.name, "secrets", PHASE_NAME, name=name)

    out = [
        OutputFile(
            f"{FOLDER}/serviceaccount.yaml",
            "k8s/serviceaccount.yaml.j2",
            {"view": ServiceAccountView(Meta(store, ns, labels(store)))},
        ),
        OutputFile(
            f"{FOLDER}/secretstore.yaml",
            "k8s/vault/secretstore.yaml.j2",
            {"view": SecretStoreView(Meta(store, ns, labels(store)), vault, store)},
        ),
    ]
    for secret in wanted:
        remote = f"{vault.prefix}/{secret.name}"
        view = ExternalSecretView(
            meta=Meta(secret.name, ns, labels(secret.name)),
            store=store,
            refresh=REFRESH,
            target=secret.name,
            target_type=TLS_TYPE if secret.tls else None,
            data=tuple(RemoteKey(key, remote, key) for key in secret.keys),
        )
        out.append(
            OutputFile(
                f"{FOLDER}/externalsecrets/{secret.name}.yaml",
                "k8s/vault/externalsecret.yaml.j2",
                {"view": view},
            )
        )
    out.append(
        kustomization(
            FOLDER,
            ns,
            out,
            (
                "The prod overlay's Secrets, read from Vault by the External Secrets Operator "
                "(needs its",
                "CRDs: SecretStore, ExternalSecret); the prod overlay includes it.",
            ),
        )
    )
    return out
