"""Strict validation of custom resources against their operators' published schemas.

The schemas in crd_schemas/ are copied byte for byte from the operators' CRDs (their README
names each source; tests/deploy/test_crds.py checks the copies against the workspace's
reference set when it is there). They are Kubernetes structural schemas, which a JSON Schema
validator reads only after these mappings (what the API server does, or a client asking for
strict field validation, as `kubectl apply` does by default):
- `nullable: true` admits null;
- an object schema with neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields` admits no undeclared field (a typo is rejected, as
  the server does under strict validation), except inside allOf/anyOf/oneOf/not branches,
  which only restate constraints of fields declared outside them;
- `x-kubernetes-embedded-resource` admits apiVersion, kind and metadata;
- a required field with a `default` may be left out (the server fills it in);
- the top-level `metadata` is an ObjectMeta;
- RE2's `^(?i)` becomes Python's `(?i)^`.
CEL rules (`x-kubernetes-validations`) are not checked.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parent / "crd_schemas"

OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
}
EMBEDDED = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}
COMBINATORS = ("allOf", "anyOf", "oneOf")


def strict(schema: dict[str, Any], *, in_branch: bool = False) -> dict[str, Any]:
    """`schema` as a JSON Schema validator must read it (the mappings above)."""
    out = dict(schema)
    if out.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    pattern = out.get("pattern")
    if isinstance(pattern, str) and pattern.startswith("^(?i)"):
        out["pattern"] = "(?i)^" + pattern.removeprefix("^(?i)")
    properties = {
        name: strict(sub, in_branch=in_branch) for name, sub in out.get("properties", {}).items()
    }
    if out.get("x-kubernetes-embedded-resource"):
        properties = {**EMBEDDED, **properties}
    if properties:
        out["properties"] = properties
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"], in_branch=in_branch)
    open_ended = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if out.get("type") == "object" and not open_ended and not in_branch:
        out["additionalProperties"] = False
    if "required" in out:
        defaults = {name for name, sub in properties.items() if "default" in sub}
        out["required"] = [name for name in out["required"] if name not in defaults]
        if not out["required"]:
            del out["required"]
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"], in_branch=in_branch)
    for combinator in COMBINATORS:
        if combinator in out:
            out[combinator] = [strict(sub, in_branch=True) for sub in out[combinator]]
    if "not" in out:
        out["not"] = strict(out["not"], in_branch=True)
    return out


@cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    """The strict validator of a custom resource kind; None when no schema is kept for it."""
    path = SCHEMAS / api_version / f"{kind.lower()}.json"
    if not path.is_file():
        return None
    import json

    schema = strict(json.loads(path.read_text()))
    schema["properties"]["metadata"] = OBJECT_META
    return jsonschema.Draft4Validator(schema)


def problems(document: dict[str, Any]) -> list[str]:
    """What the operator's schema rejects in `document`, one line each, located by path."""
    found = validator(document["apiVersion"], document["kind"])
    if found is None:
        return [f"no schema for {document['apiVersion']} {document['kind']} in {SCHEMAS.name}/"]
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in sorted(found.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
