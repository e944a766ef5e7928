"""Encryption in transit: the Ingress redirects to HTTPS and the ingress controller's
settings allow TLS 1.3 only, with HSTS; inside the cluster Kafka's only listener is TLS,
and every client verifies it against Strimzi's cluster CA; every process that reaches
PostgreSQL verifies the server against its CloudNativePG cluster's CA (verify-full); Redis
listens with TLS only, with a cert-manager certificate its clients verify against the
issuer's CA. Locally (compose, `up`) everything stays plaintext on the machine's own
network. The client side is tests/runtime/test_tls.py (PostgreSQL, Redis) and
tests/events/test_kafka_tls.py (Kafka)."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cloudretail.generator import load_platform, render
from cloudretail.generator.model import Platform
from cloudretail.runtime.gateway.headers import SECURITY_HEADERS
from cryptography import x509

from tests.deploy import crd
from tests.deploy.conftest import (
    GENERATED,
    K8S,
    ROOT,
    Manifest,
    by_kind,
    load_documents,
    missing_tool,
)
from tests.runtime.tls_support import Authority, free_port, redis_server, running

INGRESS_NGINX = K8S / "ingress-nginx"
ANNOTATION = "nginx.ingress.kubernetes.io/"


@pytest.fixture(scope="module")
def platform() -> Platform:
    return load_platform(ROOT / "spec" / "cloudretail.yaml")


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
    redis_clients = 0
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        assert not {"KAFKA_CA_FILE", "DATABASE_CA_FILE", "REDIS_CA_FILE"} & set(environment)
        bootstrap = environment.get("KAFKA_BOOTSTRAP_SERVERS")
        assert bootstrap in (None, "kafka:9092")
        if "REDIS_URL" in environment:
            assert environment["REDIS_URL"].startswith("redis://")
            redis_clients += 1
    assert redis_clients >= 3
    (redis,) = [s for s in compose["services"].values() if "redis" in s.get("image", "")]
    assert "--tls-port" not in " ".join(map(str, redis.get("command") or []))


# -- the Ingress and the ingress controller --------------------------------------------------


def _controller_config() -> Manifest:
    (config,) = load_documents((INGRESS_NGINX / "controller-configmap.yaml").read_text())
    return config


def test_the_ingress_only_redirects_plain_http_to_https(
    manifests: dict[str, Manifest], platform: Platform
) -> None:
    (ingress,) = by_kind(manifests, "Ingress").values()
    annotations = ingress["metadata"]["annotations"]
    assert annotations[f"{ANNOTATION}ssl-redirect"] == "true"
    assert annotations[f"{ANNOTATION}force-ssl-redirect"] == "true"
    assert ingress["spec"]["ingressClassName"] == platform.ingress.class_name
    (tls,) = ingress["spec"]["tls"]
    assert tls["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]


def test_the_controller_allows_tls13_only_and_sends_the_gateways_hsts(
    platform: Platform,
) -> None:
    config = _controller_config()
    assert config["kind"] == "ConfigMap"
    assert config["metadata"] == {
        "name": platform.ingress.config_map,
        "namespace": platform.ingress.namespace,
    }
    data = config["data"]
    assert data["ssl-protocols"].split() == ["TLSv1.3"]
    assert data["ssl-redirect"] == "true"
    assert data["hsts"] == "true"
    assert int(data["hsts-max-age"]) >= 31_536_000  # a year at least
    # The controller replaces the gateway's header with its own: they must say the same.
    header = f"max-age={data['hsts-max-age']}"
    header += "; includeSubDomains" if data["hsts-include-subdomains"] == "true" else ""
    header += "; preload" if data["hsts-preload"] == "true" else ""
    assert dict(SECURITY_HEADERS)[b"strict-transport-security"].decode() == header
    # The Helm values say the same as the ConfigMap.
    values = yaml.safe_load((INGRESS_NGINX / "values.yaml").read_text())
    assert values == {"controller": {"config": data}}


def test_the_controller_config_validates_and_its_namespace_reaches_the_gateway(
    manifests: dict[str, Manifest], platform: Platform
) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate is not installed (pip install kubernetes-validate)")
    kubernetes_validate.validate(_controller_config(), "1.30.0", strict=True)
    gateway = platform.gateway.deployable.name
    policy = by_kind(manifests, "NetworkPolicy")[gateway]
    namespaces = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" in peer
    ]
    assert platform.ingress.namespace in namespaces


def test_the_controller_and_the_issuer_are_the_specs(tmp_path: Path) -> None:
    """Another controller and issuer in the spec: every place that names them follows."""
    document = yaml.safe_load((ROOT / "tests" / "specs" / "minimal.yaml").read_text())
    document["platform"]["ingress"] = {
        "class_name": "public",
        "namespace": "edge",
        "config_map": "edge-nginx-controller",
    }
    document["platform"]["certificates"] = {"issuer": "shop-ca", "issuer_kind": "Issuer"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(document, sort_keys=False))
    files = render(load_platform(spec))
    docs = {path: load_documents(text) for path, text in files.items() if path.endswith(".yaml")}
    (ingress,) = docs["k8s/base/apps/api-gateway/ingress.yaml"]
    assert ingress["spec"]["ingressClassName"] == "public"
    (config,) = docs["k8s/ingress-nginx/controller-configmap.yaml"]
    assert config["metadata"] == {"name": "edge-nginx-controller", "namespace": "edge"}
    (policy,) = docs["k8s/base/network/api-gateway.yaml"]
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "edge"
    }
    (certificate,) = docs["k8s/base/redis/certificate.yaml"]
    assert certificate["spec"]["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": "Issuer",
        "name": "shop-ca",
    }
    assert crd.problems(certificate) == []


# -- Redis ------------------------------------------------------------------------------------


def _redis(manifests: dict[str, Manifest]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Redis's pod spec and its redis container."""
    pod = by_kind(manifests, "Deployment")["redis"]["spec"]["template"]["spec"]
    (redis,) = [c for c in pod["containers"] if c["name"] == "redis"]
    return pod, redis


