"""Every target, in the order their files are produced."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets import (
    compose,
    docs,
    eventbus,
    events,
    gateway,
    images,
    jenkins,
    k8s,
    loadtest,
    migrations,
    services,
    topics,
)

Target = Callable[[Platform], list[OutputFile]]

TARGETS: tuple[Target, ...] = (
    topics.files,
    gateway.files,
    docs.files,
    events.files,
    services.files,
    eventbus.files,
    images.files,
    k8s.files,
    jenkins.files,
    compose.files,
    loadtest.files,
)


def all_files(platform: Platform, existing: Mapping[str, str]) -> list[OutputFile]:
    """Every file of every target. `existing` holds the generated files already on disk that
    a target builds on (migration revisions, which are appended to, never rewritten)."""
    files = [file for target in TARGETS for file in target(platform)]
    return files + migrations.files(platform, existing)
