"""Encryption in transit inside the cluster: Kafka's only listener is TLS, and every client
verifies it against Strimzi's cluster CA; every process that reaches PostgreSQL verifies
the server against its CloudNativePG cluster's CA (verify-full). Locally (compose, `up`)
everything stays plaintext on the machine's own network. The client side is
tests/runtime/test_tls.py (PostgreSQL) and tests/events/test_kafka_tls.py (Kafka)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.conftest import GENERATED, Manifest, by_kind


def _mounted(pod: dict[str, Any], variable: str) -> tuple[str, str]:
    """(the Secret mounted where `variable` points, the key) for the pod's one container."""
    (container,) = pod["containers"]
    return _secret_at(pod, container, variable)


def _secret_at(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    directory, _, name = path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]
    assert item["path"] == name
    return volume["secret"]["secretName"], item["key"]


def test_kafka_listens_with_tls_only(manifests: dict[str, Manifest]) -> None:
    (kafka,) = by_kind(manifests, "Kafka").values()
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert [(item["port"], item["tls"]) for item in listeners] == [(9093, True)]


def test_every_client_verifies_kafka_and_postgres_against_the_operators_ca(
    manifests: dict[str, Manifest],
) -> None:
    (kafka,) = by_kind(manifests, "Kafka").values()
    kafka_ca = f"{kafka['metadata']['name']}-cluster-ca-cert"
    configs = by_kind(manifests, "ConfigMap")
    clusters = {c["metadata"]["name"] for c in by_kind(manifests, "Cluster").values()}
    checked = {"kafka": 0, "postgres": 0}
    for name, deployment in by_kind(manifests, "Deployment").items():
        if name == "redis":
            continue
        settings = configs[name]["data"]
        pod = deployment["spec"]["template"]["spec"]
        if "KAFKA_BOOTSTRAP_SERVERS" in settings:
            assert settings["KAFKA_BOOTSTRAP_SERVERS"].endswith(":9093")
            assert _mounted(pod, settings["KAFKA_CA_FILE"]) == (kafka_ca, "ca.crt")
            checked["kafka"] += 1
        else:
            assert "KAFKA_CA_FILE" not in settings
        (container,) = pod["containers"]
        refs = [e for e in container.get("env", []) if e["name"] == "DATABASE_URL"]
        if refs:
            secret, key = _mounted(pod, settings["DATABASE_CA_FILE"])
            assert key == "ca.crt" and secret.removesuffix("-ca") in clusters
            app_secret = refs[0]["valueFrom"]["secretKeyRef"]["name"]
            assert secret.removesuffix("-ca") == app_secret.removesuffix("-app")
            checked["postgres"] += 1
    for name, job in by_kind(manifests, "Job").items():
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        secret, _ = _secret_at(pod, container, env["DATABASE_CA_FILE"]["value"])
        app_secret = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        assert secret.removesuffix("-ca") == app_secret.removesuffix("-app"), name
    assert checked["kafka"] >= 5 and checked["postgres"] >= 6


def test_locally_it_stays_plaintext_on_the_machine() -> None:
    compose = yaml.safe_load((GENERATED / "compose.yaml").read_text())
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        assert "KAFKA_CA_FILE" not in environment and "DATABASE_CA_FILE" not in environment
        bootstrap = environment.get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap in (None, "kafka:9092")