def _options(command: list[str]) -> dict[str, str]:
    """`--name value` pairs of a command line."""
    return {
        part: command[index + 1]
        for index, part in enumerate(command[:-1])
        if part.startswith("--") and not command[index + 1].startswith("--")
    }


def _certificate(manifests: dict[str, Manifest]) -> Manifest:
    (certificate,) = by_kind(manifests, "Certificate").values()
    return certificate


def test_redis_listens_with_tls_only_with_its_certificate(
    manifests: dict[str, Manifest],
) -> None:
    pod, redis = _redis(manifests)
    options = _options(redis["command"])
    (service_port,) = by_kind(manifests, "Service")["redis"]["spec"]["ports"]
    assert options["--port"] == "0"  # no plaintext port
    assert options["--tls-port"] == str(service_port["targetPort"])
    assert options["--tls-protocols"] == "TLSv1.3"
    secret = _certificate(manifests)["spec"]["secretName"]
    for option, key in (
        ("--tls-cert-file", "tls.crt"),
        ("--tls-key-file", "tls.key"),
        ("--tls-ca-cert-file", "ca.crt"),
    ):
        assert _secret_key(pod, redis, options[option]) == (secret, key)
    for probe in ("livenessProbe", "readinessProbe"):
        command = redis[probe]["exec"]["command"]
        assert command[:2] == ["redis-cli", "--tls"] and command[-1] == "ping"
        assert _secret_key(pod, redis, _options(command)["--cacert"]) == (secret, "ca.crt")


