"""The generated monitoring: a ServiceMonitor per deployable that finds its Service's port,
alert rules for what the platform can get wrong, a dashboard row per deployable, and
NetworkPolicies that let the monitoring namespace's Prometheus scrape.

That each metric named here is exported by the running deployables is
tests/stack/test_monitoring.py; strict schema validation is test_manifests.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudretail.generator import load_platform
from cloudretail.generator.model import Platform

from tests.deploy.conftest import K8S, ROOT, Manifest, by_kind, load_documents
from tests.deploy.promql import metric_names

MONITORING = K8S / "monitoring"


@pytest.fixture(scope="module")
def platform() -> Platform:
    return load_platform(ROOT / "spec" / "cloudretail.yaml")


@pytest.fixture(scope="module")
def monitoring() -> dict[str, Manifest]:
    found = {}
    for path in sorted(MONITORING.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            (doc,) = load_documents(path.read_text())
            found[path.relative_to(MONITORING).as_posix()] = doc
    return found


def dashboard_of(monitoring: dict[str, Manifest]) -> dict[str, Any]:
    (config,) = [m for m in monitoring.values() if m["kind"] == "ConfigMap"]
    assert config["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = config["data"].values()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def test_a_service_monitor_finds_each_deployables_service(
    monitoring: dict[str, Manifest], manifests: dict[str, Manifest], platform: Platform
) -> None:
    monitors = by_kind(monitoring, "ServiceMonitor")
    services = by_kind(manifests, "Service")
    assert set(monitors) == {deployable.name for deployable in platform.deployables}
    for name, monitor in monitors.items():
        service = services[name]
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        ports = {port["name"] for port in service["spec"]["ports"]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_the_alerts_cover_what_the_platform_can_get_wrong(monitoring: dict[str, Manifest]) -> None:
    (rule,) = by_kind(monitoring, "PrometheusRule").values()
    (group,) = rule["spec"]["groups"]
    names = {alert["alert"].removeprefix("Cloudretail"): alert for alert in group["rules"]}
    assert set(names) == {
        "HighErrorRate",
        "HighLatencyP99",
        "ReadinessFlapping",
        "ConsumerLag",
        "DeadLetters",
        "OutboxStuck",
    }
    assert "> 5" in names["HighLatencyP99"]["expr"]  # half the spec's gateway timeout (10s)
    for alert in group["rules"]:
        assert metric_names(alert["expr"]), alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_the_dashboard_has_a_row_per_deployable_with_its_panels(
    monitoring: dict[str, Manifest], platform: Platform
) -> None:
    panels = dashboard_of(monitoring)["panels"]
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert rows == [deployable.title for deployable in platform.deployables]
    titles = {panel["title"] for panel in panels if panel["type"] != "row"}
    for expected in (
        "Requests per second by route",
        "Error ratio (5xx)",
        "Latency by route (p50, p95, p99)",
        "Consumer lag by group and topic",
        "Outbox backlog",
        "Outbox: age of the oldest unsent event",
        "Saga steps by outcome",
        "Rate-limit rejections (429)",
        "Open circuit breakers by upstream instance",
    ):
        assert expected in titles
    # Saturation against the HPA's targets: the order service's CPU target is a red line.
    order = platform.service("order").deployable
    cpu = [p for p in panels if p["title"].startswith("CPU against") and order.name in str(p)]
    (panel,) = cpu
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == order.scaling.cpu
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        for target in panel.get("targets", []):
            assert metric_names(target["expr"]), (panel["title"], target["expr"])


def test_prometheus_may_scrape_every_deployable(
    manifests: dict[str, Manifest], platform: Platform
) -> None:
    policies = by_kind(manifests, "NetworkPolicy")
    for deployable in platform.deployables:
        rules = policies[deployable.name]["spec"]["ingress"]
        scrape = [
            rule
            for rule in rules
            if any(
                peer.get("namespaceSelector", {}).get("matchLabels", {})
                == {"kubernetes.io/metadata.name": "monitoring"}
                and peer.get("podSelector", {}).get("matchLabels", {})
                == {"app.kubernetes.io/name": "prometheus"}
                for peer in rule["from"]
            )
        ]
        assert [rule["ports"] for rule in scrape] == [
            [{"port": deployable.port, "protocol": "TCP"}]
        ]


def test_only_the_prod_overlay_needs_the_operators_crds() -> None:
    prod = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    dev = (K8S / "overlays" / "dev" / "kustomization.yaml").read_text()
    assert "../../monitoring" in prod and "../../monitoring" not in dev
