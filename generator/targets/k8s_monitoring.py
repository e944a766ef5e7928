"""Monitoring from the spec: a ServiceMonitor per deployable, the platform's alert rules (a
PrometheusRule) and a Grafana dashboard with a row per deployable (a ConfigMap that Grafana's
dashboard sidecar provisions), in `generated/k8s/monitoring/`, a kustomization of its own
that the prod overlay includes (its kinds need the Prometheus Operator's CRDs).

Every expression here names metrics the runtime exports (runtime/metrics.py); the test
tests/stack/test_monitoring.py scrapes a running stack to prove it. Series are selected by
the labels a ServiceMonitor gives them: `namespace` and `job` (the Service's name).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import Deployment, Process
from cloudretail.generator.targets.k8s_views import (
    NAME,
    Meta,
    Pairs,
    component_labels,
    kustomization,
    pairs,
)

FOLDER = "k8s/monitoring"
# The label Grafana's dashboard sidecar looks for (kube-prometheus-stack's default); the
# NetworkPolicies admit its Prometheus (k8s_network.MONITORING_NAMESPACE) to /metrics.
DASHBOARD_LABEL = ("grafana_dashboard", "1")
SCRAPE_INTERVAL = "30s"
SCRAPE_TIMEOUT = "10s"
METRICS_PATH = "/metrics"
PORT_NAME = "http"  # the port name of every deployable's Service
QUANTILES = (0.5, 0.95, 0.99)
# Alert thresholds: error ratio, consumer lag (records), outbox age (seconds), readiness
# changes in 15 minutes; p99 latency alerts at half the gateway's timeout (past it the
# gateway answers 504 itself).
ERROR_RATIO = 0.05
CONSUMER_LAG = 1000
OUTBOX_AGE_SECONDS = 60
READINESS_CHANGES = 4


@dataclass(frozen=True)
class ServiceMonitorView:
    meta: Meta
    selector: Pairs
    port: str
    path: str
    interval: str
    timeout: str


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    duration: str
    severity: str
    summary: str
    description: str


@dataclass(frozen=True)
class RuleView:
    meta: Meta
    group: str
    alerts: tuple[Alert, ...]


@dataclass(frozen=True)
class DashboardView:
    meta: Meta
    key: str
    json: str


@dataclass(frozen=True)
class Traits:
    """What a deployable does, which decides the panels of its row."""

    process: Process
    database: bool
    publishes: bool
    consumes: bool
    sagas: bool
    gateway: bool


def traits(deployment: Deployment) -> list[Traits]:
    platform = deployment.platform
    services = {service.deployable.name: service for service in platform.services}
    found = []
    for process in deployment.processes:
        service = services.get(process.name)
        found.append(
            Traits(
                process=process,
                database=process.database is not None,
                publishes=bool(service and service.publishes),
                consumes=bool(service and service.consumes) or process.kind == "event-bus",
                sagas=bool(service and service.sagas),
                gateway=process.kind == "gateway",
            )
        )
    return found


def _jobs(deployment: Deployment, processes: list[Process]) -> str:
    names = "|".join(process.name for process in processes)
    return f'namespace="{deployment.namespace}", job=~"{names}"'


# -- alerts ----------------------------------------------------------------------------------


def alerts(deployment: Deployment) -> tuple[Alert, ...]:
    every = traits(deployment)
    apps = _jobs(deployment, [t.process for t in every])
    publishers = _jobs(deployment, [t.process for t in every if t.publishes])
    consumers = _jobs(deployment, [t.process for t in every if t.consumes])
    p99 = deployment.platform.gateway.timeout_seconds / 2
    prefix = "".join(part.title() for part in deployment.name.split("-"))
    found = [
        Alert(
            f"{prefix}HighErrorRate",
            f'sum by (job) (rate(http_requests_total{{{apps}, status=~"5.."}}[5m]))\n'
            f"  / sum by (job) (rate(http_requests_total{{{apps}}}[5m])) > {ERROR_RATIO}",
            "5m",
            "critical",
            "{{ $labels.job }} answers more than 5 % of requests with a server error",
            "The ratio of 5xx responses to all responses has been above "
            f"{ERROR_RATIO:.0%} for 5 minutes.",
        ),
        Alert(
            f"{prefix}HighLatencyP99",
            "histogram_quantile(0.99, sum by (job, le) "
            f"(rate(http_request_duration_seconds_bucket{{{apps}}}[5m]))) > {p99:g}",
            "10m",
            "warning",
            "{{ $labels.job }} p99 latency is above " + f"{p99:g} s",
            f"Half the gateway's timeout ({deployment.platform.gateway.timeout_seconds:g} s); "
            "slower requests are close to being cut off by the gateway.",
        ),
        Alert(
            f"{prefix}ReadinessFlapping",
            f"sum by (job, dependency) (changes(dependency_up{{{apps}}}[15m])) "
            f"> {READINESS_CHANGES}",
            "0m",
            "warning",
            "{{ $labels.job }}'s dependency {{ $labels.dependency }} keeps changing state",
            "The readiness check of a dependency changed state more than "
            f"{READINESS_CHANGES} times in 15 minutes.",
        ),
    ]
    if any(t.consumes for t in every):
        found += [
            Alert(
                f"{prefix}ConsumerLag",
                f"max by (job, group, topic) (consumer_lag_messages{{{consumers}}}) "
                f"> {CONSUMER_LAG}",
                "10m",
                "warning",
                "consumer group {{ $labels.group }} is behind on {{ $labels.topic }}",
                f"More than {CONSUMER_LAG} records waiting for 10 minutes.",
            ),
            Alert(
                f"{prefix}DeadLetters",
                "sum by (job, group, topic) (increase(consumer_events_total"
                f'{{{consumers}, outcome="dead_lettered"}}[15m])) > 0',
                "0m",
                "warning",
                "{{ $labels.job }} sent events of {{ $labels.topic }} to the dead-letter topic",
                "Events that failed every retry were parked in the topic's .dlq; inspect and "
                "replay them.",
            ),
        ]
    if any(t.publishes for t in every):
        found.append(
            Alert(
                f"{prefix}OutboxStuck",
                f"max by (job) (outbox_oldest_pending_age_seconds{{{publishers}}}) "
                f"> {OUTBOX_AGE_SECONDS}",
                "5m",
                "critical",
                "{{ $labels.job }} has not published events for over a minute",
                "The oldest unsent outbox event is older than "
                f"{OUTBOX_AGE_SECONDS} s: the relay cannot reach the broker.",
            )
        )
    return tuple(found)


# -- the dashboard ---------------------------------------------------------------------------

WIDTH = 24
PANEL = (8, 8)  # width, height


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "refId": ref}


def _panel(
    title: str, unit: str, targets: list[tuple[str, str]], **defaults: Any
) -> dict[str, Any]:
    return {
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "targets": [
            _target(expr, legend, chr(ord("A") + index))
            for index, (expr, legend) in enumerate(targets)
        ],
    }


def _cores(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity.removesuffix(suffix)) * factor)
    return int(quantity)


def _threshold(value: float) -> dict[str, Any]:
    """A red line at `value` (the HPA's target)."""
    return {
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": "green", "value": None}, {"color": "red", "value": value}],
        },
        "custom": {"thresholdsStyle": {"mode": "line"}},
    }


