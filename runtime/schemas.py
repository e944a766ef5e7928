"""Base classes of generated request bodies, and what their JSON schemas need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema


class PatchModel(BaseModel):
    """A partial update: every field optional, but a NOT NULL column cannot be set to null.

    Generated subclasses list those columns in `not_null`; leaving a field out is fine,
    sending `null` for it is a 422 instead of a database error.
    """

    not_null: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _refuse_null_for_required_columns(self) -> PatchModel:
        nulled = sorted(
            name for name in self.model_fields_set & self.not_null if getattr(self, name) is None
        )
        if nulled:
            raise ValueError(f"{', '.join(nulled)} cannot be null")
        return self


def decimal_pattern(precision: int, scale: int) -> Callable[[dict[str, Any]], None]:
    """`json_schema_extra` for a NUMERIC(precision, scale) field: a decimal may come as a
    JSON number or a string, and pydantic documents the string as any string at all. This
    gives it the pattern of the decimals that fit, so "" or "12.345" are not advertised as
    valid."""
    pattern = GenerateJsonSchema().build_decimal_pattern(
        core_schema.decimal_schema(max_digits=precision, decimal_places=scale)
    )

    def add(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", ()):
            if branch.get("type") == "string":
                branch["pattern"] = pattern

    return add
