"""The NetworkPolicies allow exactly the spec's edges: computed from the manifests alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloudretail.generator import load_platform, render
from cloudretail.generator.model import Platform

from tests.deploy.conftest import ROOT, Manifest, base_manifests, load_documents
from tests.deploy.reachability import Edge, Endpoint, outside, pod, reachable

SPEC = Path("spec/cloudretail.yaml")
TCP, UDP = "TCP", "UDP"
TOKEN_AUTH = {"authenticated", "admin"}
# Ports no rule should open: they catch a rule that allows every port.
PROBE_PORTS = {(80, TCP), (12345, TCP), (12345, UDP)}

# Pods outside the platform's namespace, with the labels their installations give them.
INGRESS_CONTROLLER = pod(
    "ingress-controller",
    "ingress-nginx",
    {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
)
KUBE_DNS = pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
CNPG_OPERATOR = pod("cnpg-operator", "cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"})
STRIMZI_OPERATOR = pod(
    "strimzi-operator",
    "strimzi-system",
    {"strimzi.io/kind": "cluster-operator", "name": "strimzi-cluster-operator"},
)
PROMETHEUS = pod(
    "prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus", "prometheus": "k8s"}
)
# Another pod of the monitoring namespace gains nothing by living there.
GRAFANA = pod("grafana", "monitoring", {"app.kubernetes.io/name": "grafana"})
# A pod in another namespace wearing a platform pod's labels must gain nothing by it.
IMPOSTOR = pod("impostor", "default", {"app.kubernetes.io/name": "order-service"})
INTERNET = outside("internet", "203.0.113.7")


def manifests_of(rendered: dict[str, str]) -> dict[str, Manifest]:
    found = {}
    for path, text in rendered.items():
        if path.startswith("k8s/base/") and path.endswith(".yaml"):
            if path.endswith("kustomization.yaml"):
                continue
            (doc,) = load_documents(text)
            found[path] = doc
    return found


def _of_kind(manifests: dict[str, Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests.values() if m["kind"] == kind]


def endpoints(manifests: dict[str, Manifest]) -> list[Endpoint]:
    """The pods the manifests make (directly or through the operators), and outsiders."""
    (namespace,) = [m["metadata"]["name"] for m in _of_kind(manifests, "Namespace")]
    found = [
        pod(m["metadata"]["name"], namespace, m["spec"]["template"]["metadata"]["labels"])
        for kind in ("Deployment", "Job")
        for m in _of_kind(manifests, kind)
    ]
    for cluster in _of_kind(manifests, "Cluster"):
        name = cluster["metadata"]["name"]
        labels = {"cnpg.io/cluster": name, "cnpg.io/podRole": "instance"}
        found.append(pod(f"postgres/{name}", namespace, labels))
    for pooler in _of_kind(manifests, "Pooler"):
        name = pooler["metadata"]["name"]
        labels = {"cnpg.io/poolerName": name, "cnpg.io/podRole": "pooler"}
        found.append(pod(f"pgbouncer/{name}", namespace, labels))
    for kafka in _of_kind(manifests, "Kafka"):
        name = kafka["metadata"]["name"]
        for pool in _of_kind(manifests, "KafkaNodePool"):
            assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
            labels = {
                "strimzi.io/cluster": name,
                "strimzi.io/kind": "Kafka",
                "strimzi.io/name": f"{name}-kafka",
                "strimzi.io/pool-name": pool["metadata"]["name"],
                "strimzi.io/broker-role": "true",
                "strimzi.io/controller-role": "true",
            }
            found.append(pod(f"kafka/{name}", namespace, labels))
        labels = {
            "strimzi.io/cluster": name,
            "strimzi.io/kind": "Kafka",
            "strimzi.io/name": f"{name}-entity-operator",
        }
        found.append(pod(f"kafka/{name}-entity-operator", namespace, labels))
    found.append(pod("unlabelled", namespace, {"app": "something-else"}))
    return [
        *found,
        INGRESS_CONTROLLER,
        KUBE_DNS,
        CNPG_OPERATOR,
        STRIMZI_OPERATOR,
        PROMETHEUS,
        GRAFANA,
        IMPOSTOR,
        INTERNET,
    ]


def allowed_edges(manifests: dict[str, Manifest]) -> set[Edge]:
    policies = _of_kind(manifests, "NetworkPolicy")
    (namespace,) = [m["metadata"]["name"] for m in _of_kind(manifests, "Namespace")]
    return reachable(policies, endpoints(manifests), {namespace}, PROBE_PORTS)


def expected_edges(platform: Platform, manifests: dict[str, Manifest]) -> set[Edge]:
    """The spec's call graph, the gateway's routes, the data each process uses, and what the
    operators and DNS need: written from the spec, not from the generator's code."""
    edges: set[Edge] = set()
    gateway = platform.gateway.deployable
    bus = platform.event_bus.deployable
    by_port = {deployable.port: deployable for deployable in platform.deployables}
    clusters = {
        m["spec"]["bootstrap"]["initdb"]["database"]: f"postgres/{m['metadata']['name']}"
        for m in _of_kind(manifests, "Cluster")
    }
    # A database with a PgBouncer (a Pooler of its cluster): the deployables reach it there.
    poolers = {
        m["spec"]["cluster"]["name"]: f"pgbouncer/{m['metadata']['name']}"
        for m in _of_kind(manifests, "Pooler")
    }
    reached = {
        database: poolers.get(cluster.removeprefix("postgres/"), cluster)
        for database, cluster in clusters.items()
    }
    (kafka_name,) = [m["metadata"]["name"] for m in _of_kind(manifests, "Kafka")]
    kafka, entity_operator = f"kafka/{kafka_name}", f"kafka/{kafka_name}-entity-operator"

    edges.add((INGRESS_CONTROLLER.id, gateway.name, gateway.port, TCP))
    # Prometheus scrapes /metrics of every deployable on its port.
    edges |= {(PROMETHEUS.id, d.name, d.port, TCP) for d in platform.deployables}
    for upstream in platform.gateway.upstreams:
        edges.add((gateway.name, by_port[upstream.port].name, upstream.port, TCP))
    for caller, callee in platform.call_edges:
        target = platform.service(callee).deployable
        edges.add((platform.service(caller).deployable.name, target.name, target.port, TCP))

    # JWKS: whoever verifies tokens fetches the issuer's keys from the issuer's port.
    issuers = [
        service.deployable
        for service in platform.services
        if any(route.path.endswith("/.well-known/jwks.json") for route in service.routes)
    ]
    if issuers:
        (issuer,) = issuers
        verifiers = {gateway.name} | {
            service.deployable.name
            for service in platform.services
            if any(route.auth in TOKEN_AUTH for route in service.routes)
        }
        verifiers |= {
            by_port[platform.gateway.upstream(route.service).port].name
            for route in platform.gateway.routes
            if route.auth in TOKEN_AUTH
        }
        for name in verifiers - {issuer.name}:
            edges.add((name, issuer.name, issuer.port, TCP))

    for service in platform.services:
        name = service.deployable.name
        edges.add((name, reached[service.database], 5432, TCP))
        if service.publishes or service.consumes:
            edges.add((name, kafka, 9093, TCP))
        if service.uses_cache:
            edges.add((name, "redis", 6379, TCP))
        if service.uses_mail:
            # The SMTP server is outside the cluster: submission (587, 465) and relay (25).
            edges |= {(name, INTERNET.id, port, TCP) for port in (25, 465, 587)}
    edges |= {
        (bus.name, reached[platform.event_bus.database], 5432, TCP),
        (bus.name, kafka, 9093, TCP),
        (bus.name, "redis", 6379, TCP),
        (gateway.name, "redis", 6379, TCP),
    }
    for schema in platform.schemas:
        owner = (
            platform.service(schema.folder.removeprefix("services/")).deployable.name
            if schema.folder.startswith("services/")
            else bus.name
        )
        edges.add((f"{owner}-migrate", clusters[schema.database], 5432, TCP))

    for endpoint in endpoints(manifests):
        if endpoint.namespace == platform.namespace:
            edges |= {(endpoint.id, KUBE_DNS.id, 53, UDP), (endpoint.id, KUBE_DNS.id, 53, TCP)}
    for cluster in clusters.values():
        for port in (5432, 8000):
            edges |= {(cluster, cluster, port, TCP), (CNPG_OPERATOR.id, cluster, port, TCP)}
        edges |= {(cluster, INTERNET.id, port, TCP) for port in (443, 6443)}
    for cluster, pooler in poolers.items():
        edges.add((pooler, f"postgres/{cluster}", 5432, TCP))
        edges |= {(pooler, INTERNET.id, port, TCP) for port in (443, 6443)}
    edges |= {
        (kafka, kafka, 9090, TCP),
        (kafka, kafka, 9091, TCP),
        (STRIMZI_OPERATOR.id, kafka, 9090, TCP),
        (STRIMZI_OPERATOR.id, kafka, 9091, TCP),
        (STRIMZI_OPERATOR.id, kafka, 8443, TCP),
        (entity_operator, kafka, 9091, TCP),
        (entity_operator, INTERNET.id, 443, TCP),
        (entity_operator, INTERNET.id, 6443, TCP),
    }
    return edges


