"""A Jenkins pipeline with the stages of the GitHub workflows (.github/workflows/ci.yml and
deploy.yml): the tests, generated/ is fresh, every overlay built, validated and scanned, the
images built; on main, the images pushed and the prod overlay rolled out in phases
(infrastructure, migrations, deployables). Its lists are the ones deployables.json gives the
workflows (`k8s.rollout`), so both pipelines deploy the same things in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import build
from cloudretail.generator.targets.k8s import rollout

# Versions the pipeline's checks use, as the GitHub workflows pin them.
KUBERNETES_VERSION = "1.30.0"
TIMEOUT_MINUTES = 90


@dataclass(frozen=True)
class Image:
    name: str
    image: str
    dockerfile: str


@dataclass(frozen=True)
class JenkinsView:
    platform: str
    namespace: str
    registry: str
    images: tuple[Image, ...]
    migrations: tuple[str, ...]
    deployments: tuple[str, ...]
    databases: tuple[str, ...]
    secrets: tuple[str, ...]
    external_secrets: tuple[str, ...]
    kafka: str
    overlays: tuple[str, ...]
    kubernetes_version: str
    timeout_minutes: int


def files(platform: Platform) -> list[OutputFile]:
    lists = rollout(build(platform))
    images = tuple(Image(**image) for image in lists["images"])
    view = JenkinsView(
        platform=platform.name,
        namespace=lists["namespace"],
        registry=images[0].image.split("/")[0],
        images=images,
        migrations=tuple(lists["migrations"]),
        deployments=tuple(lists["deployments"]),
        databases=tuple(lists["databases"]),
        secrets=tuple(lists["secrets"]),
        external_secrets=tuple(lists["external_secrets"]),
        kafka=lists["kafka"],
        overlays=tuple(lists["overlays"]),
        kubernetes_version=KUBERNETES_VERSION,
        timeout_minutes=TIMEOUT_MINUTES,
    )
    return [OutputFile("ci/Jenkinsfile", "ci/Jenkinsfile.j2", {"view": view})]