def _row_panels(deployment: Deployment, t: Traits) -> list[dict[str, Any]]:
    job = f'namespace="{deployment.namespace}", job="{t.process.name}"'
    deployable = t.process.deployable
    scaling, resources = deployable.scaling, deployable.resources
    cores = _cores(resources.request_cpu)
    rate = f"rate(http_requests_total{{{job}}}[5m])"
    panels = [
        _panel(
            "Requests per second by route", "reqps", [(f"sum by (route) ({rate})", "{{route}}")]
        ),
        _panel(
            "Error ratio (5xx)",
            "percentunit",
            [
                (
                    f'sum(rate(http_requests_total{{{job}, status=~"5.."}}[5m])) / sum({rate})',
                    "5xx",
                )
            ],
        ),
        _panel(
            "Latency by route (p50, p95, p99)",
            "s",
            [
                (
                    f"histogram_quantile({q}, sum by (route, le) "
                    f"(rate(http_request_duration_seconds_bucket{{{job}}}[5m])))",
                    f"p{round(q * 100)} {{{{route}}}}",
                )
                for q in QUANTILES
            ],
        ),
        _panel(
            f"CPU against the HPA target ({scaling.cpu} % of the request)",
            "percent",
            [
                (
                    f"100 * sum(rate(process_cpu_seconds_total{{{job}}}[5m])) / "
                    f"(count(process_cpu_seconds_total{{{job}}}) * {cores:g})",
                    "CPU % of request",
                )
            ],
            **_threshold(scaling.cpu),
        ),
        _panel(
            f"Memory against the HPA target ({scaling.memory} % of the request)",
            "percent",
            [
                (
                    f"100 * sum(process_resident_memory_bytes{{{job}}}) / "
                    f"(count(process_resident_memory_bytes{{{job}}}) * "
                    f"{_bytes(resources.request_memory)})",
                    "memory % of request",
                )
            ],
            **_threshold(scaling.memory),
        ),
        _panel(
            f"Replicas (HPA {scaling.min}-{scaling.max})",
            "short",
            [(f"count(process_cpu_seconds_total{{{job}}})", "replicas")],
            **_threshold(scaling.max),
        ),
    ]
    if t.database:
        panels.append(
            _panel(
                "Database connections in use",
                "short",
                [
                    (f"sum(db_pool_checked_out{{{job}}})", "in use"),
                    (f"sum(db_pool_size{{{job}}})", "pool size"),
                ],
            )
        )
    if t.consumes:
        panels += [
            _panel(
                "Consumer lag by group and topic",
                "short",
                [
                    (
                        f"max by (group, topic) (consumer_lag_messages{{{job}}})",
                        "{{group}} {{topic}}",
                    )
                ],
            ),
            _panel(
                "Events consumed by outcome (dead-lettered: to the DLQ)",
                "short",
                [
                    (
                        f"sum by (topic, outcome) (increase(consumer_events_total{{{job}}}[5m]))",
                        "{{topic}} {{outcome}}",
                    )
                ],
            ),
        ]
    if t.publishes:
        panels += [
            _panel(
                "Outbox backlog",
                "short",
                [
                    (f"sum(outbox_pending_events{{{job}}})", "unsent"),
                    (f"sum(rate(outbox_sent_total{{{job}}}[5m]))", "sent per second"),
                ],
            ),
            _panel(
                "Outbox: age of the oldest unsent event",
                "s",
                [(f"max(outbox_oldest_pending_age_seconds{{{job}}})", "oldest")],
                **_threshold(OUTBOX_AGE_SECONDS),
            ),
        ]
    if t.sagas:
        panels += [
            _panel(
                "Saga steps by outcome",
                "short",
                [
                    (
                        f"sum by (saga, step, outcome) (increase(saga_steps_total{{{job}}}[5m]))",
                        "{{saga}} {{step}} {{outcome}}",
                    )
                ],
            ),
            _panel(
                "Sagas by outcome",
                "short",
                [
                    (
                        f"sum by (saga, outcome) (increase(saga_outcomes_total{{{job}}}[5m]))",
                        "{{saga}} {{outcome}}",
                    )
                ],
            ),
        ]
    if t.gateway:
        panels += [
            _panel(
                "Rate-limit rejections (429)",
                "reqps",
                [(f"sum(rate(gateway_rate_limited_total{{{job}}}[5m]))", "429 per second")],
            ),
            _panel(
                "Open circuit breakers by upstream instance",
                "short",
                [
                    (
                        f"max by (upstream, instance) "
                        f"(gateway_upstream_instance_circuit_open{{{job}}})",
                        "{{upstream}} {{instance}}",
                    )
                ],
            ),
            _panel(
                "Answered by the gateway for a failed upstream",
                "reqps",
                [
                    (
                        "sum by (upstream, status) "
                        f"(rate(gateway_upstream_failures_total{{{job}}}[5m]))",
                        "{{upstream}} {{status}}",
                    )
                ],
            ),
        ]
    return panels