def _secret_key(pod: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret, key) mounted at `path` in `container` (a volume of several items)."""
    directory, _, name = path.rpartition("/")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = [i for i in volume["secret"]["items"] if i["path"] == name]
    return volume["secret"]["secretName"], item["key"]


def test_the_certificate_names_the_service_and_comes_from_the_spec_issuer(
    manifests: dict[str, Manifest], platform: Platform
) -> None:
    certificate = _certificate(manifests)
    assert crd.problems(certificate) == []
    spec = certificate["spec"]
    assert spec["issuerRef"] == {
        "group": "cert-manager.io",
        "kind": platform.issuer.kind,
        "name": platform.issuer.name,
    }
    assert "server auth" in spec["usages"]
    assert f"redis.{platform.namespace}.svc" in spec["dnsNames"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"


def test_every_redis_client_uses_rediss_and_verifies_against_the_issuer_ca(
    manifests: dict[str, Manifest],
) -> None:
    certificate = _certificate(manifests)["spec"]
    configs = by_kind(manifests, "ConfigMap")
    clients = 0
    for name, deployment in by_kind(manifests, "Deployment").items():
        settings = configs[name]["data"] if name in configs else {}
        if "REDIS_URL" not in settings:
            assert "REDIS_CA_FILE" not in settings, name
            continue
        url = urlsplit(settings["REDIS_URL"])
        assert url.scheme == "rediss", name
        assert url.hostname in certificate["dnsNames"], name
        pod = deployment["spec"]["template"]["spec"]
        assert _mounted(pod, settings["REDIS_CA_FILE"]) == (certificate["secretName"], "ca.crt")
        clients += 1
    assert clients >= 3


# -- the generated Redis commands, run -----------------------------------------------------------


def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only reading which certificate is served
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        context.wrap_socket(raw) as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


class _LocalPod:
    """Redis's generated pod run on this machine: the mount paths become folders of
    `root`, port 6379 a free loopback port, redis-server and redis-cli the local ones."""

    def __init__(self, manifests: dict[str, Manifest], root: Path) -> None:
        pod, self.redis = _redis(manifests)
        (self.reload,) = [c for c in pod["containers"] if c["name"] == "tls-reload"]
        self.port = free_port()
        self.mounts: dict[str, Path] = {
            mount["mountPath"]: root / mount["name"]
            for container in (self.redis, self.reload)
            for mount in container["volumeMounts"]
        }
        for folder in self.mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            missing_tool("redis-cli is not installed")
        assert redis_cli is not None
        self.redis_cli = redis_cli

    def local(self, text: str) -> str:
        for path, folder in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            text = text.replace(path, str(folder))
        return re.sub(r"(?<![0-9])6379(?![0-9])", str(self.port), text)

    def command(self, parts: list[str]) -> list[str]:
        return [self.local(part) for part in parts]

    def server(self) -> list[str]:
        return [redis_server(), *self.command(self.redis["command"][1:]), "--bind", "127.0.0.1"]

    def probe(self, container: dict[str, Any], ca: Path | None = None) -> int:
        command = self.command(container["livenessProbe"]["exec"]["command"])
        if ca is not None:
            command[command.index("--cacert") + 1] = str(ca)
        done = subprocess.run([self.redis_cli, *command[1:]], capture_output=True, timeout=10)
        return done.returncode if done.stdout.strip() == b"PONG" else -1

    @contextmanager
    def reloading(self, seconds: float) -> Iterator[subprocess.Popen[bytes]]:
        script = self.local(self.reload["command"][-1])
        script = re.sub(r"sleep [0-9]+ ", f"sleep {seconds} ", script)
        script = script.replace("redis-cli ", f"{self.redis_cli} ")
        process = subprocess.Popen(["sh", "-c", script], stderr=subprocess.PIPE)
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def issue(self, authority: Authority) -> Path:
        """What cert-manager does: the Secret's files, as both containers see them."""
        tls = self.mounts[_directory(self.redis["command"], "--tls-cert-file")]
        authority.issue(tls, ["redis"])
        ca = self.mounts[_directory(self.reload["livenessProbe"]["exec"]["command"], "--cacert")]
        shutil.copyfile(tls / "ca.crt", ca / "ca.crt")
        return tls / "tls.crt"


def _directory(command: list[str], option: str) -> str:
    """The folder of the file `option` names on a command line."""
    return command[command.index(option) + 1].rpartition("/")[0]


def test_the_generated_redis_serves_tls_only_and_its_probes_verify_it(
    manifests: dict[str, Manifest], tmp_path: Path
) -> None:
    local = _LocalPod(manifests, tmp_path / "pod")
    local.issue(Authority.make())
    with running(local.server(), local.port):
        assert local.probe(local.redis) == 0
        assert local.probe(local.reload) == 0
        other = Authority.make("another CA").write(tmp_path / "other-ca.crt")
        assert local.probe(local.redis, ca=other) != 0
        plain = subprocess.run(
            [local.redis_cli, "-p", str(local.port), "ping"], capture_output=True, timeout=10
        )
        assert plain.stdout.strip() != b"PONG"  # no plaintext on the TLS port, none elsewhere


def test_tls_reload_makes_redis_serve_a_renewed_certificate(
    manifests: dict[str, Manifest], tmp_path: Path
) -> None:
    local = _LocalPod(manifests, tmp_path / "pod")
    authority = Authority.make()
    first = _serial(local.issue(authority))
    with running(local.server(), local.port):
        assert _served_serial(local.port) == first
        renewed = _serial(local.issue(authority))  # cert-manager renewed it: same CA
        time.sleep(0.5)
        assert _served_serial(local.port) == first  # Redis alone keeps the old one
        with local.reloading(0.2) as loop:
            deadline = time.monotonic() + 10
            while _served_serial(local.port) != renewed:
                assert loop.poll() is None, loop.stderr.read() if loop.stderr else ""
                assert time.monotonic() < deadline, "Redis still serves the old certificate"
                time.sleep(0.1)
            loop.terminate()
            assert loop.wait(timeout=5) == 0  # a TERM ends the loop at once, cleanly
        # A new CA: the clients' ca.crt changes with the certificate, so until Redis serves
        # the new one its liveness probe fails, and the kubelet restarts it with it.
        local.issue(Authority.make("rotated CA"))
        assert local.probe(local.redis) != 0
