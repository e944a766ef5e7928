"""Base classes of generated request bodies."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, model_validator


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
