"""What a service's OpenAPI document says beyond FastAPI's defaults.

Every error a service gives is an RFC 9457 problem (`application/problem+json`), so each
route declares the problem statuses it can answer with (`problems(...)`, filled in by the
generator from the route's shape and the spec's `errors`). A hand-written handler reads its
body itself (`ctx.body(Model)`, strictly), so its route declares that model as the request
body (`request_body(Model)`) without FastAPI validating it a second time.
`complete_openapi(app)` then puts the Problem schema and those models' definitions under
`components`, where the references point.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from cloudretail.runtime.errors import PROBLEM_MEDIA_TYPE, status_title
from fastapi import FastAPI
from pydantic import BaseModel

SCHEMA_REF = "#/components/schemas/"
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem: what went wrong, for people and for programs.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "description": "A URI naming the kind of problem"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "correlation_id": {"type": ["string", "null"]},
        "errors": {
            "type": "array",
            "description": "Each invalid field of a 422: where (`loc`) and why (`msg`)",
            "items": {"type": "object"},
        },
    },
    "additionalProperties": True,
}
# Definitions a request body brings along travel with its operation under this key until
# `complete_openapi` moves them to components.
_DEFINITIONS = "x-definitions"


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` declaring each status as a problem+json answer."""
    return {
        status: {
            "description": status_title(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": SCHEMA_REF + "Problem"}}},
        }
        for status in statuses
    }


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """FastAPI `openapi_extra=` declaring `model` as the route's JSON request body."""
    schema = model.model_json_schema(ref_template=SCHEMA_REF + "{model}")
    definitions = schema.pop("$defs", {})
    definitions[model.__name__] = schema
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": SCHEMA_REF + model.__name__}}},
        },
        _DEFINITIONS: definitions,
    }


def complete_openapi(app: FastAPI) -> None:
    """Serve `app`'s document with the Problem schema and the handler bodies' definitions."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas["Problem"] = PROBLEM_SCHEMA
            for item in document.get("paths", {}).values():
                for operation in item.values():
                    for name, schema in operation.pop(_DEFINITIONS, {}).items():
                        if schemas.setdefault(name, schema) != schema:
                            raise ValueError(
                                f"two different schemas are named {name!r} in the OpenAPI "
                                "document; rename one of the models"
                            )
            # FastAPI's own 422 shape is never sent (validation errors are problems too);
            # drop it unless a route outside the generated ones still points at it.
            if SCHEMA_REF + "HTTPValidationError" not in json.dumps(document["paths"]):
                for unused in ("HTTPValidationError", "ValidationError"):
                    schemas.pop(unused, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
