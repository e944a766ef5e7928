"""What the Kubernetes templates print: small frozen records, one per resource shape.

Targets fill these from the deployment view; templates only print them. Label and
annotation pairs are tuples in the order they are printed (sorted by key).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloudretail.generator.model import Probe, Resources
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import Setting

Pairs = tuple[tuple[str, str], ...]

# Kubernetes' recommended labels. Every object says what it is (name, component) and whose
# (part-of); the overlays add which deployment of the platform it is (instance), what version
# runs (version) and what renders it (managed-by). Selectors use `name` only: they are
# immutable, and must keep matching across versions and overlays.
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
INSTANCE = "app.kubernetes.io/instance"
VERSION = "app.kubernetes.io/version"
MANAGED_BY = "app.kubernetes.io/managed-by"
# The tool that renders the objects (`cloudretail generate`): a change belongs in the spec,
# not in the cluster. kubectl only applies them, and kustomize only assembles them.
MANAGER = "cloudretail"
# Which step of a rollout applies a resource (the deploy workflow selects on it):
# infrastructure first, then the migration Jobs, then the applications.
PHASE = "cloudretail.io/phase"


def pairs(values: Mapping[str, str]) -> Pairs:
    return tuple(sorted(values.items()))


def component_labels(
    part_of: str,
    component: str,
    phase: str = "infrastructure",
    *,
    name: str,
    extra: Mapping[str, str] | None = None,
) -> Pairs:
    """The labels of a platform resource that is not one of its deployables: what it is
    (`name`, `component`), whose it is and in which deploy phase it is applied."""
    return pairs(
        {NAME: name, COMPONENT: component, PART_OF: part_of, PHASE: phase, **(extra or {})}
    )


@dataclass(frozen=True)
class Skip:
    """A checkov check that does not apply, with the reason, printed as an annotation."""

    check: str
    reason: str


def skip_annotations(skips: Iterable[Skip]) -> Pairs:
    return tuple(
        (f"checkov.io/skip{index}", f"{skip.check}={skip.reason}")
        for index, skip in enumerate(sorted(skips, key=lambda s: s.check), start=1)
    )


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    labels: Pairs
    annotations: Pairs = ()


@dataclass(frozen=True)
class SecretEnv:
    name: str
    secret: str
    key: str


@dataclass(frozen=True)
class SecretFile:
    """A Secret key mounted read-only as a file."""

    volume: str
    secret: str
    key: str
    directory: str


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: tuple[str, ...]
    port: int | None
    config_map: str | None
    env: tuple[Setting, ...]
    secret_env: tuple[SecretEnv, ...]
    secret_files: tuple[SecretFile, ...]
    resources: Resources
    liveness: Probe | None
    readiness: Probe | None
    pre_stop: tuple[str, ...]


@dataclass(frozen=True)
class Pod:
    labels: Pairs
    service_account: str
    run_as: int
    containers: tuple[Container, ...]
    grace_seconds: int
    restart_policy: str  # Always (Deployments) or Never (Jobs)
    spread: Pairs  # topology spread: match labels (empty: none)
    spread_keys: tuple[str, ...]
    tmp_size: str

    @property
    def secret_files(self) -> tuple[SecretFile, ...]:
        return tuple(f for c in self.containers for f in c.secret_files)


@dataclass(frozen=True)
class DeploymentView:
    meta: Meta
    replicas: int
    selector: Pairs
    pod: Pod


@dataclass(frozen=True)
class JobView:
    meta: Meta
    backoff_limit: int
    deadline_seconds: int
    ttl_seconds: int
    pod: Pod


@dataclass(frozen=True)
class ServiceView:
    meta: Meta
    selector: Pairs
    port: int
    port_name: str = "http"


@dataclass(frozen=True)
class HpaView:
    meta: Meta
    target: str
    min_replicas: int
    max_replicas: int
    cpu: int
    memory: int


@dataclass(frozen=True)
class PdbView:
    meta: Meta
    selector: Pairs
    max_unavailable: int


@dataclass(frozen=True)
class ConfigMapView:
    meta: Meta
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class ServiceAccountView:
    meta: Meta


@dataclass(frozen=True)
class IngressView:
    meta: Meta
    ingress_class: str
    host: str
    tls_secret: str
    service: str
    port: int


@dataclass(frozen=True)
class NamespaceView:
    meta: Meta


# -- network policies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """Pods (in this namespace, or in the namespaces `namespace` selects) or an address block."""

    pods: Pairs | None = None
    namespace: Pairs | None = None
    cidr: str | None = None


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Rule:
    peers: tuple[Peer, ...]
    ports: tuple[Port, ...]
    why: str


@dataclass(frozen=True)
class NetworkPolicyView:
    meta: Meta
    pods: Pairs  # empty: every pod of the namespace
    ingress: tuple[Rule, ...] | None  # None: the policy says nothing about ingress
    egress: tuple[Rule, ...] | None
    description: str

    @property
    def policy_types(self) -> tuple[str, ...]:
        return (*(("Ingress",) if self.ingress is not None else ()),) + (
            ("Egress",) if self.egress is not None else ()
        )


def kustomization(
    folder: str, namespace: str, files: list[OutputFile], comment: tuple[str, ...]
) -> OutputFile:
    """`folder`'s kustomization.yaml, listing `files` (each below `folder`), with `comment`
    (one line per item) saying what it holds."""
    resources = sorted(file.path.removeprefix(f"{folder}/") for file in files)
    return OutputFile(
        f"{folder}/kustomization.yaml",
        "k8s/kustomization.yaml.j2",
        {"namespace": namespace, "resources": resources, "comment": comment},
    )
