"""Container images of the deployables the services target does not build: the gateway
(`generated/gateway/Dockerfile`) and the event bus (`generated/eventbus/Dockerfile`).

Same shape as the services' images: a multi-stage build on a pinned Python base, a
non-root user (uid 10001, as the manifests require), the process's command as CMD.
"""

from __future__ import annotations

import json

from generator.model import Platform
from generator.render import OutputFile
from generator.targets.deploy import UID, build

BASE_IMAGE = "python:3.11.10-slim-bookworm"


def files(platform: Platform) -> list[OutputFile]:
    deployment = build(platform)
    migrate = {m.process: m.command for m in deployment.migrations}
    out = []
    for process in deployment.processes:
        if process.kind == "service":
            continue  # generated/services/<name>/Dockerfile comes with the service
        out.append(
            OutputFile(
                process.dockerfile.removeprefix("generated/"),
                "images/Dockerfile.j2",
                {
                    "process": process,
                    "base_image": BASE_IMAGE,
                    "uid": UID,
                    "command": ", ".join(json.dumps(part) for part in process.command),
                    "migrate": migrate.get(process.name, ()),
                },
            )
        )
    return out
