"""One small module per output family; each maps the model to the files it wants."""

from __future__ import annotations

from collections.abc import Callable

from generator.model import Platform
from generator.render import OutputFile
from generator.targets import docs, gateway, services, topics

Target = Callable[[Platform], list[OutputFile]]

TARGETS: tuple[Target, ...] = (topics.files, gateway.files, docs.files, services.files)


def all_files(platform: Platform) -> list[OutputFile]:
    return [file for target in TARGETS for file in target(platform)]
