"""Kafka topic configuration: `generated/kafka/topics.yaml`."""

from __future__ import annotations

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile


def files(platform: Platform) -> list[OutputFile]:
    return [OutputFile("kafka/topics.yaml", "kafka/topics.yaml.j2", {"platform": platform})]
