"""Each HPA is the spec's scaling policy; the dev overlay drops them and runs one replica."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloudretail.generator import load_platform

from tests.deploy.conftest import Manifest, by_kind, load_documents

# The seed's scaling table (seed-cloudretail-architecture.md, "Scaling Policies").
SEED_SCALING = {
    "api-gateway": (3, 20, 70, 80),
    "user-service": (3, 10, 70, 80),
    "product-service": (3, 10, 70, 80),
    "order-service": (3, 15, 70, 80),
    "inventory-service": (3, 10, 70, 80),
    "payment-service": (3, 15, 70, 80),
    "event-bus": (3, 10, 70, 80),
}
# The event consumers the seed draws without a scaling row take the spec's own policy.
CONSUMER_SCALING = {
    "notification-service": (2, 5, 70, 80),
    "analytics-service": (2, 4, 70, 80),
}
SCALING = {**SEED_SCALING, **CONSUMER_SCALING}


def _policy(hpa: Manifest) -> tuple[int, int, int, int]:
    spec = hpa["spec"]
    targets = {
        metric["resource"]["name"]: metric["resource"]["target"]
        for metric in spec["metrics"]
        if metric["type"] == "Resource"
    }
    assert len(spec["metrics"]) == 2 and set(targets) == {"cpu", "memory"}
    assert all(target["type"] == "Utilization" for target in targets.values())
    return (
        spec["minReplicas"],
        spec["maxReplicas"],
        targets["cpu"]["averageUtilization"],
        targets["memory"]["averageUtilization"],
    )


def test_every_hpa_is_the_seed_scaling_table(manifests: dict[str, Manifest]):
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    assert {name: _policy(hpa) for name, hpa in hpas.items()} == SCALING
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }


def test_every_hpa_is_the_model_scaling(manifests: dict[str, Manifest], in_root: Path):
    platform = load_platform(Path("spec/cloudretail.yaml"))
    hpas = by_kind(manifests, "HorizontalPodAutoscaler")
    assert {
        deployable.name: (
            deployable.scaling.min,
            deployable.scaling.max,
            deployable.scaling.cpu,
            deployable.scaling.memory,
        )
        for deployable in platform.deployables
    } == {name: _policy(hpa) for name, hpa in hpas.items()}
    deployments = by_kind(manifests, "Deployment")
    for deployable in platform.deployables:
        # Start at the HPA's floor, so a first rollout is already highly available.
        assert deployments[deployable.name]["spec"]["replicas"] == deployable.scaling.min


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlays_scaling(overlay: str, kustomize_builds: dict[str, Path]):
    docs = load_documents(kustomize_builds[overlay].read_text())
    hpas = {
        d["metadata"]["name"]: _policy(d) for d in docs if d["kind"] == "HorizontalPodAutoscaler"
    }
    replicas = {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in docs if d["kind"] == "Deployment"
    }
    if overlay == "prod":
        assert hpas == SCALING
        assert all(replicas[name] == policy[0] for name, policy in SCALING.items())
    else:
        assert hpas == {}
        assert set(replicas.values()) == {1}
        single = [d for d in docs if d["kind"] in {"Cluster", "KafkaNodePool", "KafkaTopic"}]
        assert single
        for doc in single:
            assert doc["spec"].get("instances", doc["spec"].get("replicas")) == 1
