"""Column kinds: everything the generator knows about one `type:` of a spec column.

One `ColumnKind` per kind, in `KINDS`: its SQL text (docs), its SQLAlchemy type in the
generated models and in migrations, its Python annotation and imports, the bounds its
pydantic fields carry, how its defaults render, whether events may carry it, and which
column options and defaults the checks accept for it. The spec's `type:` is checked
against `KINDS`, and every target reads the kind from here; adding a kind is adding an
entry (and, when SQLite and PostgreSQL disagree about it, a type in `runtime/types.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from cloudretail.generator.render import pystr

if TYPE_CHECKING:
    import sqlalchemy as sa

# The options of a column a kind may take; a kind that takes one needs it. `precision` and
# `scale` go together.
OPTION_GROUPS: tuple[tuple[str, ...], ...] = (("length",), ("precision", "scale"), ("values",))

Default = bool | int | float | str


class Shape(Protocol):
    """The options of a column that shape its type (a spec column or a model column)."""

    @property
    def length(self) -> int | None: ...

    @property
    def precision(self) -> int | None: ...

    @property
    def scale(self) -> int | None: ...


@dataclass(frozen=True)
class DefaultFunction:
    """A default that is a function, not a value (`now`, `gen_random_uuid`)."""

    python: str  # the model's `default=`, a callable: `utc_now`
    imports: tuple[str, ...]  # what `python` needs, as Imports.add arguments
    server: str | None  # portable SQL of the DEFAULT clause; None: Python makes the value
    docs: str  # the DEFAULT as the docs' PostgreSQL shows it: `NOW()`


@dataclass(frozen=True)
class ColumnKind:
    name: str
    sql: str  # SQL text for docs; `{length}`, `{precision}`, `{scale}` are the column's
    model_type: str  # SQLAlchemy type expression in generated models, same placeholders
    schema_type: Callable[[Shape], sa.types.TypeEngine[Any]]  # plain type for migrations
    python: str  # Python annotation (columns, schemas, event payload fields)
    python_import: tuple[str, ...] = ()  # what `python` needs, as Imports.add arguments
    runtime_type: str | None = None  # name `model_type` imports from cloudretail.runtime.types
    options: frozenset[str] = frozenset()  # of length/precision/scale/values: taken, needed
    max_length: bool = False  # pydantic max_length=<length>
    digits: bool = False  # pydantic max_digits/decimal_places and the decimal pattern
    integer_range: tuple[int, int] | None = None  # pydantic ge/le
    checkable: bool = False  # takes a numeric `check`
    literal_defaults: tuple[type, ...] = ()  # what a `default:` value may be
    functions: Mapping[str, DefaultFunction] = field(default_factory=dict)  # named defaults
    on_update: bool = False  # takes `on_update: now` (its `now` function's `python`)
    payload: bool = False  # may type an event payload field
    encryptable: bool = False  # may be stored encrypted (`encrypted: true`)
    number: Callable[[str], str] = str  # a number of the spec (a default, a bound) in Python
    # GDPR (`pii`): the fixed value `anonymise` writes when the column names no
    # `replacement` (a Python expression; None: it must name one), what a `replacement` may
    # be (None: what a `default` may be), and whether `pii_keys` name keys of its values.
    anonymous: str | None = None
    replacements: tuple[type, ...] | None = None
    keyed: bool = False

    @property
    def replacement_types(self) -> tuple[type, ...]:
        return self.literal_defaults if self.replacements is None else self.replacements

    def literal(self, value: Default) -> str:
        """A literal of the spec (a `replacement`) as a Python expression."""
        if isinstance(value, str):
            return pystr(value)
        if isinstance(value, bool):
            return repr(value)
        return self.number(repr(value))

    def sql_type(self, shape: Shape) -> str:
        return self.sql.format(length=shape.length, precision=shape.precision, scale=shape.scale)

    def model_expr(self, shape: Shape) -> str:
        return self.model_type.format(
            length=shape.length, precision=shape.precision, scale=shape.scale
        )

    def python_default(self, default: Default | None) -> str | None:
        """The model's and the create schema's `default=`."""
        if default is None:
            return None
        if isinstance(default, str):
            function = self.functions.get(default)
            return function.python if function else pystr(default)
        return self.number(repr(default))

    def server_default(self, default: Default | None) -> tuple[str, bool] | None:
        """The DEFAULT clause as (text, is SQL), portable between SQLite and PostgreSQL;
        a string value is (the value, False)."""
        if default is None:
            return None
        if isinstance(default, str):
            function = self.functions.get(default)
            if function is None:
                return (default, False)
            return None if function.server is None else (function.server, True)
        if isinstance(default, bool):
            return ("true" if default else "false", True)
        return (str(default), True)

    def docs_default(self, default: Default | None) -> str | None:
        """The DEFAULT clause as the docs' PostgreSQL schema shows it."""
        if isinstance(default, str) and default in self.functions:
            return self.functions[default].docs
        if isinstance(default, str):
            return "'" + default.replace("'", "''") + "'"
        server = self.server_default(default)
        return None if server is None else server[0]

    def bounds(self, shape: Shape, *, length: bool = True) -> list[str]:
        """What the kind itself can hold, as pydantic Field/Query arguments."""
        if self.max_length and length and shape.length:
            return [f"max_length={shape.length}"]
        if self.digits:
            precision, scale = shape.precision, shape.scale
            return [
                f"max_digits={precision}",
                f"decimal_places={scale}",
                f"json_schema_extra=decimal_pattern({precision}, {scale})",
            ]
        if self.integer_range is not None:
            low, high = self.integer_range
            return [f"ge={low}", f"le={high}"]
        return []