def _diff(actual: set[Edge], expected: set[Edge]) -> str:
    extra = "\n".join(f"  + {edge}" for edge in sorted(actual - expected))
    missing = "\n".join(f"  - {edge}" for edge in sorted(expected - actual))
    return f"allowed but not in the spec:\n{extra or '  none'}\nin the spec but denied:\n{missing or '  none'}"


def test_policies_allow_exactly_the_spec_edges(in_root: Path):
    platform = load_platform(SPEC)
    manifests = base_manifests()
    actual = allowed_edges(manifests)
    expected = expected_edges(platform, manifests)
    assert actual == expected, _diff(actual, expected)


def test_the_seed_call_graph_is_allowed_and_nothing_between_services_else(in_root: Path):
    """The seed's calls by name, so a model change cannot quietly move the goalposts."""
    manifests = base_manifests()
    actual = allowed_edges(manifests)
    services = {
        "user-service": 3001,
        "product-service": 3002,
        "order-service": 3003,
        "inventory-service": 3004,
        "payment-service": 3005,
    }
    between = {
        (source, target, port)
        for source, target, port, _ in actual
        if source in services and target in services
    }
    calls = {
        ("order-service", "inventory-service", 3004),
        ("order-service", "payment-service", 3005),
        ("order-service", "product-service", 3002),
        ("payment-service", "order-service", 3003),
        # The GDPR export: the user service asks each service holding personal data.
        ("user-service", "order-service", 3003),
        ("user-service", "payment-service", 3005),
    }
    jwks = {(name, "user-service", 3001) for name in services if name != "user-service"}
    assert between == calls | jwks
    # Nothing from outside the namespace but the ingress controller reaches the gateway.
    inbound = {(s, t, p) for s, t, p, _ in actual if s in {IMPOSTOR.id, INTERNET.id}}
    assert inbound == set()
    assert {(s, p) for s, t, p, _ in actual if t == "api-gateway"} >= {("ingress-controller", 8080)}
    assert not any(s == "unlabelled" and t != KUBE_DNS.id for s, t, _, _ in actual)
    assert not any(t == "unlabelled" for _, t, _, _ in actual)


