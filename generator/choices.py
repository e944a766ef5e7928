"""A spec name that must be a key of one of the generator's registries (column kinds, auth
rules), checked when a spec is validated so that an entry added at run time is accepted."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


def expected(names: list[str]) -> str:
    """`'a', 'b' or 'c'`, as pydantic lists the values of a Literal."""
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


@dataclass(frozen=True)
class OneOf:
    """Annotated metadata: a name of a registry, looked up when a spec is validated (so an
    entry added at run time is accepted) and listed as the JSON schema's `enum`."""

    names: Callable[[], list[str]]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"enum": self.names(), "type": "string"}

    def validate(self, value: Any) -> str:
        names = self.names()
        if isinstance(value, str) and value in names:
            return value
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected(names)}
        )


@dataclass(frozen=True)
class Matching:
    """Annotated metadata on a str: it matches a pattern made from a registry, made when a
    spec is validated, and the JSON schema's `pattern`."""

    pattern: Callable[[], str]
    # The names a value is made of, for a "did you mean" when it does not match.
    names: Callable[[], list[str]] = list

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        found = handler(schema)
        found["pattern"] = self.pattern()
        return found

    def validate(self, value: str) -> str:
        pattern = self.pattern()
        if not re.fullmatch(pattern, value):
            raise PydanticCustomError(
                "string_pattern_mismatch",
                "String should match pattern '{pattern}'",
                {"pattern": pattern, "names": self.names()},
            )
        return value
