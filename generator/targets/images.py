"""Container images of every deployable: `generated/gateway/Dockerfile`,
`generated/services/<name>/Dockerfile`, `generated/eventbus/Dockerfile`.

One shape: a multi-stage build on a pinned Python base that installs the locked runtime
dependencies with uv (the project's uv.lock, without the dev group or the tool's extras),
a non-root user (uid 10001, as the manifests require), the project's own code copied
beside it, and the process's command as CMD.
"""

from __future__ import annotations

import json

from cloudretail.generator.model import Platform
from cloudretail.generator.render import OutputFile
from cloudretail.generator.targets.deploy import UID, build

BASE_IMAGE = "python:3.11.10-slim-bookworm"
# The uv the images install with; the Makefiles pin the same release.
UV_VERSION = "0.13.9"
# What each kind of process imports from the project besides the installed runtime.
COPIES = {
    "gateway": ("generated/gateway",),
    "service": ("generated", "handlers"),
    "event-bus": ("generated",),
}


def files(platform: Platform) -> list[OutputFile]:
    deployment = build(platform)
    migrate = {m.process: m.command for m in deployment.migrations}
    out = []
    for process in deployment.processes:
        out.append(
            OutputFile(
                process.dockerfile.removeprefix("generated/"),
                "images/Dockerfile.j2",
                {
                    "process": process,
                    "base_image": BASE_IMAGE,
                    "uid": UID,
                    "uv_version": UV_VERSION,
                    "copies": COPIES[process.kind],
                    "command": ", ".join(json.dumps(part) for part in process.command),
                    "migrate": migrate.get(process.name, ()),
                },
            )
        )
    return out
