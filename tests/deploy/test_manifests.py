"""The generated deployment artifacts: valid, hardened, and what the spec says.

Tools: kubernetes-validate (pip), checkov (pip), kubectl (kustomize), docker-compose or
`docker compose`. A missing tool skips its test with the reason, unless
CLOUDRETAIL_REQUIRE_SERVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cloudretail.generator import load_platform
from cloudretail.generator.model import Platform

from tests.deploy import crd
from tests.deploy.conftest import (
    GENERATED,
    K8S,
    OVERLAYS,
    ROOT,
    Manifest,
    by_kind,
    load_documents,
    missing_tool,
    tool,
)

KUBERNETES_VERSION = "1.30.0"
# Custom resources: kubernetes-validate has no schema for them (their CRDs come with the
# operators); they are validated strictly against the operators' published schemas instead
# (tests/deploy/crd.py). Any other kind without a schema is a failure.
CUSTOM_KINDS = {
    ("kafka.strimzi.io/v1", "Kafka"),
    ("kafka.strimzi.io/v1", "KafkaNodePool"),
    ("kafka.strimzi.io/v1", "KafkaTopic"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "Pooler"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("external-secrets.io/v1", "SecretStore"),
    ("external-secrets.io/v1", "ExternalSecret"),
    ("cert-manager.io/v1", "Certificate"),
}
SECRETISH = re.compile(r"TOKEN|PASSWORD|SECRET|PRIVATE|_KEY$|DATABASE_URL")
CHECKOV_OPTIONS = ("--output", "json", "--quiet", "--skip-download", "--compact")
SEED_LIVENESS = ("/health/live", 30, 10, 5, 3)
SEED_READINESS = ("/health/ready", 10, 5, 3, 3)


@pytest.fixture(scope="module")
def platform() -> Platform:
    return load_platform(ROOT / "spec" / "cloudretail.yaml")


def _probe(probe: dict[str, Any]) -> tuple[Any, ...]:
    return (
        probe["httpGet"]["path"],
        probe["initialDelaySeconds"],
        probe["periodSeconds"],
        probe["timeoutSeconds"],
        probe["failureThreshold"],
    )


# -- validity ---------------------------------------------------------------------------------


def _validate(documents: list[tuple[str, Manifest]]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate is not installed (pip install kubernetes-validate)")
    problems = []
    custom = 0
    for where, doc in documents:
        name = f"{where}: {doc['kind']} {doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            custom += 1
            if not doc["metadata"].get("namespace"):
                problems.append(f"{name}: needs metadata.namespace")
            problems += [f"{name}: {problem}" for problem in crd.problems(doc)]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{name}: {error.message} at {'.'.join(map(str, error.path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            problems.append(f"{name}: no schema ({error})")
    assert not problems, "\n".join(problems)
    assert custom > 0


def test_every_base_manifest_validates_against_kubernetes(manifests: dict[str, Manifest]):
    _validate([(f"base/{path}", doc) for path, doc in manifests.items()])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_build_validates_against_kubernetes(
    overlay: str, kustomize_builds: dict[str, Path]
):
    documents = load_documents(kustomize_builds[overlay].read_text())
    _validate([(f"overlays/{overlay}", doc) for doc in documents])


def test_checkov_finds_nothing(kustomize_builds: dict[str, Path], tmp_path: Path):
    """Both overlays as kustomize renders them, and the generated folder as it is."""
    checkov = tool("checkov", "pip install checkov (or pipx: it pins an old `packaging`)")
    targets = {f"overlay {name}": ["-f", str(path)] for name, path in kustomize_builds.items()}
    targets["generated/k8s"] = ["-d", str(K8S)]
    for target, arguments in targets.items():
        result = subprocess.run(
            [checkov, "--framework", "kubernetes", *arguments, *CHECKOV_OPTIONS],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env={
                "PATH": str(Path(checkov).parent) + ":/usr/bin:/bin",
                "HOME": str(tmp_path),
                "BC_SKIP_MAPPING": "TRUE",
            },
        )
        assert result.stdout.strip(), f"checkov printed nothing for {target}:\n{result.stderr}"
        report = json.loads(result.stdout)
        failed = [
            f"{check['check_id']} {check['resource']}: {check['check_name']}"
            for check in report["results"]["failed_checks"]
        ]
        assert report["summary"]["failed"] == 0, f"{target}:\n" + "\n".join(failed)
        assert report["summary"]["passed"] > 500, target
        assert report["summary"]["parsing_errors"] == 0, target


def test_every_checkov_skip_says_why(manifests: dict[str, Manifest]):
    for path, doc in manifests.items():
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{path}: {value}"
                assert len(reason.split()) >= 5, f"{path}: {key} has no real reason"


def _compose_config(tmp_path: Path) -> dict[str, Any]:
    """generated/compose.yaml as Compose resolves it (`config`), which refuses an invalid file
    or a build context that does not exist. Compose v2 (`docker compose`) reads the file as
    it is. docker-compose v1 (Debian's 1.29, all that bookworm packages) predates the
    top-level `name:` and refuses it: it gets the file without that key, from a copy read
    with generated/ as the project directory, so relative paths resolve as for the original
    (test_compose_is_named_after_the_platform checks `name:` itself)."""
    import yaml

    source = GENERATED / "compose.yaml"
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            command = ["docker", "compose", "-f", str(source)]
            result = subprocess.run(
                [*command, "config"], capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stderr
            return dict(yaml.safe_load(result.stdout))
    compose = shutil.which("docker-compose")
    if compose is None:
        missing_tool("neither docker-compose nor `docker compose` is installed")
    assert compose is not None
    document = yaml.safe_load(source.read_text())
    document.pop("name", None)
    copy = tmp_path / "compose.yaml"
    copy.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [compose, "-f", str(copy), "--project-directory", str(GENERATED), "config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_file_is_accepted_and_builds_from_the_project_root(tmp_path: Path):
    """Every image builds with the repository's root as its context: Docker reads
    .dockerignore from the context's root, so the root's one keeps .venv, `up`'s data and
    secrets out of the images (test_the_build_context_leaves_out_local_state_...)."""
    resolved = _compose_config(tmp_path)
    builds = {name: s["build"] for name, s in resolved["services"].items() if "build" in s}
    assert builds
    for name, build in builds.items():
        assert Path(build["context"]) == ROOT, (name, build)
        dockerfile = ROOT / build["dockerfile"]
        assert dockerfile.is_file(), (name, build)
        # BuildKit prefers <Dockerfile>.dockerignore beside the Dockerfile to the root's.
        assert not Path(f"{dockerfile}.dockerignore").exists(), dockerfile
    assert (ROOT / ".dockerignore").is_file()


def test_compose_is_named_after_the_platform(platform: Platform):
    """The project name (containers, networks, volumes) comes from the spec, not from the
    folder compose.yaml happens to be in (`generated`)."""
    import yaml

    name = yaml.safe_load((GENERATED / "compose.yaml").read_text()).get("name")
    assert name == platform.name, f"compose.yaml: name is {name!r}, not the platform's name"
    # Compose's rule for project names.
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name), name


# -- what the spec says --------------------------------------------------------------------


def test_deployments_run_the_spec(manifests: dict[str, Manifest], platform: Platform):
    deployments = by_kind(manifests, "Deployment")
    config = by_kind(manifests, "ConfigMap")
    jwks = "http://user-service:3001/api/users/.well-known/jwks.json"
    commands = {
        "api-gateway": [
            "python",
            "-m",
            "cloudretail.runtime.gateway",
            "--routes",
            "generated/gateway/routes.yaml",
            "--host",
            "0.0.0.0",
        ],
        "event-bus": ["python", "-m", "generated.eventbus"],
        **{
            service.deployable.name: ["python", "-m", f"generated.services.{service.name}"]
            for service in platform.services
        },
    }
    for deployable in platform.deployables:
        deployment = deployments[deployable.name]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].startswith(f"{platform.registry}/{deployable.name}:")
        assert container["command"] == commands[deployable.name]
        assert container["ports"] == [
            {"name": "http", "containerPort": deployable.port, "protocol": "TCP"}
        ]
        assert _probe(container["livenessProbe"]) == SEED_LIVENESS
        assert _probe(container["readinessProbe"]) == SEED_READINESS
        assert container["livenessProbe"]["httpGet"]["port"] == deployable.port
        resources = deployable.resources
        assert container["resources"] == {
            "requests": {"cpu": resources.request_cpu, "memory": resources.request_memory},
            "limits": {"cpu": resources.limit_cpu, "memory": resources.limit_memory},
        }
        # Restricted pod security.
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
        # Graceful drain.
        assert container["lifecycle"]["preStop"]["exec"]["command"] == [
            "python",
            "-c",
            "import time; time.sleep(5)",
        ]
        assert pod["terminationGracePeriodSeconds"] >= 20
        keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
        assert "topology.kubernetes.io/zone" in keys
        # Settings: plain ones from the ConfigMap, secrets by reference only.
        assert container["envFrom"] == [{"configMapRef": {"name": deployable.name}}]
        for variable in container.get("env", []):
            assert "value" not in variable, f"{deployable.name}: {variable['name']} inline"
            assert "secretKeyRef" in variable["valueFrom"]
        settings = config[deployable.name]["data"]
        # A path to a mounted secret is fine; a secret's value is not.
        assert not [k for k in settings if SECRETISH.search(k) and not k.endswith("_FILE")]
        assert settings["ENVIRONMENT"] == "production"
        assert settings["LOG_LEVEL"] in {"DEBUG", "INFO", "WARNING"}
        assert settings["HOST"] == "0.0.0.0"
        if deployable.kind == "gateway":
            for upstream in platform.gateway.upstreams:
                target = next(d for d in platform.deployables if d.port == upstream.port)
                assert settings[upstream.env] == f"http://{target.name}:{target.port}"
            assert settings["REDIS_URL"] == "rediss://redis:6379/0"
            assert settings["JWKS_URL"] == jwks
        elif deployable.kind == "event-bus":
            assert settings["KAFKA_BOOTSTRAP_SERVERS"].endswith("-kafka-bootstrap:9093")
            assert settings["KAFKA_IDEMPOTENT"] == "true"
            assert settings["REDIS_URL"] == "rediss://redis:6379/0"
        else:
            service = next(s for s in platform.services if s.deployable.name == deployable.name)
            urls = {key for key in settings if key.endswith("_URL")} - {"REDIS_URL", "JWKS_URL"}
            assert urls == {f"{callee.upper()}_URL" for callee in service.calls}
            for callee in service.calls:
                target = platform.service(callee).deployable
                assert settings[f"{callee.upper()}_URL"] == f"http://{target.name}:{target.port}"
            assert ("REDIS_URL" in settings) == service.uses_cache
            assert ("JWKS_URL" in settings) == (service.name != "user")
            assert settings["KAFKA_IDEMPOTENT"] == "true"
        refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container.get("env", [])}
        assert "SERVICE_TOKEN" in refs
        if deployable.kind != "gateway":
            assert refs["DATABASE_URL"]["key"] == "uri"
    user = deployments["user-service"]["spec"]["template"]["spec"]
    assert by_kind(manifests, "ConfigMap")["user-service"]["data"]["JWT_PRIVATE_KEY_FILE"]
    assert any(v.get("secret", {}).get("secretName") == "user-service-jwt" for v in user["volumes"])


def test_no_secret_value_is_in_a_manifest(manifests: dict[str, Manifest]):
    assert by_kind(manifests, "Secret") == {}
    example = (K8S / "base" / "secrets.example.env").read_text()
    assignments = [line for line in example.splitlines() if line and not line.startswith("#")]
    assert assignments and all(line.endswith("=") for line in assignments), assignments


def test_services_and_disruption_budgets(manifests: dict[str, Manifest], platform: Platform):
    services = by_kind(manifests, "Service")
    budgets = by_kind(manifests, "PodDisruptionBudget")
    for deployable in platform.deployables:
        service = services[deployable.name]
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": deployable.name}
        assert service["spec"]["ports"][0]["port"] == deployable.port
        assert budgets[deployable.name]["spec"]["selector"]["matchLabels"] == {
            "app.kubernetes.io/name": deployable.name
        }


def test_gateway_ingress_terminates_tls_for_the_domain(
    manifests: dict[str, Manifest], platform: Platform
):
    (ingress,) = by_kind(manifests, "Ingress").values()
    assert ingress["spec"]["tls"] == [{"hosts": [platform.domain], "secretName": "api-gateway-tls"}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == platform.domain
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "api-gateway", "port": {"number": platform.gateway.deployable.port}}


def test_a_migration_job_per_database_owner(manifests: dict[str, Manifest], platform: Platform):
    jobs = by_kind(manifests, "Job")
    clusters = {
        c["spec"]["bootstrap"]["initdb"]["database"]: c["metadata"]["name"]
        for c in by_kind(manifests, "Cluster").values()
    }
    expected = {}
    for schema in platform.schemas:
        if schema.folder == "eventbus":
            expected["event-bus-migrate"] = (
                ["python", "-m", "generated.eventbus", "migrate"],
                schema.database,
            )
        else:
            name = schema.folder.removeprefix("services/")
            expected[f"{name}-service-migrate"] = (
                ["python", "-m", f"generated.services.{name}", "migrate"],
                schema.database,
            )
    assert set(jobs) == set(expected)
    for name, (command, database) in expected.items():
        pod = jobs[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == command
        assert pod["restartPolicy"] == "Never"
        refs = {
            v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v
        }
        assert refs["DATABASE_URL"] == {"name": f"{clusters[database]}-app", "key": "uri"}
        assert jobs[name]["metadata"]["labels"]["cloudretail.io/phase"] == "migrate"


def test_data_services_are_declared(manifests: dict[str, Manifest], platform: Platform):
    topics = {t["spec"]["topicName"]: t for t in by_kind(manifests, "KafkaTopic").values()}
    expected_topics = {
        name for topic in platform.topics for name in (topic.name, topic.dead_letter)
    }
    assert set(topics) == expected_topics
    for topic in platform.topics:
        for name in (topic.name, topic.dead_letter):
            spec = topics[name]["spec"]
            assert spec["partitions"] == topic.partitions
            assert spec["replicas"] == topic.replication
            assert spec["config"]["retention.ms"] == topic.retention_ms
            assert spec["config"]["cleanup.policy"] == topic.cleanup_policy
    (kafka,) = by_kind(manifests, "Kafka").values()
    assert kafka["spec"]["kafka"]["listeners"][0]["port"] == 9093
    (pool,) = by_kind(manifests, "KafkaNodePool").values()
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["spec"]["replicas"] >= max(topic.replication for topic in platform.topics)
    clusters = {
        c["spec"]["bootstrap"]["initdb"]["database"]: c
        for c in by_kind(manifests, "Cluster").values()
    }
    databases = {service.database for service in platform.services} | {platform.event_bus.database}
    assert set(clusters) == databases
    for database, cluster in clusters.items():
        assert re.search(r"postgresql:15(\.\d+)?$", cluster["spec"]["imageName"])
        assert cluster["spec"]["bootstrap"]["initdb"]["owner"] == database
    assert "redis" in by_kind(manifests, "Deployment")


def test_every_resource_is_namespaced_and_phased(
    manifests: dict[str, Manifest], platform: Platform
):
    for path, doc in manifests.items():
        labels = doc["metadata"].get("labels", {})
        assert labels.get("cloudretail.io/phase") in {"infrastructure", "migrate", "app"}, path
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == platform.namespace, path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_tag_every_image(
    overlay: str, kustomize_builds: dict[str, Path], platform: Platform
):
    docs = load_documents(kustomize_builds[overlay].read_text())
    images = {
        container["image"]
        for doc in docs
        if doc["kind"] in {"Deployment", "Job"}
        for container in doc["spec"]["template"]["spec"]["containers"]
    }
    for deployable in platform.deployables:
        assert any(image.startswith(f"{platform.registry}/{deployable.name}:") for image in images)
    assert all(re.search(r":[\w.-]+$", image) for image in images), images


# -- images and workflow inputs -----------------------------------------------------------------


def test_rollout_lists_come_from_the_spec(platform: Platform):
    data = json.loads((K8S / "deployables.json").read_text())
    assert [image["name"] for image in data["images"]] == [d.name for d in platform.deployables]
    for image in data["images"]:
        assert image["image"] == f"{platform.registry}/{image['name']}"
        assert (ROOT / image["dockerfile"]).is_file(), image["dockerfile"]
    assert set(data["deployments"]) >= {d.name for d in platform.deployables}
    assert len(data["migrations"]) == len(platform.schemas)


def test_the_build_context_leaves_out_local_state_but_not_what_images_copy():
    """The images build from the repository root: .dockerignore keeps the virtual
    environments, `up`'s data (secrets.json, the signing key) and git out of the context,
    and no COPY source of any Dockerfile is left out."""
    from pathspec import PathSpec

    ignored = PathSpec.from_lines("gitignore", (ROOT / ".dockerignore").read_text().splitlines())
    for local in (".venv/bin/python", ".cloudretail/secrets.json", ".git/config", "secrets.env"):
        assert ignored.match_file(local), local
    dockerfiles = sorted(GENERATED.rglob("Dockerfile"))
    assert dockerfiles
    for dockerfile in dockerfiles:
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE):
            *sources, _ = line.split()
            for source in sources:
                assert (ROOT / source).exists(), (dockerfile, source)
                assert not ignored.match_file(source), (dockerfile, source)
                assert not ignored.match_file(f"{source}/x.py"), (dockerfile, source)


def test_compose_runs_the_whole_platform(platform: Platform):
    import yaml

    compose = yaml.safe_load((GENERATED / "compose.yaml").read_text())
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    for deployable in platform.deployables:
        service = services[deployable.name]
        assert "healthcheck" in service and "build" in service
        for dependency in service["depends_on"].values():
            assert dependency["condition"] in {"service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        if name.endswith("-migrate"):
            assert service["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    init = (GENERATED / "compose" / "postgres-init.sql").read_text()
    databases = {service.database for service in platform.services} | {platform.event_bus.database}
    assert set(re.findall(r"CREATE DATABASE (\w+);", init)) == databases