def _sa() -> ModuleType:
    """SQLAlchemy, imported when a migration is planned: most commands never need it."""
    import sqlalchemy
    import sqlalchemy.dialects.postgresql

    return sqlalchemy


def _jsonb() -> Any:
    return _sa().dialects.postgresql.JSONB()


def _decimal(text: str) -> str:
    return f'Decimal("{text}")'


_NOW = DefaultFunction(
    python="utc_now",
    imports=("cloudretail.runtime.types", "utc_now"),
    server="CURRENT_TIMESTAMP",
    docs="NOW()",
)
_NEW_UUID = DefaultFunction(
    python="uuid.uuid4", imports=("uuid",), server=None, docs="gen_random_uuid()"
)

KINDS: dict[str, ColumnKind] = {
    kind.name: kind
    for kind in (
        ColumnKind(
            "uuid",
            sql="UUID",
            model_type="sa.Uuid",
            schema_type=lambda _: _sa().Uuid(),
            python="uuid.UUID",
            python_import=("uuid",),
            functions={"gen_random_uuid": _NEW_UUID},
            payload=True,
            anonymous="uuid.UUID(int=0)",
        ),
        ColumnKind(
            "string",
            sql="VARCHAR({length})",
            model_type="sa.String({length})",
            schema_type=lambda shape: _sa().String(shape.length),
            python="str",
            options=frozenset({"length"}),
            max_length=True,
            literal_defaults=(str,),
            payload=True,
            encryptable=True,
        ),
        ColumnKind(
            "text",
            sql="TEXT",
            model_type="sa.Text",
            schema_type=lambda _: _sa().Text(),
            python="str",
            literal_defaults=(str,),
            payload=True,
            encryptable=True,
        ),
        ColumnKind(
            "integer",
            sql="INTEGER",
            model_type="sa.Integer",
            schema_type=lambda _: _sa().Integer(),
            python="int",
            integer_range=(-(2**31), 2**31 - 1),
            checkable=True,
            literal_defaults=(int,),
            payload=True,
        ),
        ColumnKind(
            "bigint",
            sql="BIGINT",
            model_type="sa.BigInteger",
            schema_type=lambda _: _sa().BigInteger(),
            python="int",
            integer_range=(-(2**63), 2**63 - 1),
            checkable=True,
            literal_defaults=(int,),
        ),
        ColumnKind(
            "decimal",
            sql="DECIMAL({precision}, {scale})",
            model_type="DecimalType({precision}, {scale})",
            schema_type=lambda shape: _sa().Numeric(shape.precision, shape.scale),
            python="Decimal",
            python_import=("decimal", "Decimal"),
            runtime_type="DecimalType",
            options=frozenset({"precision", "scale"}),
            digits=True,
            checkable=True,
            literal_defaults=(int, float),
            payload=True,
            number=_decimal,
        ),
        ColumnKind(
            "boolean",
            sql="BOOLEAN",
            model_type="sa.Boolean",
            schema_type=lambda _: _sa().Boolean(),
            python="bool",
            literal_defaults=(bool,),
            payload=True,
        ),
        ColumnKind(
            "timestamp",
            sql="TIMESTAMP",
            model_type="UTCDateTime",
            schema_type=lambda _: _sa().DateTime(timezone=True),
            python="datetime",
            python_import=("datetime", "datetime"),
            runtime_type="UTCDateTime",
            functions={"now": _NOW},
            on_update=True,
            payload=True,
        ),
        ColumnKind(
            "json",
            sql="JSONB",
            model_type="JSONType",
            schema_type=lambda _: (
                _sa().JSON().with_variant(_sa().dialects.postgresql.JSONB(), "postgresql")
            ),
            python="Any",
            python_import=("typing", "Any"),
            runtime_type="JSONType",
            payload=True,
            replacements=(str, int, float, bool),
            keyed=True,
        ),
        ColumnKind(
            "enum",
            sql="VARCHAR({length})",
            model_type="sa.String({length})",
            schema_type=lambda shape: _sa().String(shape.length),
            python="str",  # its schemas use a Literal of its `values` instead
            options=frozenset({"length", "values"}),
            literal_defaults=(str,),
        ),
    )
}


def kind_of(name: str) -> ColumnKind:
    return KINDS[name]
