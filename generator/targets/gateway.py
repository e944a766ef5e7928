"""The gateway's route table: `generated/gateway/routes.yaml`."""

from __future__ import annotations

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile


def files(platform: Platform) -> list[OutputFile]:
    return [OutputFile("gateway/routes.yaml", "gateway/routes.yaml.j2", {"platform": platform})]