def dashboard(deployment: Deployment) -> dict[str, Any]:
    """The Grafana dashboard model: a row per deployable, its panels three to a line."""
    panels: list[dict[str, Any]] = []
    y = 0
    for t in traits(deployment):
        panels.append(
            {
                "type": "row",
                "title": t.process.deployable.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        width, height = PANEL
        for index, panel in enumerate(_row_panels(deployment, t)):
            column = index % (WIDTH // width)
            if index and column == 0:
                y += height
            panel["gridPos"] = {"h": height, "w": width, "x": column * width, "y": y}
            panels.append(panel)
        y += height
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "uid": f"{deployment.name}-platform"[:40],
        "title": f"{deployment.name} platform",
        "tags": [deployment.name],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": panels,
    }


# -- files -----------------------------------------------------------------------------------


def files(deployment: Deployment) -> list[OutputFile]:
    ns = deployment.namespace
    out = [
        OutputFile(
            f"{FOLDER}/servicemonitors/{process.name}.yaml",
            "k8s/monitoring/servicemonitor.yaml.j2",
            {
                "view": ServiceMonitorView(
                    Meta(
                        process.name,
                        ns,
                        component_labels(deployment.name, "monitoring", name=process.name),
                    ),
                    pairs({NAME: process.name}),
                    PORT_NAME,
                    METRICS_PATH,
                    SCRAPE_INTERVAL,
                    SCRAPE_TIMEOUT,
                )
            },
        )
        for process in deployment.processes
    ]
    out.append(
        OutputFile(
            f"{FOLDER}/alerts.yaml",
            "k8s/monitoring/prometheusrule.yaml.j2",
            {
                "view": RuleView(
                    Meta(
                        f"{deployment.name}-alerts",
                        ns,
                        component_labels(
                            deployment.name, "monitoring", name=f"{deployment.name}-alerts"
                        ),
                    ),
                    deployment.name,
                    alerts(deployment),
                )
            },
        )
    )
    out.append(
        OutputFile(
            f"{FOLDER}/dashboard.yaml",
            "k8s/monitoring/dashboard.yaml.j2",
            {
                "view": DashboardView(
                    Meta(
                        f"{deployment.name}-dashboard",
                        ns,
                        component_labels(
                            deployment.name,
                            "monitoring",
                            name=f"{deployment.name}-dashboard",
                            extra=dict([DASHBOARD_LABEL]),
                        ),
                    ),
                    f"{deployment.name}.json",
                    json.dumps(dashboard(deployment), indent=2, sort_keys=True),
                )
            },
        )
    )
    out.append(
        kustomization(
            FOLDER,
            ns,
            out,
            (
                "What Prometheus scrapes, when it alerts and what Grafana shows. Needs the "
                "Prometheus",
                "Operator's CRDs (ServiceMonitor, PrometheusRule); the prod overlay includes it.",
            ),
        )
    )
    return out