def test_a_new_call_in_the_spec_adds_exactly_that_edge(in_root: Path, tmp_path: Path):
    document = yaml.safe_load((ROOT / SPEC).read_text())
    inventory = document["services"]["inventory"]
    assert "product" not in inventory.get("calls", [])
    inventory["calls"] = [*inventory.get("calls", []), "product"]
    changed = tmp_path / "cloudretail.yaml"
    changed.write_text(yaml.safe_dump(document, sort_keys=False))

    before = allowed_edges(manifests_of(render(load_platform(SPEC))))
    after_platform = load_platform(changed)
    after_manifests = manifests_of(render(after_platform))
    after = allowed_edges(after_manifests)

    assert after - before == {("inventory-service", "product-service", 3002, TCP)}
    assert before - after == set()
    assert after == expected_edges(after_platform, after_manifests)


@pytest.mark.parametrize(
    "spec", sorted((ROOT / "tests" / "specs").glob("*.yaml")), ids=lambda p: p.stem
)
def test_small_specs_get_exactly_their_edges(spec: Path, in_root: Path):
    platform = load_platform(spec.relative_to(ROOT))
    manifests = manifests_of(render(platform))
    actual = allowed_edges(manifests)
    expected = expected_edges(platform, manifests)
    assert actual == expected, _diff(actual, expected)
