"""The spec's JSON Schema, for editors: completion, hover text and checks as one types.

`cloudretail schema` prints it. A spec names it on a comment line the YAML language server
reads (VS Code's YAML extension, Neovim's yamlls, Helix):

    # yaml-language-server: $schema=cloudretail.schema.json

a path relative to the spec. When that path is a file in the spec's own folder, `generate`
keeps it equal to this CloudRetail's schema (and `generate --check` reports it stale), so
the editor checks against the spec format of the installed version; a URL or a path
outside the spec's folder is left to whoever put it there.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

# A URI naming the spec format (version 1), not a place to download it from: editors load
# the schema from the path on the spec's modeline.
SCHEMA_ID = "urn:cloudretail:spec:1"
SCHEMA_FILE = "cloudretail.schema.json"
MODELINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"

_MODELINE = re.compile(r"^#\s*yaml-language-server:\s*\$schema=(\S+)\s*$")


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (draft 2020-12), every key with its description."""
    from cloudretail.generator.spec import Spec

    schema = Spec.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


def schema_text() -> str:
    """The schema as the file `generate` writes and `cloudretail schema` prints."""
    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def modeline_target(text: str) -> str | None:
    """The `$schema=` of a spec's yaml-language-server comment, if the leading comments
    have one."""
    for line in text.splitlines():
        if not line.startswith("#"):
            if line.strip():
                break
            continue
        found = _MODELINE.match(line.strip())
        if found:
            return found.group(1)
    return None


def kept_schema(spec_path: Path) -> Path | None:
    """The schema file `generate` keeps for this spec: the modeline's path, when it is a
    `.json` file in the spec's folder (or below it)."""
    try:
        with spec_path.open(encoding="utf-8") as handle:
            head = handle.read(4096)
    except (OSError, UnicodeDecodeError):
        return None  # loading the spec reports it
    target = modeline_target(head)
    if target is None or "://" in target or not target.endswith(".json"):
        return None
    relative = PurePosixPath(target)
    if relative.is_absolute() or ".." in relative.parts:
        return None
    return spec_path.parent / relative


def stale_schema(spec_path: Path) -> Path | None:
    """The kept schema file when it is missing or differs from this CloudRetail's schema."""
    path = kept_schema(spec_path)
    if path is None:
        return None
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return path
    except UnicodeDecodeError:
        return path
    return None if current == schema_text() else path


def write_schema(path: Path) -> None:
    """Replace `path` with the schema atomically (an editor may be reading it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(schema_text())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide it from an editor run by another user
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
